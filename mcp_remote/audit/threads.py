"""The audit log's own threads, for the work it does off the event loop (a journal written with
`sync: true`, the fsyncs of a checkpoint, SQLite's WAL checkpoints, the checkpoint file).

Not asyncio's default pool: packs run their blocking work there (`asyncio.to_thread`), and six
slow tool calls filled it, so an audit write waited behind them for a thread, the log took that
wait for a store that hangs (HUNG_WRITE_S), and refused every call while the disk was idle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["in_audit_thread"]

_T = TypeVar("_T")
_WORKERS = 4
_executor: ThreadPoolExecutor | None = None


def in_audit_thread(function: Callable[..., _T], *args: object) -> asyncio.Future[_T]:
    """Run `function(*args)` in one of the audit log's threads."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="mcphub-audit")
    return asyncio.get_running_loop().run_in_executor(_executor, function, *args)

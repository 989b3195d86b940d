"""What a pack does when its call is cancelled: stop what the call started, to the end.

A call's task may be cancelled more than once: at its deadline the sidecar's timer and the hub's
cancel arrive a few milliseconds apart, and a sidecar that stops cancels what is left. A second
cancel must not interrupt the stopping of the first: a statement left running in PostgreSQL, a
child process left unreaped (its pipes then outlive the event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable

__all__ = ["OWN_PROCESS_GROUP", "kill_process_group", "uninterrupted"]

OWN_PROCESS_GROUP = 0
"""`process_group=` for a child started by a pack: a group of its own (its PID), so that
`kill_process_group` ends it and whatever it started, and never the sidecar."""


async def uninterrupted(work: Awaitable[object]) -> None:
    """Await `work` to its end even when the task is cancelled again meanwhile (a second cancel is
    taken as said once `work` is done: the caller re-raises the first). `work` bounds itself."""
    task = asyncio.ensure_future(work)
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)


async def kill_process_group(proc: asyncio.subprocess.Process) -> None:
    """Kill `proc`, started with `process_group=OWN_PROCESS_GROUP`, and what it started (a
    program git runs: a filter, a credential helper), then reap it, whatever cancels arrive.

    The group is signalled before `proc` is reaped: until then its PID, the group's id, cannot
    name another process."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    await uninterrupted(proc.wait())

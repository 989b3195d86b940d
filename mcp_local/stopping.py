"""SIGINT and SIGTERM stop a server (the hub, the sidecar), also while it is still starting: a
pack whose start() never returns must not leave a process that only SIGKILL ends."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["StopSignals"]

T = TypeVar("T")


class StopSignals:
    """Handlers for SIGINT and SIGTERM on the running loop: `event` is set by the first signal,
    which `first` names."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.first: signal.Signals | None = None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._received, sig)

    def _received(self, sig: signal.Signals) -> None:
        if self.first is None:
            self.first = sig
        self.event.set()

    async def unless_stopped(self, start: Awaitable[T]) -> asyncio.Future[T] | None:
        """`start`'s future once it is done, or None when a signal came first (the start is then
        cancelled and waited for: its own failure does not count, the signal does)."""
        starting = asyncio.ensure_future(start)
        stopping = asyncio.ensure_future(self.event.wait())
        await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if starting.done():
            return starting
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await starting
        return None

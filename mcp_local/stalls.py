"""A warning that names the code holding the event loop, while it holds it.

Hub and sidecar serve every call, connection and health check from one event loop. A tool
handler that blocks it (`time.sleep`, a synchronous HTTP client, a long computation) stalls all
of them, and no deadline can interrupt it: from outside the process just stops answering.
`StallWatch` makes that visible. A task on the loop notes the time four times a second; a
thread that needs nothing from the loop checks the note, and once the loop has not run for
`threshold_s` it logs where the loop's thread is (the innermost frames that are not the
standard library's: the handler), then how long the stall lasted when the loop runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from types import FrameType

__all__ = ["StallWatch"]

logger = logging.getLogger("mcphub.stalls")

# The standard library's directory (lib-dynload is inside it). Not from `sysconfig`: importing it
# costs the sidecar 0.4 MB of idle memory.
_STDLIB = (os.path.realpath(os.path.dirname(os.__file__)) + os.sep,)
_SHOWN_FRAMES = 3


def _where(frame: FrameType | None) -> str:
    """The innermost frames outside the standard library, inner first: `file:line in function`."""
    shown: list[str] = []
    while frame is not None and len(shown) < _SHOWN_FRAMES:
        code = frame.f_code
        path = code.co_filename
        real = os.path.realpath(path) if path.startswith(os.sep) else path
        if not real.startswith(_STDLIB) or os.sep + "site-packages" + os.sep in real:
            shown.append(f"{path}:{frame.f_lineno} in {code.co_name}")
        frame = frame.f_back
    return ", called from ".join(shown) or "the standard library (no other frame)"


class StallWatch:
    """See the module. `start` on the loop it watches; `stop` before the loop closes."""

    def __init__(self, threshold_s: float = 1.0, interval_s: float = 0.25) -> None:
        self.threshold_s = threshold_s
        self.interval_s = interval_s
        self._beat = time.monotonic()
        self._loop_thread = 0
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._done = threading.Event()

    def start(self) -> None:
        self._loop_thread = threading.get_ident()
        self._beat = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._heartbeat(), name="mcphub-stall-watch")
        self._thread = threading.Thread(target=self._watch, name="mcphub-stall-watch", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._done.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
            self._thread = None

    async def _heartbeat(self) -> None:
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(self.interval_s)

    def _watch(self) -> None:
        reported: float | None = None  # the beat after which the loop stalled, once logged
        where = ""
        while not self._done.wait(self.interval_s):
            beat = self._beat
            if reported is not None and beat != reported:
                logger.warning(
                    "the event loop ran again after %.1fs blocked in %s",
                    beat - reported - self.interval_s,
                    where,
                )
                reported = None
            late = time.monotonic() - beat - self.interval_s
            if reported is None and late >= self.threshold_s:
                where = _where(sys._current_frames().get(self._loop_thread))
                reported = beat
                logger.warning(
                    "the event loop has not run for %.1fs: every call, connection and health check waits. "
                    "It is blocked in %s. A tool handler must not block: run blocking work with "
                    "`await asyncio.to_thread(...)`",
                    late,
                    where,
                )

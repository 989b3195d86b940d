"""A command running on this machine (jailed or not): output as it comes, exit status, kill.

The process is started by the spawner (spawner.py, driven by launcher.py), which hands the hub a
pidfd for it and later its exit code. Its pipes are read by the hub's event loop; reading pauses
while the consumer lags, so a flood of output cannot fill the hub's memory, and once the consumer
has gone and the command has exited they are closed, paused or not.

Killing: for the jail, the direct child of bwrap is the sandbox's init process; killing it tears
the sandbox's pid namespace down with everything in it, whatever sessions the command made. Then
the process itself (through its pidfd: never a recycled pid) and its process group (for the
unjailed target, whose command shares it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
from collections import deque
from collections.abc import AsyncIterator

from .sandbox import ExitStatus, OutputChunk

__all__ = ["LocalProcess", "OutputPipe"]

_HIGH_WATER = 1024 * 1024
_LOW_WATER = 256 * 1024
_PIPE_GRACE_S = 0.5


class OutputPipe(asyncio.Protocol):
    def __init__(self, owner: LocalProcess, stream: str) -> None:
        self._owner = owner
        self._stream = stream

    def data_received(self, data: bytes) -> None:
        self._owner._received(self._stream, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._pipe_closed()


class LocalProcess:
    def __init__(self, pid: int, pidfd: int | None) -> None:
        self.pid = pid
        self._pidfd = pidfd
        self._loop = asyncio.get_running_loop()
        self._queue: deque[OutputChunk] = deque()
        self._queued = 0
        self._paused = False
        self._open_pipes = 2
        self.pipes: list[asyncio.ReadTransport] = []
        self._consumer_gone = False
        self._wakeup = asyncio.Event()
        self._exit: asyncio.Future[int] = self._loop.create_future()
        self._killed = False

    # --- callbacks (event loop, spawner) ------------------------------------------------------

    def _received(self, stream: str, data: bytes) -> None:
        self._queue.append(OutputChunk(stream, data))
        self._queued += len(data)
        if self._queued > _HIGH_WATER and not self._paused:
            self._pause(True)
        self._wakeup.set()

    def _pipe_closed(self) -> None:
        self._open_pipes -= 1
        self._wakeup.set()

    def exited(self, code: int) -> None:
        """The spawner reaped it (`code`: exit code, or -signal)."""
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if not self._exit.done():
            self._exit.set_result(code)
        if self._consumer_gone:
            self.close_pipes()
        self._wakeup.set()

    def _pause(self, pause: bool) -> None:
        self._paused = pause
        for pipe in self.pipes:
            if pipe.is_closing():
                continue
            if pause:
                pipe.pause_reading()
            else:
                pipe.resume_reading()

    # --- the SandboxProcess interface ---------------------------------------------------------

    async def output(self) -> AsyncIterator[OutputChunk]:
        try:
            grace_until: float | None = None
            while True:
                while self._queue:
                    chunk = self._queue.popleft()
                    self._queued -= len(chunk.data)
                    if self._paused and self._queued < _LOW_WATER:
                        self._pause(False)
                    yield chunk
                if self._open_pipes <= 0:
                    return
                if self._exit.done():
                    # The command is gone but something it started still holds the pipes open
                    # (only possible unjailed): give it a moment, then kill the group and finish.
                    now = self._loop.time()
                    if grace_until is None:
                        grace_until = now + _PIPE_GRACE_S
                    elif now >= grace_until:
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(self.pid, signal.SIGKILL)
                        self.close_pipes()
                        return
                self._wakeup.clear()
                if self._queue or self._open_pipes <= 0:
                    continue
                timeout = None if grace_until is None else max(0.0, grace_until - self._loop.time())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wakeup.wait()
        finally:
            # The one consumer is done (or went away: a time limit, a cancelled call), and a pipe
            # paused for it would never be read again. Closed once the command is gone, not before:
            # a command that was still writing is killed, not stopped by SIGPIPE first.
            self._consumer_gone = True
            if self._exit.done():
                self.close_pipes()

    async def wait(self) -> ExitStatus:
        code = await asyncio.shield(self._exit)
        if self._killed:  # bwrap may report its init's SIGKILL as 137: it was still our kill
            return ExitStatus(None, signal.SIGKILL, killed=True)
        if code < 0:
            return ExitStatus(None, -code)
        return ExitStatus(code, None)

    async def kill(self) -> None:
        self.kill_now()

    def _has_exited(self) -> bool:
        if self._exit.done():
            return True
        if self._pidfd is None:
            return False
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        return bool(poller.poll(0))  # a pidfd is readable once its process has exited

    def kill_now(self) -> None:
        if self._has_exited():  # exited, its exit code still on the way: nothing to kill
            return
        self._killed = True
        self._kill_children()
        if self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def close_pipes(self) -> None:
        for pipe in self.pipes:
            pipe.close()
        self._open_pipes = 0

    def _kill_children(self) -> None:
        """SIGKILL the direct children: for the jail that is the sandbox's init (its death ends the
        whole pid namespace), or a child bwrap is still setting up, which would otherwise wait for
        its killed parent forever. A pidfd pins each child before its parent is checked once more,
        so a recycled pid is never signalled."""
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                children = [int(p) for p in f.read().split()]
        except OSError:
            return
        for child in children:
            try:
                pidfd = os.pidfd_open(child)
            except OSError:
                continue
            try:
                with open(f"/proc/{child}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                if ppid == self.pid:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError:
                pass
            finally:
                os.close(pidfd)

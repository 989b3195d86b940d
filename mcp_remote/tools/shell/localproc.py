"""A command running on this machine (jailed or not): output as it comes, exit status, kill.

The process is started by the spawner (spawner.py, driven by launcher.py), which hands the hub a
pidfd for it and later its exit code. Its pipes are read by the hub's event loop; reading pauses
while the consumer lags, so a flood of output cannot fill the hub's memory, and once the consumer
has gone and the command has exited they are closed, paused or not.

The pipes are this module's own descriptors, watched with `add_reader` / `add_writer` and closed
here, once. They are not handed to the loop as pipe transports: uvloop's `connect_read_pipe`
gives the descriptor to libuv, which closes it, and then closes the file object it was given as
well (uvloop#763), so the number is closed twice, the second time perhaps as another thread's file
just opened under it (an fs_write's directory, the audit journal, SQLite's database).

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

__all__ = ["LocalProcess"]

_HIGH_WATER = 1024 * 1024
_LOW_WATER = 256 * 1024
_PIPE_GRACE_S = 0.5
_READ_SIZE = 256 * 1024


class _OutputReader:
    """The read end of the command's stdout or stderr; closes itself at end of file."""

    def __init__(self, owner: LocalProcess, stream: str, fd: int) -> None:
        self._owner = owner
        self._stream = stream
        self._fd = fd
        self._paused = False

    def start(self) -> None:
        os.set_blocking(self._fd, False)
        self._owner._loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO and the like: nothing more will come
            data = b""
        if data:
            self._owner._received(self._stream, data)
        else:
            self.close()

    def is_closing(self) -> bool:
        return self._fd < 0

    def pause_reading(self) -> None:
        if self._fd >= 0 and not self._paused:
            self._paused = True
            self._owner._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if self._fd >= 0 and self._paused:
            self._paused = False
            self._owner._loop.add_reader(self._fd, self._readable)

    def close(self) -> None:
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        self._owner._loop.remove_reader(fd)
        os.close(fd)
        self._owner._pipe_closed()


class _InputWriter:
    """The write end of the command's stdin: writes `data`, then closes it (or at EPIPE: a command
    that never reads its input gets end of file or EPIPE, not a hang)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, data: bytes) -> None:
        self._loop = loop
        self._fd = fd
        self._rest = memoryview(data)
        self._waiting = False

    def start(self) -> None:
        os.set_blocking(self._fd, False)
        self._writable()

    def _writable(self) -> None:
        try:
            while self._rest:
                self._rest = self._rest[os.write(self._fd, self._rest) :]
        except (BlockingIOError, InterruptedError):
            if not self._waiting:
                self._waiting = True
                self._loop.add_writer(self._fd, self._writable)
            return
        except OSError:  # EPIPE: the command has closed its stdin or is gone
            pass
        self.close()

    def close(self) -> None:
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        if self._waiting:
            self._loop.remove_writer(fd)
        os.close(fd)
        self._rest = memoryview(b"")


class LocalProcess:
    def __init__(self, pid: int, pidfd: int | None) -> None:
        self.pid = pid
        self._pidfd = pidfd
        self._loop = asyncio.get_running_loop()
        self._queue: deque[OutputChunk] = deque()
        self._queued = 0
        self._paused = False
        self._open_pipes = 2
        self._pipes: list[_OutputReader] = []
        self._stdin: _InputWriter | None = None
        self._consumer_gone = False
        self._wakeup = asyncio.Event()
        self._exit: asyncio.Future[int] = self._loop.create_future()
        self._killed = False
        self._lost: str | None = None

    def attach(self, stdout: int, stderr: int, stdin: int, stdin_data: bytes | None) -> None:
        """Take the hub's ends of the command's pipes (`stdin` -1: none) and start reading and writing
        them: from here they are this process's to close, whatever happens."""
        self._pipes = [_OutputReader(self, "stdout", stdout), _OutputReader(self, "stderr", stderr)]
        if stdin >= 0:
            self._stdin = _InputWriter(self._loop, stdin, stdin_data or b"")
        try:
            for pipe in self._pipes:
                pipe.start()
            if self._stdin is not None:
                self._stdin.start()
        except BaseException:
            self.close_pipes()
            raise

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

    def lose(self, why: str) -> None:
        """The spawner, which alone can reap it and tell its exit code, is gone (`why`): kill what may
        be left of it and end it with its fate unknown, so that no caller waits for an exit code that
        cannot come."""
        if self._exit.done():
            return
        self.kill_now()
        self._lost = why
        self.exited(-signal.SIGKILL)

    def _pause(self, pause: bool) -> None:
        self._paused = pause
        for pipe in self._pipes:
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
        if self._lost is not None:
            return ExitStatus(None, None, lost=self._lost)
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
        for pipe in self._pipes:
            pipe.close()
        if self._stdin is not None:
            self._stdin.close()
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

"""A command running on this machine (jailed or not): output as it comes, exit status, kill.

Spawned with `subprocess.Popen`, which uses vfork on Linux: no copy of the hub's page tables and
none of gRPC's fork handlers, so a spawn costs well under a millisecond however large the hub is.
Its pipes are read by the event loop and its exit is watched through a pidfd; reading pauses while
the consumer lags, so a flood of output cannot fill the hub's memory.

The command runs in a session of its own, so its process group can be killed. For the jail, the
direct child of bwrap is the sandbox's init process; killing it tears the sandbox's pid namespace
down with everything in it, whatever process groups the command made.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections import deque
from collections.abc import AsyncIterator, Sequence

from .sandbox import ExitStatus, OutputChunk

__all__ = ["LocalProcess", "spawn_local"]

_HIGH_WATER = 1024 * 1024
_LOW_WATER = 256 * 1024
_PIPE_GRACE_S = 0.5


class _Pipe(asyncio.Protocol):
    def __init__(self, owner: LocalProcess, stream: str) -> None:
        self._owner = owner
        self._stream = stream

    def data_received(self, data: bytes) -> None:
        self._owner._received(self._stream, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._pipe_closed()


class _Stdin(asyncio.Protocol):
    def connection_lost(self, exc: Exception | None) -> None:
        return None


class LocalProcess:
    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid
        self._loop = asyncio.get_running_loop()
        self._queue: deque[OutputChunk] = deque()
        self._queued = 0
        self._paused = False
        self._open_pipes = 2
        self._pipes: list[asyncio.ReadTransport] = []
        self._wakeup = asyncio.Event()
        self._exit: asyncio.Future[int] = self._loop.create_future()
        self._pidfd: int | None = None
        self._killed = False

    # --- event loop callbacks -----------------------------------------------------------------

    def _received(self, stream: str, data: bytes) -> None:
        self._queue.append(OutputChunk(stream, data))
        self._queued += len(data)
        if self._queued > _HIGH_WATER and not self._paused:
            self._pause(True)
        self._wakeup.set()

    def _pipe_closed(self) -> None:
        self._open_pipes -= 1
        self._wakeup.set()

    def _watch_exit(self) -> None:
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except OSError:  # pidfds need Linux 5.3; poll instead
            self._loop.call_later(0.01, self._poll_exit)
            return
        self._loop.add_reader(self._pidfd, self._poll_exit)

    def _poll_exit(self) -> None:
        code = self._popen.poll()
        if code is None:
            if self._pidfd is None:
                self._loop.call_later(0.01, self._poll_exit)
            return
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if not self._exit.done():
            self._exit.set_result(code)
        self._wakeup.set()

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
                # The command is gone but something it started still holds the pipes open:
                # give it a moment, then kill the group so the call can finish.
                now = self._loop.time()
                if grace_until is None:
                    grace_until = now + _PIPE_GRACE_S
                elif now >= grace_until:
                    self._kill_group()
                    self._close_pipes()
                    return
            self._wakeup.clear()
            if self._queue or self._open_pipes <= 0:
                continue
            timeout = None if grace_until is None else max(0.0, grace_until - self._loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()

    async def wait(self) -> ExitStatus:
        code = await asyncio.shield(self._exit)
        if code < 0:
            return ExitStatus(None, -code, killed=self._killed)
        return ExitStatus(code, None, killed=self._killed)

    async def kill(self) -> None:
        if self._exit.done():
            return
        self._killed = True
        self._kill_children()
        self._kill_group()

    def _kill_group(self) -> None:
        if self._popen.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    def _close_pipes(self) -> None:
        for pipe in self._pipes:
            pipe.close()
        self._open_pipes = 0

    # --- what the command started ----------------------------------------------------------

    def _kill_children(self) -> None:
        """SIGKILL the direct children first: for the jail that is the sandbox's init (its death
        ends the whole pid namespace), or a child bwrap is still setting up, which would otherwise
        wait for its killed parent forever. A pidfd pins each child before its parent is checked
        once more, so a recycled pid is never signalled."""
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


async def spawn_local(
    argv: Sequence[str],
    *,
    stdin: bytes | None,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    pass_fds: Sequence[int] = (),
) -> LocalProcess:
    """Start `argv` in a new session. Raises OSError when it cannot start."""
    loop = asyncio.get_running_loop()
    popen = subprocess.Popen(  # noqa: ASYNC220 - vfork: faster than a thread hop, never blocks for long
        list(argv),
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env if env is not None else {},
        start_new_session=True,
        pass_fds=tuple(pass_fds),
    )
    process = LocalProcess(popen)
    assert popen.stdout is not None and popen.stderr is not None
    for stream, pipe in (("stdout", popen.stdout), ("stderr", popen.stderr)):
        transport, _ = await loop.connect_read_pipe(lambda s=stream: _Pipe(process, s), pipe)  # type: ignore[misc]
        process._pipes.append(transport)
    process._watch_exit()
    if stdin is not None:
        assert popen.stdin is not None
        writer, _ = await loop.connect_write_pipe(_Stdin, popen.stdin)
        writer.write(stdin)
        writer.close()  # after the buffer is flushed; a command that never reads gets EPIPE, not a hang
    return process

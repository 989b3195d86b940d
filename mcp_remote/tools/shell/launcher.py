"""The hub's side of the spawner (spawner.py): start it, ask it for processes, hear of their exits.

One spawner per hub. When the hub runs as root, the spawner is started in a mount namespace of the
hub's own (`unshare --mount`) in which the workspaces directory is also bound at a path the jail
uids can reach (see jail.py). Requests and answers travel over a SOCK_SEQPACKET socket pair; the
pipes of each command are made here and passed as file descriptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .localproc import LocalProcess

__all__ = ["SpawnError", "Spawner"]

logger = logging.getLogger(__name__)

SPAWNER = str(Path(__file__).with_name("spawner.py"))
_MAX_MESSAGE = 64 * 1024
_SEND_BUFFER = 8 * 1024 * 1024


class SpawnError(Exception):
    """The spawner could not start, or could not start a process; the message says why."""


class Spawner:
    def __init__(self) -> None:
        self.started = False
        """True once it answered ready: a spawner that ran and was lost may be started again."""
        self._sock: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[LocalProcess]] = {}
        self._running: dict[int, LocalProcess] = {}
        self._ready: asyncio.Future[int] | None = None
        self.problem: str | None = None

    async def start(self, prefix: Sequence[str] = (), timeout: float = 15.0) -> None:
        """Start the spawner, behind `prefix` (e.g. unshare ... mount ...); SpawnError on failure.

        Started from the event loop's thread on purpose: the spawner dies with the thread that
        started it (PR_SET_PDEATHSIG), which must be the one that lives as long as the hub."""
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)
        ours.setblocking(False)
        argv = [*prefix, sys.executable, "-I", "-S", SPAWNER, str(theirs.fileno()), str(os.getpid())]
        with tempfile.TemporaryFile() as errors:
            try:
                self._process = subprocess.Popen(  # noqa: ASYNC220 - must be this thread; vfork, quick
                    argv,
                    pass_fds=[theirs.fileno()],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=errors,
                    # Not in the hub's process group: a terminal's Ctrl-C must stop the hub,
                    # which then stops its sandboxes, not kill the spawner under it.
                    start_new_session=True,
                )
            except OSError as exc:
                ours.close()
                raise SpawnError(f"cannot start the spawner: {exc}") from exc
            finally:
                theirs.close()
            self._sock = ours
            self._ready = loop.create_future()
            loop.add_reader(ours.fileno(), self._on_readable)
            try:
                async with asyncio.timeout(timeout):
                    await self._ready
                self.started = True
            except (TimeoutError, SpawnError) as exc:
                errors.seek(0)
                detail = errors.read().decode(errors="replace").strip()
                self.close()
                raise SpawnError(f"the spawner did not start: {detail or exc or 'timed out'}") from None

    def _on_readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self._sock, _MAX_MESSAGE, 4)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._lost(f"the spawner's socket failed: {exc}")
                return
            if not data:
                self._lost("the spawner exited")
                return
            self._dispatch(json.loads(data), fds)

    def _dispatch(self, message: dict[str, Any], fds: list[int]) -> None:
        if "ready" in message:
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(int(message["ready"]))
            return
        if "exit" in message:
            process = self._running.pop(int(message["exit"]), None)
            if process is not None:
                process.exited(int(message["code"]))
            return
        future = self._pending.pop(int(message["id"]), None)
        if "error" in message:
            if future is not None and not future.done():
                future.set_exception(SpawnError(str(message["error"])))
            return
        process = LocalProcess(int(message["pid"]), fds[0] if fds else None)
        self._running[process.pid] = process
        if future is None or future.done():  # the caller went away meanwhile: it must not run on
            process.kill_now()
            return
        future.set_result(process)

    def _lost(self, why: str) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self.problem = why
        logger.error("shell: %s; it is started again for the next command", why)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(SpawnError(why))
        self._pending.clear()
        # Their sandboxes died with the spawner (PR_SET_PDEATHSIG, bwrap --die-with-parent), and
        # only the spawner could have said how they ended.
        running, self._running = list(self._running.values()), {}
        for process in running:
            process.lose(f"{why} while the command ran, which stopped it; its exit status is unknown")
        if self._process is not None and self._process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(0.5)
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(SpawnError(why))

    async def _send(self, payload: bytes, fds: list[int]) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                socket.send_fds(self._sock, [payload], fds)
                return
            except BlockingIOError:
                writable = loop.create_future()
                loop.add_writer(self._sock.fileno(), writable.set_result, None)
                try:
                    await writable
                finally:
                    loop.remove_writer(self._sock.fileno())

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str | None,
        uid: int | None,
        gid: int | None,
        rlimits: Sequence[tuple[str, int]],
        cgroups: Sequence[str],
        stdin: bytes | None,
        fd3: bytes | None = None,
    ) -> LocalProcess:
        """`fd3`: what the program reads from its fd 3 (bwrap's `--seccomp 3` filter), or nothing."""
        if self._sock is None or self.problem:
            raise SpawnError(self.problem or "the spawner is not running")
        loop = asyncio.get_running_loop()
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        if stdin is not None:
            in_r, in_w = os.pipe2(os.O_CLOEXEC)
        else:
            in_r, in_w = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), -1
        ours = [out_r, err_r, *([in_w] if in_w >= 0 else [])]
        request_id = next(self._ids)
        future: asyncio.Future[LocalProcess] = loop.create_future()
        self._pending[request_id] = future
        request = {
            "id": request_id,
            "argv": list(argv),
            "env": dict(env),
            "cwd": cwd,
            "uid": uid,
            "gid": gid,
            "rlimits": [list(r) for r in rlimits],
            "cgroups": list(cgroups),
            "fd3": fd3.hex() if fd3 is not None else None,
        }
        try:
            try:
                await self._send(json.dumps(request).encode(), [in_r, out_w, err_w])
            finally:
                for fd in (in_r, out_w, err_w):
                    os.close(fd)
            process = await future
        except BaseException:
            self._pending.pop(request_id, None)
            for fd in ours:
                os.close(fd)
            raise
        try:
            process.attach(out_r, err_r, in_w, stdin)  # the process owns (and closes) them from here
        except BaseException:
            process.kill_now()
            raise
        return process

    def close(self) -> None:
        """Stop the spawner (it exits when its socket closes) and kill what it still runs."""
        for process in list(self._running.values()):
            process.kill_now()
        if self._sock is not None:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._process is not None:
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

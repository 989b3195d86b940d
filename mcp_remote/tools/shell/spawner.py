"""The jail's spawner: a small, single-threaded process that starts sandboxes for the hub.

Run by the hub (`python -I -S spawner.py SOCKET_FD HUB_PID`), as root inside the hub's private
mount namespace when the hub is root. It imports only the standard library, so forking it is cheap,
and it is single-threaded, so the child may safely run Python between fork and exec, which the
hub (with gRPC's threads) may not. For each request on its socket it forks a child that

    joins the principal's cgroups -> sets the rlimits (soft = hard) -> starts a new session
    -> drops to the principal's uid/gid (no supplementary groups) -> execs argv (bwrap)

and answers with the child's pid and a pidfd; when a child exits it sends its exit code. It dies
with the hub (PR_SET_PDEATHSIG), and bwrap dies with it (--die-with-parent).

Messages are JSON, one per SOCK_SEQPACKET datagram, file descriptors as SCM_RIGHTS:
    hub -> spawner: {"id", "argv", "env", "cwd", "uid", "gid", "rlimits": [[name, value]], "cgroups": [path],
                     "fd3": hex or null}  + fds [stdin, stdout, stderr]
                    (`fd3`: bytes the program reads from fd 3, such as bwrap's `--seccomp 3` filter)
    spawner -> hub: {"ready": pid} once, then per request {"id", "pid"} + [pidfd]   or   {"id", "error"}
                    {"exit": pid, "code": exit code or -signal}
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import selectors
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

__all__ = ["main", "serve"]

_PR_SET_PDEATHSIG = 1
_MAX_MESSAGE = 4 * 1024 * 1024


def _child(request: dict[str, Any], fds: list[int]) -> NoReturn:
    """In the forked child: never returns. Why it could not exec goes to the command's stderr (the
    caller's), not to the spawner's own: a hub whose every command exits 125 must say why."""
    stderr = fds[2] if len(fds) > 2 else 2
    try:
        pid = str(os.getpid())
        for path in request["cgroups"]:
            with open(path, "w") as f:
                f.write(pid)
        for name, value in request["rlimits"]:
            try:
                resource.setrlimit(getattr(resource, name), (value, value))
            except (OSError, ValueError) as exc:
                hard = resource.getrlimit(getattr(resource, name))[1]
                if hard == resource.RLIM_INFINITY or hard >= value:
                    raise
                raise OSError(
                    f"cannot set {name} to {value}: the hub's own hard limit is {hard}. Raise the hub's "
                    "limit (systemd: LimitNOFILE= and the like in its unit; a shell: ulimit -H before "
                    "`mcphub serve`) or lower the shell pack's limit (docs/shell.md)"
                ) from exc
        os.setsid()
        if request["gid"] is not None:
            os.setgroups([])
            os.setgid(request["gid"])
        if request["uid"] is not None:
            os.setuid(request["uid"])
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        stderr = 2
        keep = 3
        if request.get("fd3") is not None:
            data = bytes.fromhex(request["fd3"])
            memfd = os.memfd_create("mcphub-fd3", 0)
            os.write(memfd, data)
            os.lseek(memfd, 0, os.SEEK_SET)
            if memfd != 3:
                os.dup2(memfd, 3)
            os.set_inheritable(3, True)
            keep = 4
        os.closerange(keep, os.sysconf("SC_OPEN_MAX"))
        if request["cwd"]:
            os.chdir(request["cwd"])
        # Python ignores SIGPIPE and SIGXFSZ; an exec'd program must get the defaults back.
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.execve(request["argv"][0], request["argv"], request["env"])  # noqa: S606 - argv, never a shell line
    except BaseException as exc:
        try:
            os.write(stderr, f"mcphub: the sandbox could not be started: {exc}\n".encode())
        finally:
            os._exit(125)


def _send(sock: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    socket.send_fds(sock, [json.dumps(message).encode()], list(fds))


def serve(sock: socket.socket) -> None:
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ, "request")
    selector.register(wake_r, selectors.EVENT_READ, "child")
    _send(sock, {"ready": os.getpid()})
    while True:
        for key, _ in selector.select():
            if key.data == "child":
                try:
                    while os.read(wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
                _reap(sock)
                continue
            try:
                data, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, 8)
            except InterruptedError:
                continue
            if not data:
                return  # the hub closed its end: it is stopping
            request = json.loads(data)
            try:
                pid = os.fork()
            except OSError as exc:
                for fd in fds:
                    os.close(fd)
                _send(sock, {"id": request["id"], "error": f"fork failed: {exc.strerror}"})
                continue
            if pid == 0:
                selector.close()
                _child(request, fds)
            for fd in fds:
                os.close(fd)
            pidfd = os.pidfd_open(pid)
            try:
                _send(sock, {"id": request["id"], "pid": pid}, [pidfd])
            finally:
                os.close(pidfd)


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(sock, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})


def main() -> int:
    sock = socket.socket(fileno=int(sys.argv[1]))
    hub = int(sys.argv[2])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != hub:  # the hub died before the line above took effect
        return 1
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the hub went away
        serve(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())

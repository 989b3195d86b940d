"""The SSH target: commands in a remote sandbox over pooled asyncssh connections, host key pinned.

The remote login shell receives one command line built here from quoted parts only:

    env K=V ... /bin/sh -c SCRIPT mcphub CWD TIMEOUT COMMAND

SCRIPT prints its process group id on stderr in a line naming a nonce of this call (the hub
finds that line wherever it comes in stderr, after whatever a remote rc file or the loader printed
first, and strips it), enters CWD, applies the rlimits with `ulimit`, and runs COMMAND with
`/bin/sh -c` under `timeout -s KILL` when the remote has coreutils' timeout. Cancelling or timing
out kills that process group through a second channel (`kill -KILL -- -PGID`), so a command that
ignores its closed channel still stops. A COMMAND too long for one argument (the kernel takes at
most 128 KiB) goes on stdin ahead of the caller's input instead, and SCRIPT reads it from there.
The remote login shell must be POSIX-compatible (sh, bash, dash, zsh).

The channel's exit status ends the command: what it left behind still holding its output gets
_LEFTOVER_GRACE_S of silence (the channel giving nothing while the hub waits on it), then its
process group is killed. Output the hub itself holds back (a caller reading slowly) is no leftover's
and does not count as silence. A connection that stops
answering or drops leaves the command's fate unknown, and the result says so.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import shlex
from collections.abc import AsyncIterator
from typing import Any, cast

import asyncssh

from mcp_local.errors import ConfigError, ToolError
from mcp_local.redaction import Redactor

from .options import SshLimits, SshTargetOptions
from .sandbox import ExecSpec, ExitStatus, OutputChunk, SandboxUnavailable, sandbox_cwd
from .sftp import SftpWorkspace
from .sshpool import SshConnection, SshPool

__all__ = ["SshProcess", "SshTarget", "remote_command"]

logger = logging.getLogger(__name__)

_SCRIPT = (
    'printf "mcphub-pgid-{nonce}:%s\\n" "$$" >&2; '
    'cd -- "$1" || exit 126; shift; '
    "{ulimits}"
    "t=$1; shift; "
    'if [ "$t" != 0 ] && command -v timeout >/dev/null 2>&1; then '
    'exec timeout -s KILL "$t" /bin/sh -c "$1"; fi; exec /bin/sh -c "$1"'
)
_READ_COMMAND = (
    "command -v dd >/dev/null 2>&1 || {{ echo 'mcphub: the SSH sandbox has no dd, which a command over "
    "64 KiB needs (it is passed on stdin)' >&2; exit 125; }}; "
    "c=$(dd bs=1 count={size} 2>/dev/null; echo .); c=${{c%.}}; "
    'case $c in *"{end}") ;; '
    '*) echo "mcphub: the command did not arrive whole on stdin" >&2; exit 125;; esac; '
    'c=${{c%"{end}"}}; eval "unset c; $c"'
)
"""The command from stdin, in place of a command too long to pass as an argument: dd reads it a
byte at a time, so not one byte of the input after it is taken. It ends with a marker of this
call, checked and cut before it runs (a missing `dd` or a short read is exit 125 saying so, not
an empty command that "succeeds"); `echo .` keeps the command's trailing newlines."""
MAX_COMMAND_ARG = 64 * 1024
"""A line longer than this (bytes) has its command go on stdin: one argument may not exceed
128 KiB (Linux's MAX_ARG_STRLEN), and the whole line is one argument of the remote login shell."""
MAX_LINE = 128 * 1024 - 1
"""What the line may not exceed even without its command (a huge environment): refused."""
_LEFTOVER_GRACE_S = 0.5
"""After the exit status: how long what the command left behind may hold its output open with
nothing coming."""
_KILL_GRACE_S = 3.0
"""After a kill: how long the channel may take to close before the connection counts as gone."""


def remote_command(spec: ExecSpec, cwd: str, limits: SshLimits, nonce: str) -> tuple[str, bytes | None]:
    """The one line the remote login shell parses (every variable part is `shlex.quote`d), and the
    command's bytes to send on stdin ahead of the caller's input when it is too long for the line."""
    ulimits = ""
    for flag, value in (
        ("-t", limits.cpu_s),
        ("-f", None if limits.file_size_mb is None else limits.file_size_mb * 2048),  # 512-byte blocks
        ("-n", limits.open_files),
        ("-v", None if limits.address_space_mb is None else limits.address_space_mb * 1024),
    ):
        if value is not None:
            ulimits += f"ulimit {flag} {int(value)} || exit 125; "
    script = _SCRIPT.format(nonce=nonce, ulimits=ulimits)
    timeout = 0 if spec.timeout_s is None else math.ceil(spec.timeout_s) + 2  # the hub's timer goes first
    env = " ".join(shlex.quote(f"{k}={v}") for k, v in spec.env.items())

    def line(command: str) -> str:
        parts = [
            *(["env", env] if env else []),
            "/bin/sh", "-c", shlex.quote(script), "mcphub",
            shlex.quote(cwd), str(timeout), command,
        ]  # fmt: skip
        return " ".join(parts)

    whole = line(shlex.quote(spec.command))
    if len(whole) <= MAX_COMMAND_ARG // 4 or len(whole.encode()) <= MAX_COMMAND_ARG:
        return whole, None
    end = f"#mcphub-end-{nonce}"
    on_stdin = (spec.command + end).encode()
    short = line(shlex.quote(_READ_COMMAND.format(size=len(on_stdin), end=end)))
    if len(short.encode()) > MAX_LINE:
        raise ToolError(
            f"the environment and working directory take {len(short.encode()):,} bytes of the SSH command "
            f"line, more than the {MAX_LINE:,} one argument may have: pass large values in a file or on stdin"
        )
    return short, on_stdin


class _Channel(asyncssh.SSHClientProcess[bytes]):
    """An asyncssh process that says when its exit status arrives, which may be long before its
    output ends (a background child still holds it)."""

    def __init__(self) -> None:
        super().__init__()
        self.on_exit: Any = None

    def exit_status_received(self, status: int) -> None:
        super().exit_status_received(status)
        if self.on_exit is not None:
            self.on_exit()

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        super().exit_signal_received(signal, core_dumped, msg, lang)
        if self.on_exit is not None:
            self.on_exit()


class SshProcess:
    """One remote command on a pooled connection."""

    def __init__(
        self, pool: SshPool, conn: SshConnection, process: _Channel, describe: str, nonce: str
    ) -> None:
        self._pool = pool
        self._conn = conn
        self._process = process
        self._describe = describe
        self._marker = f"mcphub-pgid-{nonce}:".encode()
        self._pgid: int | None = None
        self._killed = False
        self._ended = False
        self._released = False
        self._killer: asyncio.Task[None] | None = None
        self._kill_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._unanswered = False
        self._leftovers: asyncio.TimerHandle | None = None
        self._queue: asyncio.Queue[OutputChunk | None] = asyncio.Queue(64)
        # For the leftovers' check: which reader waits on the channel (not on the queue), and
        # how many chunks came (the count when the check was last scheduled).
        self._on_channel = [False, False]
        self._arrived = 0
        self._arrived_seen = 0
        self._readers = [
            asyncio.create_task(self._read(0, "stdout", process.stdout)),
            asyncio.create_task(self._read(1, "stderr", process.stderr)),
        ]
        process.on_exit = self._exited

    async def _read(self, index: int, stream: str, reader: asyncssh.SSHReader[bytes]) -> None:
        on_channel = self._on_channel
        try:
            if stream == "stderr":
                await self._read_marker(reader)
            while True:
                on_channel[index] = True
                chunk = await reader.read(65536)
                on_channel[index] = False
                if not chunk:
                    break
                self._arrived += 1
                await self._queue.put(OutputChunk(stream, chunk))
        except (asyncssh.Error, OSError):
            on_channel[index] = False
        if not self._ended:
            await self._queue.put(None)

    async def _read_marker(self, reader: asyncssh.SSHReader[bytes]) -> None:
        """Take the process group id from this call's marker line, wherever it comes in stderr:
        what precedes it (a remote rc file, the loader complaining about LD_PRELOAD) is output."""
        marker = self._marker
        held = b""
        while True:
            self._on_channel[1] = True
            chunk = await reader.read(65536)
            self._on_channel[1] = False
            if not chunk:
                break
            self._arrived += 1
            held += chunk
            at = held.find(marker)
            if at < 0:
                # Keep only what may be the start of the marker, cut between two chunks.
                cut = len(held) - len(marker) + 1
                if cut > 0:
                    await self._queue.put(OutputChunk("stderr", held[:cut]))
                    held = held[cut:]
                continue
            end = held.find(b"\n", at)
            if end < 0:
                if at:
                    await self._queue.put(OutputChunk("stderr", held[:at]))
                    held = held[at:]
                continue
            digits = held[at + len(marker) : end]
            if digits.isdigit():
                self._pgid = int(digits)
            held = held[:at] + held[end + 1 :]
            break
        if held:
            await self._queue.put(OutputChunk("stderr", held))

    def _exited(self) -> None:
        """The exit status arrived: output still open, with nothing coming on it for a moment,
        belongs to what the command left behind, which must not hold the call (see
        _finish_leftovers)."""
        if not self._ended and self._leftovers is None:
            self._arrived_seen = self._arrived
            loop = asyncio.get_running_loop()
            self._leftovers = loop.call_later(_LEFTOVER_GRACE_S, self._finish_leftovers)

    def _finish_leftovers(self) -> None:
        if self._ended or all(task.done() for task in self._readers):
            return
        readers = zip(self._readers, self._on_channel, strict=True)
        held = any(not task.done() and not on_channel for task, on_channel in readers)
        if held or self._arrived != self._arrived_seen:
            # Output still flows, or waits on the hub's own back-pressure (a slow caller): that is
            # the command's output, not a leftover's silence. The wait starts again.
            self._arrived_seen = self._arrived
            loop = asyncio.get_running_loop()
            self._leftovers = loop.call_later(_LEFTOVER_GRACE_S, self._finish_leftovers)
            return
        logger.info("ssh: the command exited; killing what it left behind holding its output")
        self._kill_group()
        self._end_streams(drop_queued=False)

    async def output(self) -> AsyncIterator[OutputChunk]:
        open_streams = 2
        while open_streams:
            if self._ended and self._queue.empty():
                return
            item = await self._queue.get()
            if item is None:
                open_streams -= 1
                continue
            yield item

    async def wait(self) -> ExitStatus:
        """Until the channel closes: a kill, before or while this waits, bounds that by
        _KILL_GRACE_S (see _unanswered_kill, which drops the connection and so closes it)."""
        try:
            await self._process.wait_closed()
            self._closed = True
            code = self._process.returncode
        finally:
            if self._leftovers is not None:
                self._leftovers.cancel()
            if self._kill_timer is not None:
                self._kill_timer.cancel()
            await self._release()
        if self._unanswered:
            return self._stopped_answering()
        if code is None:
            if self._killed:
                return ExitStatus(None, None, killed=True)
            return ExitStatus(
                None,
                None,
                lost=f"the connection to the SSH sandbox {self._describe} was lost while the command ran; "
                "whether it finished, and how, is unknown (it may still be running there)",
            )
        if code < 0:
            return ExitStatus(None, -code, killed=self._killed)
        return ExitStatus(code, None, killed=self._killed)

    def _unanswered_kill(self) -> None:
        """The channel did not close within _KILL_GRACE_S of a kill: the connection is dead to us.
        It is dropped (the pool opens another; wait() returns as the channel closes with it), and
        the kill is sent once more, over a new connection."""
        if self._closed:
            return
        self._unanswered = True
        logger.warning("ssh: %s stopped answering; dropping the connection", self._describe)
        self._conn.conn.abort()
        if self._pgid is not None:
            self._killer = asyncio.create_task(self._pool.run_quiet(_kill_line(self._pgid)))

    def _stopped_answering(self) -> ExitStatus:
        return ExitStatus(
            None,
            None,
            killed=True,
            lost=f"the connection to the SSH sandbox {self._describe} stopped answering; the kill "
            "was sent again over a new connection, but whether the command is gone is unknown",
        )

    async def kill(self) -> None:
        if self._killed:
            return
        self._killed = True
        loop = asyncio.get_running_loop()
        self._kill_timer = loop.call_later(_KILL_GRACE_S, self._unanswered_kill)
        self._kill_group()
        self._end_streams(drop_queued=True)

    def _kill_group(self) -> None:
        if self._pgid is not None:
            # A second channel: the remote kill reaches the whole group even if this channel hangs.
            self._killer = asyncio.create_task(self._pool.run_quiet(_kill_line(self._pgid)))
        self._process.close()

    def _end_streams(self, *, drop_queued: bool) -> None:
        """Whoever reads output() stops: at once (a kill), or after what is already queued."""
        self._ended = True
        for task in self._readers:
            task.cancel()
        if drop_queued:
            while not self._queue.empty():
                self._queue.get_nowait()
        if not self._queue.full():
            self._queue.put_nowait(None)  # wakes a reader of output() waiting on an empty queue

    async def _release(self) -> None:
        if not self._released:
            self._released = True
            await self._pool.release(self._conn)


def _kill_line(pgid: int) -> str:
    return f"kill -KILL -- -{pgid} 2>/dev/null || kill -KILL {pgid}"


class SshTarget:
    kind = "ssh"

    def __init__(self, options: SshTargetOptions, redactor: Redactor, environ: dict[str, str]) -> None:
        self.options = options
        self.pool = SshPool(options, redactor, environ)
        self._workspace: SftpWorkspace | None = None
        self._prepared = False
        self._describe = f"{options.user}@{options.host}:{options.port}"

    async def start(self) -> None:
        """Keys and the pinned host key are read now, so a wrong path fails the hub's start."""
        o = self.options
        try:
            self.pool.load_keys()
        except ToolError as exc:
            raise ConfigError(
                f"packs[shell].options: the ssh target {o.user}@{o.host}:{o.port}: {exc}"
            ) from None

    async def stop(self) -> None:
        await self.pool.close()

    async def _prepare(self) -> None:
        if not self._prepared:
            await self.pool.run_quiet(f"mkdir -p -- {shlex.quote(self.options.workspace)}")
            self._prepared = True

    async def spawn(self, principal: str, spec: ExecSpec) -> SshProcess:
        await self._prepare()
        cwd = sandbox_cwd(spec.cwd, self.options.workspace)
        nonce = secrets.token_hex(8)
        line, command_on_stdin = remote_command(spec, cwd, self.options.limits, nonce)
        o = self.options
        # A connection that stopped answering would hold the call here until keepalives gave up.
        opening_s = (
            o.connect_timeout_s if spec.timeout_s is None else min(o.connect_timeout_s, spec.timeout_s)
        )
        c = await self.pool.acquire()
        try:
            async with asyncio.timeout(opening_s):
                _, session = await c.conn.create_session(_Channel, line, encoding=None)
                process = cast(_Channel, session)
        except TimeoutError:
            await self.pool.release(c)
            c.conn.abort()
            raise SandboxUnavailable(
                f"the SSH sandbox {self._describe} stopped answering: no session opened within "
                f"{opening_s:g}s; the connection was dropped, so the next call opens a new one"
            ) from None
        except (OSError, asyncssh.Error) as exc:
            await self.pool.release(c)
            raise SandboxUnavailable(f"the SSH sandbox {self._describe} refused a session: {exc}") from None
        except BaseException:
            await asyncio.shield(self.pool.release(c))
            raise
        if command_on_stdin is not None:
            process.stdin.write(command_on_stdin)
        if spec.stdin is not None:
            process.stdin.write(spec.stdin)
        process.stdin.write_eof()
        return SshProcess(self.pool, c, process, self._describe, nonce)

    async def workspace(self, principal: str) -> SftpWorkspace:
        if self._workspace is None:
            await self._prepare()
            self._workspace = SftpWorkspace(self.pool, self.options.workspace)
        return self._workspace

    def describe(self, principal: str) -> dict[str, Any]:
        o = self.options
        return {
            "target": "ssh",
            "host": f"{o.user}@{o.host}:{o.port}",
            "workspace": o.workspace,
            "limits": {**o.limits.model_dump(), "time": "timeout -s KILL"},
        }

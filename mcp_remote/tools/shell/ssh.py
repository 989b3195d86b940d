"""The SSH target: commands in a remote sandbox over pooled asyncssh connections, host key pinned.

The remote login shell receives one command line built here from quoted parts only:

    env K=V ... /bin/sh -c SCRIPT mcphub CWD TIMEOUT COMMAND

SCRIPT prints its process group id on stderr (the hub strips that line), enters CWD, applies the
rlimits with `ulimit`, and runs COMMAND with `/bin/sh -c` under `timeout -s KILL` when the remote
has coreutils' timeout. Cancelling or timing out kills that process group through a second
channel (`kill -KILL -- -PGID`), so a command that ignores its closed channel still stops.
The remote login shell must be POSIX-compatible (sh, bash, dash, zsh).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import shlex
from collections.abc import AsyncIterator
from typing import Any

import asyncssh

from mcp_local.errors import ConfigError, ToolError
from mcp_local.redaction import Redactor

from .options import SshLimits, SshTargetOptions
from .sandbox import ExecSpec, ExitStatus, OutputChunk, SandboxUnavailable, sandbox_cwd
from .sftp import SftpWorkspace
from .sshpool import SshConnection, SshPool

__all__ = ["SshProcess", "SshTarget", "remote_command"]

logger = logging.getLogger(__name__)

_PGID_LINE = re.compile(rb"^mcphub-pgid:(\d+)\n")
_SCRIPT = (
    'printf "mcphub-pgid:%s\\n" "$$" >&2; '
    'cd -- "$1" || exit 126; shift; '
    "{ulimits}"
    't=$1; shift; if [ "$t" != 0 ] && command -v timeout >/dev/null 2>&1; then '
    'exec timeout -s KILL "$t" /bin/sh -c "$1"; fi; exec /bin/sh -c "$1"'
)


def remote_command(spec: ExecSpec, cwd: str, limits: SshLimits) -> str:
    """The one line the remote login shell parses: every variable part is `shlex.quote`d."""
    ulimits = ""
    for flag, value in (
        ("-t", limits.cpu_s),
        ("-f", None if limits.file_size_mb is None else limits.file_size_mb * 2048),  # 512-byte blocks
        ("-n", limits.open_files),
        ("-v", None if limits.address_space_mb is None else limits.address_space_mb * 1024),
    ):
        if value is not None:
            ulimits += f"ulimit {flag} {int(value)} || exit 125; "
    script = _SCRIPT.format(ulimits=ulimits)
    timeout = 0 if spec.timeout_s is None else math.ceil(spec.timeout_s) + 2  # the hub's timer goes first
    env = " ".join(shlex.quote(f"{k}={v}") for k, v in spec.env.items())
    parts = [
        *(["env", env] if env else []),
        "/bin/sh", "-c", shlex.quote(script), "mcphub",
        shlex.quote(cwd), str(timeout), shlex.quote(spec.command),
    ]  # fmt: skip
    return " ".join(parts)


class SshProcess:
    """One remote command on a pooled connection."""

    def __init__(self, pool: SshPool, conn: SshConnection, process: asyncssh.SSHClientProcess[bytes]) -> None:
        self._pool = pool
        self._conn = conn
        self._process = process
        self._pgid: int | None = None
        self._killed = False
        self._released = False
        self._killer: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[OutputChunk | None] = asyncio.Queue(64)
        self._readers = [
            asyncio.create_task(self._read("stdout", process.stdout)),
            asyncio.create_task(self._read("stderr", process.stderr)),
        ]

    async def _read(self, stream: str, reader: asyncssh.SSHReader[bytes]) -> None:
        head = b""
        try:
            if stream == "stderr":
                # The first line is the process group id, ours and not the command's.
                while len(head) < 64 and b"\n" not in head:
                    chunk = await reader.read(64 - len(head))
                    if not chunk:
                        break
                    head += chunk
                found = _PGID_LINE.match(head)
                if found:
                    self._pgid = int(found.group(1))
                    head = head[found.end() :]
                if head:
                    await self._queue.put(OutputChunk(stream, head))
            while chunk := await reader.read(65536):
                await self._queue.put(OutputChunk(stream, chunk))
        except (asyncssh.Error, OSError):
            pass
        if not self._killed:
            await self._queue.put(None)

    async def output(self) -> AsyncIterator[OutputChunk]:
        open_streams = 2
        while open_streams:
            item = await self._queue.get()
            if item is None:
                open_streams -= 1
                continue
            yield item

    async def wait(self) -> ExitStatus:
        try:
            await self._process.wait_closed()
            code = self._process.returncode
        finally:
            await self._release()
        if code is None:
            return ExitStatus(None, None, killed=True)
        if code < 0:
            return ExitStatus(None, -code, killed=self._killed)
        return ExitStatus(code, None, killed=self._killed)

    async def kill(self) -> None:
        if self._killed:
            return
        self._killed = True
        if self._pgid is not None:
            pgid = self._pgid
            # A second channel: the remote kill reaches the whole group even if this channel hangs.
            self._killer = asyncio.create_task(
                self._pool.run_quiet(f"kill -KILL -- -{pgid} 2>/dev/null || kill -KILL {pgid}")
            )
        self._process.close()
        for task in self._readers:
            task.cancel()
        # Whoever reads output() stops now: drop what is queued and mark both streams closed.
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)
        self._queue.put_nowait(None)

    async def _release(self) -> None:
        if not self._released:
            self._released = True
            await self._pool.release(self._conn)


class SshTarget:
    kind = "ssh"

    def __init__(self, options: SshTargetOptions, redactor: Redactor, environ: dict[str, str]) -> None:
        self.options = options
        self.pool = SshPool(options, redactor, environ)
        self._workspace: SftpWorkspace | None = None
        self._prepared = False

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
        line = remote_command(spec, cwd, self.options.limits)
        c = await self.pool.acquire()
        try:
            process = await c.conn.create_process(line, encoding=None)
        except (OSError, asyncssh.Error) as exc:
            await self.pool.release(c)
            raise SandboxUnavailable(f"the SSH sandbox refused a session: {exc}") from None
        except BaseException:
            await asyncio.shield(self.pool.release(c))
            raise
        if spec.stdin is not None:
            process.stdin.write(spec.stdin)
        process.stdin.write_eof()
        return SshProcess(self.pool, c, process)

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

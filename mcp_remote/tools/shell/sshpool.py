"""Connections to one SSH sandbox, pooled: each carries up to `sessions_per_connection` channels,
new ones open while all are busy (up to `max_connections`), idle ones close after `idle_close_s`.

The host key is pinned (`known_host_key` or `known_hosts_file`); no agent, no ~/.ssh/config. The
private key (and its passphrase) are registered with the hub's redactor when read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from mcp_local.errors import ToolError
from mcp_local.redaction import Redactor

from .options import SshTargetOptions
from .sandbox import SandboxUnavailable

__all__ = ["SshConnection", "SshPool"]

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class SshConnection:
    conn: asyncssh.SSHClientConnection
    active: int = 0
    idle_since: float = 0.0
    sftp: asyncssh.SFTPClient | None = None
    sftp_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class SshPool:
    """Connections to one host, each carrying up to `sessions_per_connection` channels."""

    def __init__(self, options: SshTargetOptions, redactor: Redactor, environ: dict[str, str]) -> None:
        self.options = options
        self._redactor = redactor
        self._environ = environ
        self._conns: list[SshConnection] = []
        self._connecting = 0
        self._changed = asyncio.Condition()
        self._key: asyncssh.SSHKey | None = None
        self._known_hosts: Any = None
        self._reaper: asyncio.Task[None] | None = None

    def load_keys(self) -> None:
        o = self.options
        passphrase = None
        if o.key_passphrase_env:
            passphrase = self._environ.get(o.key_passphrase_env)
            if passphrase is None:
                raise ToolError(f"the SSH key passphrase variable {o.key_passphrase_env} is not set")
            with contextlib.suppress(ValueError):
                self._redactor.add(passphrase)
        try:
            text = o.key_file.read_text()
            with contextlib.suppress(ValueError):
                self._redactor.add(text.strip())
            self._key = asyncssh.import_private_key(text, passphrase)
        except (OSError, asyncssh.KeyImportError) as exc:
            raise SandboxUnavailable(f"cannot load the SSH key {o.key_file}: {exc}") from None
        if o.known_host_key is not None:
            try:
                self._known_hosts = ([asyncssh.import_public_key(o.known_host_key)], [], [])
            except asyncssh.KeyImportError as exc:
                raise SandboxUnavailable(f"known_host_key is not a public key: {exc}") from None
        else:
            self._known_hosts = str(o.known_hosts_file)

    async def _connect(self) -> SshConnection:
        o = self.options
        if self._key is None:
            self.load_keys()
        try:
            async with asyncio.timeout(o.connect_timeout_s):
                conn = await asyncssh.connect(
                    o.host,
                    o.port,
                    username=o.user,
                    client_keys=[self._key],
                    known_hosts=self._known_hosts,
                    config=None,
                    agent_path=None,
                    preferred_auth="publickey",
                    keepalive_interval=o.keepalive_s,
                    keepalive_count_max=3,
                    x509_trusted_certs=None,
                )
        except TimeoutError:
            raise SandboxUnavailable(
                f"the SSH sandbox {o.user}@{o.host}:{o.port} did not answer within {o.connect_timeout_s:g}s"
            ) from None
        except asyncssh.HostKeyNotVerifiable as exc:
            raise SandboxUnavailable(
                f"the SSH sandbox {o.host}:{o.port} presented a host key that is not the pinned one ({exc}); "
                "refusing to connect"
            ) from None
        except (OSError, asyncssh.Error) as exc:
            raise SandboxUnavailable(
                f"cannot connect to the SSH sandbox {o.user}@{o.host}:{o.port}: {exc}"
            ) from None
        return SshConnection(conn, idle_since=asyncio.get_running_loop().time())

    async def acquire(self) -> SshConnection:
        """A connection with a free session slot (opened when all are busy, up to max_connections)."""
        o = self.options
        async with self._changed:
            while True:
                self._conns = [c for c in self._conns if not c.conn.is_closed()]
                for c in self._conns:
                    if c.active < o.sessions_per_connection:
                        c.active += 1
                        return c
                if len(self._conns) + self._connecting < o.max_connections:
                    self._connecting += 1
                    break
                await self._changed.wait()
        try:
            made = await self._connect()
        finally:
            async with self._changed:
                self._connecting -= 1
                self._changed.notify_all()
        made.active = 1
        async with self._changed:
            self._conns.append(made)
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._close_idle(), name="mcphub-ssh-idle")
        return made

    async def release(self, c: SshConnection) -> None:
        async with self._changed:
            c.active -= 1
            if c.active == 0:
                c.idle_since = asyncio.get_running_loop().time()
            self._changed.notify_all()

    async def _close_idle(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(30.0, self.options.idle_close_s / 2))
            async with self._changed:
                idle = [
                    c
                    for c in self._conns
                    if c.active == 0 and loop.time() - c.idle_since > self.options.idle_close_s
                ]
                self._conns = [c for c in self._conns if c not in idle]
            for c in idle:
                c.conn.close()

    async def sftp(self) -> tuple[SshConnection, asyncssh.SFTPClient]:
        c = await self.acquire()
        try:
            async with c.sftp_lock:
                if c.sftp is None:
                    c.sftp = await c.conn.start_sftp_client()
            return c, c.sftp
        except (OSError, asyncssh.Error) as exc:
            await self.release(c)
            raise SandboxUnavailable(f"the SSH sandbox offers no SFTP: {exc}") from None

    async def run_quiet(self, command: str) -> None:
        """Run a short command for its effect (kill, mkdir); failures are logged, not raised."""
        try:
            c = await self.acquire()
        except ToolError as exc:
            logger.warning("ssh: cannot run a control command: %s", exc)
            return
        try:
            async with asyncio.timeout(10):
                await c.conn.run(command, check=False)
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            logger.warning("ssh: control command failed: %s", exc)
        finally:
            await self.release(c)

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for c in self._conns:
            c.conn.close()
        for c in self._conns:
            with contextlib.suppress(Exception):
                await c.conn.wait_closed()
        self._conns.clear()

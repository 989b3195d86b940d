"""The policy proxy: every request Chromium makes goes through it, and it enforces the URL policy.

Chromium is launched with this proxy for every scheme and with loopback *not*
bypassed (`<-loopback>`), so navigations, redirects, subresources, workers and
WebSockets all arrive here: plain HTTP as absolute-form requests, HTTPS and
WebSockets as `CONNECT host:port` tunnels. The proxy resolves the host itself,
asks the policy with the addresses it resolved, and connects to one of exactly
those addresses, so a name cannot resolve differently between the check and
the connection.

It serves one request per client connection (`Connection: close` both ways),
which keeps it a plain byte pipe after the request head. A refused request gets
`403` with the reason as its body; the reason is also kept (`recent_block`) so a
tool can explain a failed navigation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlsplit

from .policy import IPAddress, UrlPolicy, literal_ip

__all__ = ["PolicyProxy", "Resolver", "system_resolver"]

logger = logging.getLogger(__name__)

Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]

MAX_HEAD_BYTES = 64 * 1024
HEAD_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0
_HOP_BY_HOP = {b"connection", b"proxy-connection", b"keep-alive", b"proxy-authorization", b"te", b"trailer"}
_KEEP_RECENT = 256


async def system_resolver(host: str, port: int) -> Sequence[IPAddress]:
    """The host's addresses by the system resolver (getaddrinfo), in its order of preference."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[IPAddress] = []
    for *_, sockaddr in infos:
        ip = literal_ip(str(sockaddr[0]).split("%", 1)[0])
        if ip is not None and ip not in found:
            found.append(ip)
    return found


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _split_head(head: bytes) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
    lines = head.rstrip(b"\r\n").split(b"\r\n")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers.append((name.strip(), value.strip()))
    return lines[0].split(b" "), headers


def _join_head(first: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    return b"\r\n".join([first, *(n + b": " + v for n, v in headers)]) + b"\r\n\r\n"


def _strip_hop_by_hop(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    named = set(_HOP_BY_HOP)
    for name, value in headers:
        if name.lower() == b"connection":
            named.update(t.strip().lower() for t in value.split(b","))
    return [(n, v) for n, v in headers if n.lower() not in named]


class PolicyProxy:
    """An HTTP forward proxy on 127.0.0.1 that lets through only what the policy allows."""

    def __init__(
        self,
        policy: UrlPolicy,
        *,
        resolver: Resolver = system_resolver,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.policy = policy
        self._resolve = resolver
        self._connect_timeout_s = connect_timeout_s
        self._server: asyncio.Server | None = None
        self._recent: OrderedDict[str, str] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", 0, limit=MAX_HEAD_BYTES, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def recent_block(self, host: str, port: int | None = None) -> str | None:
        """The reason the proxy last refused `host` (on `port`, when given), if it did recently."""
        host = host.lower().strip("[]")
        if port is not None:
            return self._recent.get(f"{host}:{port}")
        for key in reversed(self._recent):
            if key.rpartition(":")[0] == host:
                return self._recent[key]
        return None

    def _remember(self, host: str, port: int, reason: str) -> None:
        key = f"{host.lower().strip('[]')}:{port}"
        self._recent[key] = reason
        self._recent.move_to_end(key)
        while len(self._recent) > _KEEP_RECENT:
            self._recent.popitem(last=False)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except _Refused as exc:
            body = f"mcphub browser: {exc.reason}\n".encode()
            title = {403: b"Forbidden", 502: b"Bad Gateway", 400: b"Bad Request"}.get(exc.status, b"Error")
            with contextlib.suppress(OSError):
                writer.write(
                    b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\nProxy-Connection: close\r\n\r\n"
                    % (exc.status, title, len(body))
                    + body
                )
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass  # the browser or the server went away: nothing to tell anyone
        except asyncio.CancelledError:
            # `stop` (or the loop's end) cancels the connection. Nobody awaits this task but
            # asyncio's own callback, which takes a cancelled task for a failure and logs it.
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
        request_line, headers = _split_head(head)
        if len(request_line) != 3:
            raise _Refused(400, "a malformed request line")
        method, target, version = request_line
        if method == b"CONNECT":
            host, sep, port_text = target.decode("latin-1").rpartition(":")
            if not sep or not port_text.isdigit():
                raise _Refused(400, f"CONNECT needs host:port, got {target!r}")
            upstream_r, upstream_w = await self._open(host.strip("[]"), int(port_text))
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await self._pipe(reader, writer, upstream_r, upstream_w, b"")
            return
        url = urlsplit(target.decode("latin-1"))
        if url.scheme not in ("http", "ws") or not url.hostname:
            raise _Refused(400, f"expected an absolute http:// URL, got {target[:200]!r}")
        port = url.port or 80
        upstream_r, upstream_w = await self._open(url.hostname, port)
        path = url.path or "/"
        if url.query:
            path += "?" + url.query
        upgrade = any(n.lower() == b"upgrade" for n, _ in headers)
        if upgrade:
            out_headers = [(n, v) for n, v in headers if n.lower() != b"proxy-connection"]
        else:
            out_headers = [*_strip_hop_by_hop(headers), (b"Connection", b"close")]
        first = b" ".join([method, path.encode("latin-1"), version])
        upstream_w.write(_join_head(first, out_headers))
        await self._pipe(reader, writer, upstream_r, upstream_w, b"" if upgrade else None)

    async def _open(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        literal = literal_ip(host)
        if literal is not None:
            addresses: Sequence[IPAddress] = [literal]
        else:
            try:
                addresses = await asyncio.wait_for(self._resolve(host, port), self._connect_timeout_s)
            except (OSError, TimeoutError) as exc:
                raise _Refused(502, f"cannot resolve {host}: {exc}") from None
        reason = self.policy.check_target(host, port, addresses)
        if reason is not None:
            self._remember(host, port, reason)
            logger.info("browser request refused: %s", reason)
            raise _Refused(403, f"blocked by the URL policy: {reason}")
        last: Exception | None = None
        for ip in addresses:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(str(ip), port), self._connect_timeout_s
                )
            except (OSError, TimeoutError) as exc:
                last = exc
                continue
            self._check_not_this_machine(host, port, ip, writer)
            return reader, writer
        raise _Refused(502, f"cannot connect to {host}:{port}: {last or 'no address'}")

    def _check_not_this_machine(
        self, host: str, port: int, ip: IPAddress, writer: asyncio.StreamWriter
    ) -> None:
        """Refuse a connection that reached this machine at an address the policy was not told of.

        The machine's addresses are read once, at start; one added since (or an alias) is seen
        here: a connection to this machine leaves from the address it goes to. Nothing has been
        sent on it yet.
        """
        ends = writer.get_extra_info("sockname"), writer.get_extra_info("peername")
        if not all(ends) or literal_ip(str(ends[0][0]).split("%", 1)[0]) != ip:
            return
        reason = self.policy.check_target(host, port, [ip], local=[ip])
        if reason is not None:
            writer.close()
            self._remember(host, port, reason)
            logger.info("browser request refused: %s", reason)
            raise _Refused(403, f"blocked by the URL policy: {reason}")

    async def _pipe(
        self,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        upstream_r: asyncio.StreamReader,
        upstream_w: asyncio.StreamWriter,
        response_prefix: bytes | None,
    ) -> None:
        """Copy both ways until both sides are done; `None` prefix: rewrite the response head first."""

        async def upward() -> None:
            with contextlib.suppress(OSError):
                while chunk := await client_r.read(65536):
                    upstream_w.write(chunk)
                    await upstream_w.drain()
                if upstream_w.can_write_eof():
                    upstream_w.write_eof()

        async def downward() -> None:
            if response_prefix is None:
                try:
                    head = await upstream_r.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as exc:
                    client_w.write(exc.partial)
                    return
                status, headers = _split_head(head)
                headers = [*_strip_hop_by_hop(headers), (b"Connection", b"close")]
                client_w.write(_join_head(b" ".join(status), headers))
            while chunk := await upstream_r.read(65536):
                client_w.write(chunk)
                await client_w.drain()

        up = asyncio.create_task(upward())
        try:
            await downward()
        finally:
            up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await up
            upstream_w.close()
            with contextlib.suppress(OSError):
                await upstream_w.wait_closed()

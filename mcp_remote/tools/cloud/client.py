"""One service's HTTP client: a guarded connection pool, the credential, redirects hop by hop.

Built on httpcore2 (the transport under httpx2, which the `mcp` SDK already
brings): its connection pool takes a network backend, which is where the SSRF
guard sits (see `netguard.py`), and it leaves redirects, cookies and auth to
us, which is what this needs: each redirect is followed here, re-checked, and
the credential travels only to the service's own origin and base path.
httpx2 supplies URL building and query encoding.
"""

from __future__ import annotations

import functools
import ssl
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpcore2
import httpx2

from mcp_local.errors import ToolError

from .credentials import Credential
from .netguard import AddressPolicy, AddressRefused, GuardedBackend
from .settings import ServiceSettings

__all__ = ["DROPPED_HEADERS", "CloudResponse", "ServiceClient"]

USER_AGENT = "mcphub-cloud/0.1"
REDIRECTS = frozenset({301, 302, 303, 307, 308})
DROPPED_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-real-ip",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-original-url",
        "x-rewrite-url",
        "x-original-uri",
        "x-forwarded-uri",
        "x-forwarded-prefix",
        "x-forwarded-path",
        "x-envoy-original-path",
    }
)
"""Request headers a caller may not set: credentials and cookies belong to the hub, framing to the
client, and a method or path override (honoured by some servers and proxies in front of them)
would slip past the service's method and path rules."""
_ENCODING_HEADERS = frozenset({"content-encoding", "content-length"})
_DECODABLE = frozenset({"gzip", "x-gzip", "deflate"})


def _content_codings(headers: Sequence[tuple[str, str]]) -> list[str]:
    return [
        c.strip().lower()
        for k, v in headers
        if k.lower() == "content-encoding"
        for c in v.split(",")
        if c.strip().lower() not in ("", "identity")
    ]


class _Inflater:
    """Decodes a body the service compressed although asked for `identity`. The hub must see
    the body as it is to redact the credential from it: a compressed echo of the key would
    reach the caller unredacted. An encoding the standard library cannot decode is refused
    (`for_codings`) rather than passed on unread.

    Bounded both ways: output never past the room the caller gives, input never past `limit`
    compressed bytes (bytes after a stream's end would otherwise pile up undecoded)."""

    def __init__(self, coding: str, service: str, limit: int) -> None:
        self.coding = coding
        self._service = service
        self._limit = limit
        self._taken = 0
        self._stream: Any = None
        self._ended = False
        self._head = b""

    @classmethod
    def for_codings(cls, codings: list[str], service: str, limit: int) -> _Inflater:
        if len(codings) > 1 or codings[0] not in _DECODABLE:
            raise ToolError(
                f"{service}: the service answered in the encoding {', '.join(codings)!r} although asked "
                "for identity; the hub decodes only gzip and deflate, and does not pass on a body it "
                "cannot check for secrets"
            )
        return cls(codings[0], service, limit)

    def _fail(self, why: str) -> ToolError:
        return ToolError(f"{self._service}: the service's {self.coding} body {why}")

    def _start(self, data: bytes) -> Any:
        if self.coding != "deflate":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        # "deflate" is a zlib stream by the RFC; many servers send raw deflate instead.
        wrapped = len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
        return zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)

    def feed(self, data: bytes, room: int) -> bytes:
        """Decoded bytes of `data`, at most `room` of them (room + 1 tells the caller it overflowed)."""
        self._taken += len(data)
        # Compressed, a body is shorter, or a little longer when it does not compress (stored
        # blocks: 5 bytes per 64 KiB, and a header): past that margin it is no body we want.
        if self._taken > self._limit + self._limit // 256 + 1024:
            raise self._fail(f"is longer than {self._limit} bytes before it is even decoded")
        if self._stream is None and self.coding == "deflate" and len(self._head) + len(data) < 2:
            self._head += data  # two bytes tell a zlib stream from raw deflate
            return b""
        data, self._head = self._head + data, b""
        out = b""
        try:
            while data and len(out) <= room:
                if self._stream is None or self._ended:
                    if self._ended and (self.coding == "deflate" or data.strip(b"\0") == b""):
                        if data.strip(b"\0"):
                            raise self._fail("goes on after its end")
                        return out  # padding after the last member
                    self._stream, self._ended = self._start(data), False
                out += self._stream.decompress(data, room + 1 - len(out))
                if self._stream.eof:  # a gzip body may be several members, one after another
                    self._ended = True
                    data = self._stream.unused_data
                else:
                    data = self._stream.unconsumed_tail
        except zlib.error as exc:
            raise self._fail(f"is corrupt ({exc})") from None
        return out

    def check_complete(self) -> None:
        """At the end of a body read whole: it must not stop inside a stream."""
        if self._head or (self._stream is not None and not self._ended):
            raise self._fail("ends before its compressed stream does")


_TRANSPORT_ERRORS = (
    httpcore2.TimeoutException,
    httpcore2.NetworkError,
    httpcore2.ProtocolError,
    httpcore2.UnsupportedProtocol,
)


REDACTION_SLACK = 64 * 1024
"""Bytes read past `max_response_bytes` so that secrets crossing the cap are redacted whole."""


@dataclass(frozen=True, slots=True)
class CloudResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    truncated: bool
    url: str
    redirects: tuple[str, ...] = field(default=())

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)


@functools.cache
def _ssl_context(cafile: str | None) -> ssl.SSLContext:
    """One verifying context per CA bundle (loading the system store takes tens of milliseconds)."""
    return ssl.create_default_context(cafile=cafile)


def _same_scope(url: httpx2.URL, base: httpx2.URL) -> bool:
    """Whether `url` is under the service's base URL (same scheme, host, port and base path)."""
    if (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port):
        return False
    # `path` is percent-decoded: a redirect's `%2e%2e` (or `..%2f`, or `..\\`) climbs out of the
    # base path on most servers even though the prefix matches, so any dot segment is out.
    if any(part in (".", "..") for part in url.path.replace("\\", "/").split("/")):
        return False
    base_path = base.path.rstrip("/")
    return url.path == base_path or url.path.startswith(base_path + "/") or not base_path


def _with_query(url: httpx2.URL, remove: Iterable[str], add: Sequence[tuple[str, str]]) -> httpx2.URL:
    drop = {n.lower() for n in remove}
    kept = [(k, v) for k, v in url.params.multi_items() if k.lower() not in drop]
    return url.copy_with(params=httpx2.QueryParams([*kept, *add]))


class ServiceClient:
    """Sends calls to one service through its own pool and address policy."""

    def __init__(self, name: str, settings: ServiceSettings, policy: AddressPolicy) -> None:
        self.name = name
        self.settings = settings
        self.base = httpx2.URL(settings.base_url)
        context = _ssl_context(str(settings.ca_file) if settings.ca_file else None)
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=context,
            max_connections=settings.max_connections,
            max_keepalive_connections=min(settings.max_connections, 10),
            keepalive_expiry=30.0,
            retries=0,
            network_backend=GuardedBackend(policy),
        )
        self._timeouts = {
            "connect": settings.connect_timeout_s,
            "read": settings.timeout_s,
            "write": settings.timeout_s,
            "pool": settings.timeout_s,
        }

    def url(self, path: str, query: Sequence[tuple[str, str]]) -> httpx2.URL:
        base = self.base
        url = httpx2.URL(f"{base.scheme}://{base.netloc.decode('ascii')}{base.path.rstrip('/')}{path}")
        if (url.scheme, url.host, url.port) != (self.base.scheme, self.base.host, self.base.port):
            raise ToolError(f"path {path[:80]!r} does not stay on the service's host")
        return url.copy_with(params=httpx2.QueryParams(list(query))) if query else url

    async def send(
        self,
        method: str,
        url: httpx2.URL,
        headers: Sequence[tuple[str, str]],
        body: bytes | None,
        credential: Credential,
    ) -> CloudResponse:
        """Send one call, following redirects; `credential` goes only to the service's own scope."""
        auth_params = [k for k, _ in credential.query]
        hops: list[str] = []
        for hop in range(self.settings.max_redirects + 1):
            in_scope = _same_scope(url, self.base)
            if auth_params:
                url = _with_query(url, auth_params, credential.query if in_scope else ())
            sent = [("User-Agent", USER_AGENT), ("Accept-Encoding", "identity"), *headers]
            if in_scope:
                sent.extend(credential.headers)
            if body is not None and not any(k.lower() == "content-type" for k, _ in headers):
                sent.append(("Content-Type", "application/json"))
            response = await self._exchange(method, url, sent, body)
            location = response.header("location")
            if response.status not in REDIRECTS or not location or hop == self.settings.max_redirects:
                return CloudResponse(
                    response.status,
                    response.headers,
                    response.body,
                    response.truncated,
                    str(url),
                    tuple(hops),
                )
            try:
                target = url.join(location)
            except (httpx2.InvalidURL, ValueError) as exc:
                raise ToolError(f"the service redirected to an invalid URL: {exc}") from None
            if target.scheme not in ("http", "https"):
                raise ToolError(
                    f"the service redirected to a {target.scheme!r} URL; only http(s) is followed"
                )
            if url.scheme == "https" and target.scheme == "http":
                raise ToolError("the service redirected from https to plain http; not followed")
            hops.append(str(target.copy_with(query=None)))
            if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                method = "GET" if method != "HEAD" else "HEAD"
                body = None
            url = target
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns on its last hop

    async def _exchange(
        self, method: str, url: httpx2.URL, headers: list[tuple[str, str]], body: bytes | None
    ) -> CloudResponse:
        target = httpcore2.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path)
        cap = self.settings.max_response_bytes
        # Read past the cap by more than any secret's length: the result is redacted first and
        # cut to `cap` after, so a cut never lands inside a secret (which would leave all but
        # its tail unredacted; a caller could pad its request to move the cut there).
        limit = cap + REDACTION_SLACK
        try:
            async with self._pool.stream(
                method, target, headers=headers, content=body, extensions={"timeout": self._timeouts}
            ) as response:
                decoded = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers)
                codings = _content_codings(decoded)
                inflater: _Inflater | None = None
                chunks: list[bytes] = []
                size = 0
                truncated = False
                async for raw in response.aiter_stream():
                    if codings and inflater is None and raw:
                        # Only a body is decoded: a HEAD, 204 or 304 answer has none to check.
                        inflater = _Inflater.for_codings(codings, self.name, limit)
                    # Decoded as it comes and never past the limit, so a small compressed
                    # body cannot expand into gigabytes here.
                    chunk = inflater.feed(raw, limit - size) if inflater is not None else raw
                    if size + len(chunk) > limit:
                        chunks.append(chunk[: limit - size])
                        truncated = True
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                if inflater is not None:
                    if not truncated:
                        inflater.check_complete()
                    # The body is now what the headers describe without the encoding.
                    decoded = tuple((k, v) for k, v in decoded if k.lower() not in _ENCODING_HEADERS)
                truncated = truncated or size > cap
                return CloudResponse(response.status, decoded, b"".join(chunks), truncated, str(url))
        except AddressRefused:
            raise
        except httpcore2.TimeoutException as exc:
            kind = type(exc).__name__
            raise ToolError(f"{self.name}: {kind} talking to {url.host} ({exc or 'no detail'})") from None
        except _TRANSPORT_ERRORS as exc:
            raise ToolError(f"{self.name}: {type(exc).__name__} talking to {url.host}: {exc}") from None

    async def aclose(self) -> None:
        await self._pool.aclose()

    def describe(self) -> dict[str, Any]:
        return {"base_url": self.settings.base_url}

"""Host and Origin validation for every request on every bind address (DNS-rebinding defence).

The SDK turns this on by itself only for loopback binds; the bridge applies it
as one ASGI wrapper around the whole app, whatever the address.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_local.principals import RawAuthorization

__all__ = ["HostOriginGuard", "OriginPolicy", "bearer_token", "default_policy"]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
_OWS = (b" ", b"\t")


def _matches(value: str, patterns: tuple[str, ...]) -> bool:
    for pattern in patterns:
        if pattern.endswith(":*"):
            base = pattern[:-1]  # keep the colon: "localhost:" must not match "localhost.evil:"
            if value.startswith(base) and value[len(base) :].isdigit():
                return True
            if value == pattern[:-2]:
                return True
        elif value == pattern:
            return True
    return False


@dataclass(frozen=True, slots=True)
class OriginPolicy:
    """Allowed `Host` values and `Origin` values; `name:*` allows any port.

    `speaker` is who answers a refused request: the hub, whose config has `allowed_hosts` and
    `allowed_origins` (a refusal says to add the value there), or a sidecar, which has no such
    keys (it answers loopback names only)."""

    hosts: tuple[str, ...]
    origins: tuple[str, ...]
    speaker: str = "hub"

    def refusal(self, header: str, value: str) -> str:
        """Why a request's `header` ("Host" or "Origin") `value` is refused, and what to do."""
        shown = f"Host header {value!r}" if header == "Host" else f"Origin {value!r}"
        if self.speaker == "hub":
            return f"{shown} is not allowed; add it to allowed_{header.lower()}s in the config"
        return f"{shown} is not allowed: the {self.speaker} answers loopback names only"

    def host_allowed(self, host: str | None) -> bool:
        return bool(host) and _matches(host.lower(), self.hosts)  # type: ignore[union-attr]

    def origin_allowed(self, origin: str | None) -> bool:
        # Clients that are not browsers send no Origin; browsers always do.
        return origin is None or _matches(origin.lower(), self.origins)


def default_policy(
    bind_host: str,
    extra_hosts: Iterable[str] = (),
    extra_origins: Iterable[str] = (),
    *,
    speaker: str = "hub",
) -> OriginPolicy:
    """Loopback names always; the bind address when it is a concrete one; then the configured ones."""
    hosts = [f"{h}:*" for h in LOOPBACK_HOSTS]
    origins = [f"http://{h}:*" for h in LOOPBACK_HOSTS]
    if bind_host not in ("0.0.0.0", "::", "", *LOOPBACK_HOSTS, "::1"):  # noqa: S104 - a comparison
        shown = f"[{bind_host}]" if ":" in bind_host else bind_host
        hosts.append(f"{shown}:*")
        origins.append(f"http://{shown}:*")
    hosts.extend(h.lower() for h in extra_hosts)
    origins.extend(o.lower().rstrip("/") for o in extra_origins)
    return OriginPolicy(tuple(dict.fromkeys(hosts)), tuple(dict.fromkeys(origins)), speaker)


def _reject(status: int, message: str) -> tuple[dict[str, object], bytes]:
    body = orjson.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": message}})
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }
    return start, body


class HostOriginGuard:
    """Answers 421 to a foreign Host and 403 to a foreign Origin before anything else runs.

    Host and Origin are compared after trimming optional whitespace around the value.
    """

    def __init__(self, app: ASGIApp, policy: OriginPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = origin = None
            padded = repeated = False
            for key, value in scope["headers"]:
                if value[:1] in _OWS or value[-1:] in _OWS:
                    padded = True
                if key == b"host":
                    repeated = repeated or host is not None
                    host = value.decode("latin-1").strip()
                elif key == b"origin":
                    repeated = repeated or origin is not None
                    origin = value.decode("latin-1").strip()
            problem = None
            if repeated:  # the check and the app could read different copies (RFC 9112 3.2: 400)
                problem = (400, "more than one Host or Origin header")
            elif host is None:  # RFC 9112 3.2: 400; and without one nothing says which site is asked
                problem = (400, "the request has no Host header")
            elif not self.policy.host_allowed(host):
                problem = (421, self.policy.refusal("Host", host))
            elif not self.policy.origin_allowed(origin):
                problem = (403, self.policy.refusal("Origin", str(origin)))
            if problem is not None:
                start, body = _reject(*problem)
                await send(start)
                await send({"type": "http.response.body", "body": body})
                return
            if padded:
                # RFC 9110 5.5: whitespace around a field value is not part of it. h11 strips it,
                # httptools does not; normalise so the SDK compares Mcp-* headers correctly.
                scope = dict(scope)
                scope["headers"] = [(k, v.strip(b" \t")) for k, v in scope["headers"]]
        await self.app(scope, receive, send)


def bearer_token(header: str | None, default: str | None) -> str | None:
    """The caller's token from its `Authorization` header; `default` (stdio clients) when there is none.

    A header that is not `Bearer <token>` comes back as a `RawAuthorization`, forwarded
    as is, so the hub answers UNAUTHENTICATED precisely rather than the bridge guessing.
    """
    if not header:
        return default
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    # `Bearer` with no token too: read as no token at all, an open hub would serve a call the
    # session door (which reads it as the hub's gRPC side does) had refused.
    return RawAuthorization(header)

"""The MCP face of a ToolHub: the official SDK's low-level server, forwarding every call over gRPC.

Streamable HTTP at `/mcp` serves the handshake protocol versions (2025-06-18,
2025-11-25: sessions and the GET stream) and the stateless 2026-07-28 wire;
the SDK picks the era per request. The caller's `Authorization: Bearer` header
is forwarded to the hub as the caller's identity; stdio clients use the token
the bridge was started with.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import grpc
import orjson
from mcp.server.caching import CacheHint
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    CallToolRequestParams,
    NotificationParams,
    PaginatedRequestParams,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_local.pipeline import MAX_ARGUMENT_DEPTH, nested_deeper_than
from mcphub_proto.v1 import toolhub_pb2 as pb

from .app import BridgeApp
from .cancels import CancelReasons, call_key, cancellable
from .changes import ToolChanges, ending_http_sessions
from .door import SessionDoor
from .errors import mcp_error_from_grpc
from .express import APPROVAL_META_KEY, ExpressLane
from .hubclient import ToolHubClient
from .options import BridgeOptions
from .params import PreciseErrors
from .security import OriginPolicy, bearer_token
from .translate import result_to_mcp, tool_to_mcp

__all__ = ["BridgeOptions", "build_asgi_app", "build_mcp_server", "mcp_app"]

logger = logging.getLogger(__name__)

try:
    _VERSION = version("mcphub")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    _VERSION = "0.0.0"

_APPROVAL_STATES = {1: "pending", 2: "approved", 3: "denied", 4: "expired"}


_SCHEMA_CALLER: ContextVar[str | None] = ContextVar("mcphub_bridge_schema_caller")
"""The bearer token of the request the SDK is serving, for the schema lookup it calls with a
tool's name alone (set by `_SchemaCaller`; unset on stdio, where the default token applies)."""


class _JsonTooLarge:
    """The SDK answers a body over the limit with 413 and the plain text "Request body too
    large"; a JSON-RPC client gets a JSON-RPC error naming the limit instead."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        message = f"Invalid Request: the body is larger than the bridge's limit of {limit} bytes"
        error = {"code": INVALID_REQUEST, "message": message}
        self._body = orjson.dumps({"jsonrpc": "2.0", "id": None, "error": error})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        replaced = False

        async def sending(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] == 413:
                replaced = True
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(self._body)),
                ]
                await send({"type": "http.response.start", "status": 413, "headers": headers})
                await send({"type": "http.response.body", "body": self._body})
            elif not replaced:  # the SDK's own text is dropped
                await send(message)

        await self.app(scope, receive, sending)


class _JsonMediaType:
    """POSTs on the MCP path must say `Content-Type: application/json`. The SDK compared the
    media type case-sensitively (`Application/JSON` got 415, though RFC 9110 8.3.1 makes it
    case-insensitive) and answered `text/plain` or none with a plain-text 400 no JSON-RPC
    client can read. Here the media type is compared as the RFC says, handed to the SDK in the
    form it expects, and anything else gets the SDK's own 415 as JSON-RPC."""

    def __init__(self, app: ASGIApp, path: str) -> None:
        self.app = app
        self._path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self._path:
            await self.app(scope, receive, send)
            return
        # The first header, as Starlette's `Headers.get` (and so the SDK) reads it.
        value = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
        if not value.startswith(b"application/json"):  # what every client sends goes straight on
            media_type, _, rest = value.partition(b";")
            if media_type.strip().lower() != b"application/json":
                shown = value[:100].decode("latin-1")
                message = f"Unsupported Media Type: Content-Type must be application/json, not {shown!r}"
                body = orjson.dumps(
                    {"jsonrpc": "2.0", "id": None, "error": {"code": INVALID_REQUEST, "message": message}}
                )
                headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
                await send({"type": "http.response.start", "status": 415, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            normal = b"application/json" + (b";" + rest if rest else b"")
            kept = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": [*kept, (b"content-type", normal)]}
        await self.app(scope, receive, send)


class _SchemaCaller:
    """Holds the caller's token in `_SCHEMA_CALLER` while the SDK serves a request."""

    def __init__(self, app: ASGIApp, default_token: str | None) -> None:
        self.app = app
        self._default_token = default_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The first header, as Starlette's `Headers.get` (and so the SDK) reads it.
        raw = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        held = _SCHEMA_CALLER.set(bearer_token(raw.decode("latin-1") if raw else None, self._default_token))
        try:
            await self.app(scope, receive, send)
        finally:
            _SCHEMA_CALLER.reset(held)


def _schema_by_name(
    lookup: Callable[[str, str | None], Mapping[str, Any] | None] | None, default_token: str | None
) -> Callable[[str], Mapping[str, Any] | None] | None:
    if lookup is None:
        return None
    return lambda name: lookup(name, _SCHEMA_CALLER.get(default_token))


def _caller_token(ctx: ServerRequestContext[Any, Any], default: str | None) -> str | None:
    request = ctx.request
    header = request.headers.get("authorization") if isinstance(request, Request) else None
    return bearer_token(header, default)


def _all_finite(value: Any) -> bool:
    """No NaN or infinity anywhere in a parsed JSON value."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_all_finite(v) for v in value)
    return True


def _approval_id(params: CallToolRequestParams) -> str:
    meta = params.meta
    value = meta.get(APPROVAL_META_KEY) if meta else None
    return value if isinstance(value, str) else ""


def _capabilities_json(ctx: ServerRequestContext[Any, Any]) -> bytes:
    caps = ctx.session.client_capabilities
    if caps is None:
        return b""
    return caps.model_dump_json(by_alias=True, exclude_none=True).encode()


def _complete(ctx: ServerRequestContext[Any, Any], result: dict[str, Any]) -> dict[str, Any]:
    """2026-07-28 results carry `resultType`; the handshake versions have no such field."""
    if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
        result["resultType"] = "complete"
    return result


class _HubServer(Server[Any]):
    """The SDK server, announcing `tools.listChanged` to handshake-era clients (see `changes.py`)."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        return super().create_initialization_options(
            notification_options or NotificationOptions(tools_changed=True),
            experimental_capabilities,
            extensions,
        )


def build_mcp_server(hub: ToolHubClient, options: BridgeOptions) -> Server[Any]:
    default_token = options.default_token

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: PaginatedRequestParams | None
    ) -> dict[str, Any]:
        cursor = (params.cursor if params else None) or ""
        try:
            page = await hub.list_tools(_caller_token(ctx, default_token), cursor)
        except grpc.aio.AioRpcError as exc:
            raise mcp_error_from_grpc(exc) from None
        out: dict[str, Any] = {"tools": [tool_to_mcp(t) for t in page.tools]}
        if page.next_cursor:
            out["nextCursor"] = page.next_cursor
        return _complete(ctx, out)

    async def call_tool(ctx: ServerRequestContext[Any, Any], params: CallToolRequestParams) -> dict[str, Any]:
        raw_meta = ctx.params.get("_meta") if isinstance(ctx.params, Mapping) else None
        if isinstance(raw_meta, Mapping) and isinstance(raw_meta.get("progressToken"), bool):
            # The SDK's model reads true as the integer 1 (bool is an int in Python).
            raise MCPError(
                code=INVALID_PARAMS,
                message="invalid params: _meta.progressToken must be a string or an integer, not a boolean",
            )
        if params.arguments and nested_deeper_than(params.arguments):
            raise MCPError(
                code=INVALID_PARAMS,
                message=f"invalid params: arguments are nested more than {MAX_ARGUMENT_DEPTH} levels deep",
            )
        if params.arguments and not _all_finite(params.arguments):
            # The SDK's parser reads NaN and Infinity (not JSON) and 1e999 (as inf); orjson would send null.
            raise MCPError(
                code=INVALID_PARAMS,
                message="invalid params: a number is NaN, Infinity or beyond a double's range (1e999)",
            )
        # The SDK's JSON parser accepts what cannot be passed on: a lone surrogate ("\ud800") has
        # no UTF-8 form, an integer beyond 64 bits no exact JSON one here. Each part is built
        # on its own so the error names the part at fault.
        parts: dict[str, bytes] = {}
        builders: tuple[tuple[str, Callable[[], bytes]], ...] = (
            ("arguments", lambda: orjson.dumps(params.arguments) if params.arguments else b""),
            ("name", lambda: params.name.encode()),
            ("client capabilities", lambda: _capabilities_json(ctx)),
            ("request id", lambda: str(ctx.request_id).encode() if ctx.request_id is not None else b""),
            ("approval id", lambda: _approval_id(params).encode()),
        )
        for part, build in builders:
            try:
                parts[part] = build()
            except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
                raise MCPError(
                    code=INVALID_PARAMS, message=f"invalid params: cannot pass the {part} on as JSON: {exc}"
                ) from None
        request = pb.CallToolRequest(
            name=params.name,
            arguments_json=parts["arguments"],
            client_capabilities_json=parts["client capabilities"],
            request_id=str(ctx.request_id) if ctx.request_id is not None else "",
            approval_id=_approval_id(params),
            call_key=call_key(),
        )
        token = _caller_token(ctx, default_token)
        meta = ctx.meta
        wants_progress = bool(meta) and meta.get("progress_token") is not None  # type: ignore[union-attr]

        async def tell_hub(key: str, reason: str) -> None:
            await hub.cancel_call(token, key, reason)

        try:
            if not wants_progress:
                result = await cancellable(ctx, hub.call_tool(token, request), request.call_key, tell_hub)
                return _complete(ctx, result_to_mcp(result))
            relayed = await cancellable(
                ctx, _relay_stream(ctx, hub, token, request), request.call_key, tell_hub
            )
            return _complete(ctx, relayed)
        except grpc.aio.AioRpcError as exc:
            raise mcp_error_from_grpc(exc) from None

    changes = ToolChanges(
        hub,
        lambda ctx: _caller_token(ctx, default_token),
        # The SDK's live sessions by ID (pinned: mcp 2.3), as `SessionDoor` reads them.
        ending_http_sessions(lambda: server.session_manager._server_instances),
    )
    server: Server[Any] = _HubServer(
        options.name,
        version=_VERSION,
        title="mcphub",
        instructions=options.instructions,
        # The list depends on the caller's token and changes at run time: never shared, never fresh.
        cache_hints={"tools/list": CacheHint(ttl_ms=0, scope="private")},
        # The runtime accepts wire dicts (HandlerResult); pydantic models per call would only cost time.
        on_list_tools=list_tools,  # type: ignore[arg-type]
        on_call_tool=call_tool,  # type: ignore[arg-type]
        get_tool_input_schema=_schema_by_name(options.tool_input_schema, default_token),
        on_subscriptions_listen=changes.on_listen,
    )
    server.add_notification_handler("notifications/initialized", NotificationParams, changes.on_initialized)
    server.middleware += [PreciseErrors(), CancelReasons()]
    return server


async def _relay_stream(
    ctx: ServerRequestContext[Any, Any], hub: ToolHubClient, token: str | None, request: pb.CallToolRequest
) -> dict[str, Any]:
    """Stream the call, turning progress and approval events into `notifications/progress`."""
    last: float | None = None
    async for event in hub.stream_call_tool(token, request):
        kind = event.WhichOneof("event")
        if kind == "result":
            return result_to_mcp(event.result)
        if kind == "progress":
            p = event.progress
            last = _increasing(p.progress, last)
            total = p.total if p.HasField("total") else None
            await ctx.session.report_progress(last, total, p.message or None)
        elif kind == "approval":
            a = event.approval
            state = _APPROVAL_STATES.get(a.state, "unknown")
            text = f"approval {a.approval_id} {state}"
            if a.reason:
                text += f": {a.reason}"
            if a.state == pb.ApprovalState.PENDING and a.how_to_approve:
                text += f" (an approver runs: {a.how_to_approve})"
            last = _increasing(0.0, last)
            await ctx.session.report_progress(last, None, text)
    raise grpc.aio.AioRpcError(
        grpc.StatusCode.INTERNAL,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details="the hub ended the stream without a result",
    )


def _increasing(value: float, sent: float | None) -> float:
    """The value to send after `sent`: MCP requires each progress notification's value to be
    greater than the last. An approval event (which has none) or a tool repeating itself gets a
    step too small to show past the last value sent."""
    if sent is None or value > sent:
        return value
    return sent + max(abs(sent), 1.0) * 1e-6


class _DisconnectsAreNotErrors(logging.Filter):
    """The SDK logs a client that hangs up mid-body (handshake era) as an ERROR with a traceback;
    a client leaving is not a server fault, so such records go out at DEBUG, without it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and type(record.exc_info[1]).__name__ == "ClientDisconnect":
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.exc_info = record.exc_text = None
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


_DISCONNECT_FILTER = _DisconnectsAreNotErrors()


class _SessionChatter(logging.Filter):
    """The SDK logs every session it opens, ends or does not know at INFO, with its ID: one line
    per session (a client that reconnects often fills the log), and the ID is what a 2025 client
    presents to use the session. Such records go out at DEBUG; no record shows an ID in full."""

    _ID = re.compile(r"[0-9a-fA-F]{32}")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        message = record.getMessage()
        if self._ID.search(message):
            record.msg, record.args = self._ID.sub(lambda m: m.group()[:4] + "...", message), None
        return logging.getLogger(record.name).isEnabledFor(record.levelno)


_SESSION_FILTER = _SessionChatter()
_SESSION_LOGGERS = ("mcp.server.streamable_http_manager", "mcp.server.streamable_http")


def mcp_app(server: Server[Any], options: BridgeOptions, hub: ToolHubClient | None = None) -> ASGIApp:
    """The SDK's Streamable HTTP app at `/mcp`, with the caller's token held for schema lookups.

    With `hub` (the one `server` forwards to) and `options.express`, plain stateless
    `tools/call` POSTs take the express lane; everything else is the SDK's.
    """
    sdk_logger = logging.getLogger("mcp.server.streamable_http")
    if _DISCONNECT_FILTER not in sdk_logger.filters:
        sdk_logger.addFilter(_DISCONNECT_FILTER)
    for name in _SESSION_LOGGERS:
        if _SESSION_FILTER not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(_SESSION_FILTER)
    app: ASGIApp = server.streamable_http_app(
        streamable_http_path="/mcp",
        # `BridgeApp` checks Host/Origin for every route and bind address; the
        # SDK's own check would repeat the same work on /mcp only.
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        max_request_body_size=options.max_body_bytes,
    )
    app = _JsonMediaType(_JsonTooLarge(app, options.max_body_bytes), "/mcp")
    if options.tool_input_schema is not None:
        app = _SchemaCaller(app, options.default_token)
    if options.authenticate is not None:
        manager = server.session_manager
        app = SessionDoor(
            app,
            options.authenticate,
            # The SDK's live sessions by ID; it has no public view of them (pinned: mcp 2.3).
            lambda: manager._server_instances,
            path="/mcp",
            default_token=options.default_token,
            max_sessions=options.max_sessions_per_principal,
            max_body_bytes=options.max_body_bytes,
            refusing=options.refusing,
        )
    if hub is not None and options.express:
        app = ExpressLane(
            app,
            server,
            hub,
            path="/mcp",
            max_body_bytes=options.max_body_bytes,
            default_token=options.default_token,
            tool_input_schema=options.tool_input_schema,
            keepalive_s=options.keepalive_s,
            challenge=options.authenticate is not None,
        )
    return app


def build_asgi_app(
    server: Server[Any], policy: OriginPolicy, options: BridgeOptions, hub: ToolHubClient | None = None
) -> BridgeApp:
    """`/mcp` (see `mcp_app`) and `/healthz`, behind the Host/Origin guard, for a server built
    already (`bridge.app.bridge_app` builds it on the first request instead)."""
    return BridgeApp(lambda: mcp_app(server, options, hub), policy)

"""The express lane: a plain stateless `tools/call` answered without the SDK's per-request machinery.

Most traffic on the 2026-07-28 wire is one shape: a POST carrying one `tools/call`, no
progress token, answered by one JSON body. The SDK serves it through Starlette's router
and middleware, a session manager, pydantic models for the envelope and the params, a
runner with its context objects and a sibling task with a memory stream (the bridge
runs the SDK's SSE mode, so progress can stream). That is most of the bridge's own cost
per call: more than the hub's whole pipeline.

The lane takes a request only when every check the SDK would make passes, and it makes
them with the SDK's own functions (`check_accept_headers`, the inbound ladder
`classify_inbound_request`, `validate_mcp_param_headers`, the per-version surface
validation of the params and of the result, `modern_error_data`, the HTTP status
table), so the protocol still comes from the reference implementation. Anything else
(another method, another era, a progress token, a body it cannot read as plain JSON,
a header any rung rejects) goes to the SDK untouched, with the body replayed, and the
SDK answers it, errors included. `tests/bridge/test_express.py` sends the same requests
down both paths and compares the answers.

Behaviour kept from the SDK's SSE mode: a client that disconnects cancels the call,
and a call still silent after 15 s commits to `text/event-stream` and sends keepalive
comments until its result, so a proxy's idle timeout does not cut it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import grpc
import orjson
from mcp.server.lowlevel.server import Server
from mcp.server.runner import modern_error_data
from mcp.server.streamable_http import check_accept_headers
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    MCP_PARAM_HEADER_PREFIX,
    InboundModernRoute,
    classify_inbound_request,
    validate_mcp_param_headers,
)
from mcp_types import CLIENT_CAPABILITIES_META_KEY, INTERNAL_ERROR, SERVER_INFO_META_KEY, ClientCapabilities
from mcp_types import methods as spec_methods
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_local.pipeline import LONG_DIGITS, nested_deeper_than
from mcphub_proto.v1 import toolhub_pb2 as pb

from .asgibody import read_body, replay
from .door import UNAUTHENTICATED, challenge_header, too_deep
from .errors import mcp_error_from_grpc
from .hubclient import ToolHubClient
from .options import KEEPALIVE_S
from .security import bearer_token
from .translate import result_to_mcp

__all__ = ["ExpressLane"]

logger = logging.getLogger(__name__)

APPROVAL_META_KEY = "dev.mcphub/approvalId"
"""`_meta` key of a tools/call that spends an approval granted earlier for exactly this call."""

_ENVELOPE_KEYS: Final = frozenset({"jsonrpc", "id", "method", "params"})
_PARAMS_KEYS: Final = frozenset({"name", "arguments", "_meta"})
_PARAM_HEADER_PREFIX: Final = MCP_PARAM_HEADER_PREFIX.lower()
_SSE_HEADERS: Final = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),
]


class _TooDeep(Exception):
    """A request too deep for the SDK's parser: its answer (`door.too_deep`)."""

    def __init__(self, start: Message, answer: Message) -> None:
        self.start, self.answer = start, answer


class _Declined(Exception):
    """The request is not the lane's shape; the SDK answers it."""


class ExpressLane:
    """ASGI in front of the SDK's app: serves plain stateless `tools/call` POSTs on `path` itself."""

    def __init__(
        self,
        sdk_app: ASGIApp,
        server: Server[Any],
        hub: ToolHubClient,
        *,
        path: str,
        max_body_bytes: int,
        default_token: str | None,
        tool_input_schema: Callable[[str, str | None], Mapping[str, Any] | None] | None,
        keepalive_s: float = KEEPALIVE_S,
        challenge: bool = False,
    ) -> None:
        self.sdk_app = sdk_app
        self._server = server
        self._hub = hub
        self._path = path
        self._max_body = max_body_bytes
        self._default_token = default_token
        self._schema = tool_input_schema
        """`(name, caller's token) -> input schema or None` from the hub's registry, or None: then calls whose
        `Mcp-Param-*` headers need checking go to the SDK, which lists the tools to check them."""
        self._keepalive_s = keepalive_s
        self._challenge = challenge
        """Answer UNAUTHENTICATED with 401 and a challenge, as `SessionDoor` makes the SDK's
        path do (the bridge has one when it can authenticate callers itself)."""
        self.served = 0
        """Calls this lane answered (the tests read it to know which path ran)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self._path:
            await self.sdk_app(scope, receive, send)
            return
        headers = _headers_if_plain(scope["headers"], self._max_body)
        if headers is None:
            await self.sdk_app(scope, receive, send)
            return
        body, message = await read_body(receive, self._max_body)
        if message["type"] == "http.disconnect":
            return  # the client hung up before its body was complete: nobody to answer
        try:
            call = self._accept(scope, headers, body)
        except _TooDeep as deep:
            await send(deep.start)
            await send(deep.answer)
            return
        except Exception as exc:
            if not isinstance(exc, _Declined):  # a bug here must not cost the caller an answer
                logger.exception("the express lane failed to read a request; the SDK answers it")
            await self.sdk_app(scope, replay(body, message, receive), send)
            return
        self.served += 1
        await self._answer(call, receive, send)

    def _accept(self, scope: Scope, headers: dict[str, str], body: bytes) -> _Call:
        """The call, when the SDK would serve this request as a plain tools/call; else `_Declined`."""
        try:
            decoded = orjson.loads(body)
        except orjson.JSONDecodeError:
            refusal = too_deep(body)  # deeper than orjson reads (1,024 levels): no other parser can
            if refusal is not None:
                raise _TooDeep(*refusal) from None
            raise _Declined from None
        if not isinstance(decoded, dict) or not decoded.keys() <= _ENVELOPE_KEYS:
            raise _Declined
        request_id = decoded.get("id")
        params = decoded.get("params")
        if (
            decoded.get("jsonrpc") != "2.0"
            or decoded.get("method") != "tools/call"
            or isinstance(request_id, bool)
            or not isinstance(request_id, (int, str))
            or not isinstance(params, dict)
            or not params.keys() <= _PARAMS_KEYS
        ):
            raise _Declined
        name = params.get("name")
        arguments = params.get("arguments")
        meta = params.get("_meta")
        if not isinstance(name, str) or not (arguments is None or isinstance(arguments, dict)):
            raise _Declined
        if nested_deeper_than(decoded) and (refusal := too_deep(body)) is not None:
            raise _TooDeep(*refusal)  # the SDK's parser cannot read it, and said only "Parse error"
        if nested_deeper_than(decoded) or (arguments and LONG_DIGITS.search(body)):
            # The SDK path answers deep requests (its parser's limit is lower than orjson's) and
            # integers beyond 64 bits (orjson read those as floats here): one answer per request.
            raise _Declined
        if not isinstance(meta, dict) or "progressToken" in meta:
            # Progress streams as SSE: the SDK's path, which also refuses a token that is none
            # (null, true: a progress token is a string or an integer).
            raise _Declined
        request = Request(scope)
        has_json, has_sse = check_accept_headers(request)
        if not (has_json and has_sse):
            raise _Declined
        route = classify_inbound_request(decoded, headers=headers)
        if not isinstance(route, InboundModernRoute):
            raise _Declined
        token = bearer_token(headers.get("authorization"), self._default_token)
        if arguments or any(key.startswith(_PARAM_HEADER_PREFIX) for key in headers):
            if self._schema is None:
                raise _Declined
            schema = self._schema(name, token)
            if schema is not None and validate_mcp_param_headers(schema, arguments or {}, headers):
                raise _Declined
        try:
            spec_methods.validate_client_request("tools/call", route.protocol_version, params)
            capabilities = ClientCapabilities.model_validate(meta[CLIENT_CAPABILITIES_META_KEY])
        except (KeyError, ValidationError):
            raise _Declined from None
        approval_id = meta.get(APPROVAL_META_KEY)
        capabilities_json = capabilities.model_dump_json(by_alias=True, exclude_none=True)
        return _Call(
            request_id=request_id,
            version=route.protocol_version,
            token=token,
            request=pb.CallToolRequest(
                name=name,
                arguments_json=orjson.dumps(arguments) if arguments else b"",
                client_capabilities_json=capabilities_json.encode(),
                request_id=str(request_id),
                approval_id=approval_id if isinstance(approval_id, str) else "",
            ),
        )

    async def _answer(self, call: _Call, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        watcher = _Watcher(task, receive, send, self._keepalive_s)
        watch = asyncio.create_task(watcher.run(), name="mcphub-express-watch")
        try:
            status, payload, extra = await self._run(call)
        except asyncio.CancelledError:
            watch.cancel()
            if watcher.disconnected and task.uncancel() == 0:
                return  # the client went away: the call is cancelled, nobody is left to answer
            raise
        # Not awaited: from here on the watcher can only be inside a send whose bytes are
        # already written (uvicorn writes before it waits), so this task's sends follow its.
        watch.cancel()
        if watcher.disconnected:  # it went away as the answer came: nobody is left to answer
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0)  # the cancel the watcher sent lands here, and is taken back
            task.uncancel()
            return
        if watcher.streaming:
            event = b"event: message\r\ndata: " + payload + b"\r\n\r\n"
            await send({"type": "http.response.body", "body": event, "more_body": False})
            return
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload)), *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload, "more_body": False})

    async def _run(self, call: _Call) -> tuple[int, bytes, tuple[tuple[bytes, bytes], ...]]:
        """The JSON-RPC reply to the call, as the SDK's runner would shape it, its HTTP status,
        and headers beyond the content's."""
        try:
            try:
                answer = await self._hub.call_tool(call.token, call.request)
            except grpc.aio.AioRpcError as exc:
                raise mcp_error_from_grpc(exc) from None
            result = result_to_mcp(answer)
            result["resultType"] = "complete"
            try:
                result = spec_methods.serialize_server_result("tools/call", call.version, result)
            except ValidationError:
                # As the SDK's runner: a server bug, logged here; pydantic's text would echo the result.
                logger.exception("tools/call returned an invalid result")
                raise MCPError(code=INTERNAL_ERROR, message="Handler returned an invalid result") from None
        except Exception as exc:  # the SDK's ladder decides what reaches the wire
            error = modern_error_data(exc)
            wire = error.model_dump(mode="json", exclude_none=True)
            body = {"jsonrpc": "2.0", "id": call.request_id, "error": wire}
            if error.code == UNAUTHENTICATED and self._challenge:
                challenge = challenge_header(call.token is not None, error.message)
                return 401, orjson.dumps(body), ((b"www-authenticate", challenge),)
            return ERROR_CODE_HTTP_STATUS.get(error.code, 200), orjson.dumps(body), ()
        meta = result.get("_meta")
        stamp = self._server.server_info_stamp
        if meta is None:
            result["_meta"] = {SERVER_INFO_META_KEY: stamp}
        elif isinstance(meta, dict) and meta.get(SERVER_INFO_META_KEY) is None:
            result["_meta"] = {**meta, SERVER_INFO_META_KEY: stamp}
        return 200, orjson.dumps({"jsonrpc": "2.0", "id": call.request_id, "result": result}), ()


@dataclass(frozen=True, slots=True)
class _Call:
    request_id: int | str
    version: str
    token: str | None
    request: pb.CallToolRequest


class _Watcher:
    """Beside a running call: cancels it when the client disconnects, keeps a long one alive with SSE."""

    def __init__(self, task: asyncio.Task[Any], receive: Receive, send: Send, keepalive_s: float) -> None:
        self._task = task
        self._keepalive_s = keepalive_s
        self._receive = receive
        self._send = send
        self.disconnected = False
        self.streaming = False

    async def run(self) -> None:
        while True:
            try:
                # Cancelling the server's receive() loses nothing: it only waits for an event.
                async with asyncio.timeout(self._keepalive_s):
                    message = await self._receive()
            except TimeoutError:
                if not self.streaming:
                    self.streaming = True
                    await self._send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
                await self._send({"type": "http.response.body", "body": b": ping\r\n\r\n", "more_body": True})
                continue
            if message["type"] == "http.disconnect":
                self.disconnected = True
                self._task.cancel()
                return


def _headers_if_plain(raw: list[tuple[bytes, bytes]], max_body: int) -> dict[str, str] | None:
    """The headers by lower-case name, or None when the request is not one the lane may read.

    The lane reads only a modern-era JSON body of a declared length within the limit;
    anything else the SDK handles (and refuses with its own precise error when it must).
    """
    headers: dict[str, str] = {}
    for key, value in raw:
        name = key.decode("latin-1")
        if name in headers:
            return None  # which copy counts is the SDK's call (and a duplicated Mcp-* header its error)
        headers[name] = value.decode("latin-1")
    if headers.get("mcp-protocol-version") not in MODERN_PROTOCOL_VERSIONS:
        return None
    content_type = headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        return None
    length = headers.get("content-length", "")
    if not length.isdigit() or int(length) > max_body or "transfer-encoding" in headers:
        return None
    return headers

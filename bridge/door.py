"""Who may open a handshake-era MCP session, whose it is, and how many one principal may hold.

A 2025-era client (`initialize`, then `Mcp-Session-Id` on every request) makes the SDK keep a
session: a transport, a task and its streams, for up to 30 idle minutes. Before this door the
SDK opened one for any `initialize`, with or without a token; the hub only saw the token on the
first `tools/list` or `tools/call`. So anyone who could reach the port could open the SDK's
10,000 sessions and lock every client out for half an hour. Now:

- A handshake-era request must name a principal the hub knows (the hub's own authenticator,
  called in process: a SHA-256 and a dict look-up). If it does not, it gets HTTP 401 with
  `WWW-Authenticate: Bearer` and a JSON-RPC error (-32030, the hub's words), before the SDK
  holds anything for it.
- The session is bound to that principal (the SDK compares `scope["user"]` on every request):
  another principal's token with its ID gets the SDK's 404, as if it did not exist.
- One principal holds at most `max_sessions` sessions. Opening one more ends that principal's
  least recently used session that has no request in flight (clients that hold a GET stream,
  the live ones, always do); if all are busy, HTTP 429. A principal that floods only pushes
  out its own abandoned sessions. A session whose token a reload revoked or rotated holds no
  place: it is ended when its tool-list watch ends (`bridge/changes.py`), or here once its
  principal needs the room. An initialize holds its place from the moment it is
  admitted (the SDK names its session only when it answers), so initializes sent together
  cannot pass the cap; a POST without a session ID that is not an initialize ends nothing.
  To tell, the door reads the body (no further than the bridge's body limit, past which the
  SDK answers 413) and parses it as the SDK does; a session the SDK opens is counted anyway.
- A request whose POST closes before its answer is cancelled, as if its client had sent
  `notifications/cancelled` (the SDK does that itself only on the stateless wire; see `_cancel`).

2026-07-28 requests keep no session: they go straight on, and the hub authenticates (and audits)
each call, so a refused call is on record there. One without a principal still gets HTTP 401
and the challenge, as MCP's authorization asks (it is what makes a client send credentials): a
`tools/call` goes on to the hub, which audits and refuses it, and its answer's status becomes 401;
anything else is refused here, since the hub would not record it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import pydantic_core
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp_types import InitializeRequestParams, jsonrpc_message_adapter
from mcp_types import methods as spec_methods
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION, MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_local.errors import Unauthenticated
from mcp_local.pipeline import MAX_ARGUMENT_DEPTH, nested_deeper_than
from mcp_local.principals import AMBIGUOUS_AUTHORIZATION, Principal, bearer_token

from .asgibody import read_body, replay
from .errors import not_a_message
from .options import MAX_BODY_BYTES, MAX_SESSIONS_PER_PRINCIPAL

__all__ = ["BATCH_REFUSED", "UNAUTHENTICATED", "SessionDoor", "challenge_header", "too_deep"]

logger = logging.getLogger(__name__)

UNAUTHENTICATED = -32030
"""The JSON-RPC code the bridge gives gRPC's UNAUTHENTICATED (`bridge/errors.py`)."""
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602
PARSE_ERROR = -32700
INVALID_PARAMS = -32602
UNAVAILABLE = -32033
"""The JSON-RPC code the bridge gives UNAVAILABLE."""
TOO_MANY_SESSIONS = -32032
"""The JSON-RPC code the bridge gives RESOURCE_EXHAUSTED."""
UNSUPPORTED_PROTOCOL_VERSION = -32022
"""The SDK's code for a protocol version it does not serve (`mcp_types.UNSUPPORTED_PROTOCOL_VERSION`)."""
SUPPORTED_VERSIONS = (*HANDSHAKE_PROTOCOL_VERSIONS, *MODERN_PROTOCOL_VERSIONS)
BATCH_REFUSED = (
    "Invalid Request: this server takes no JSON-RPC batches, in any protocol version (MCP has none "
    "since 2025-06-18; in 2024-11-05 and 2025-03-26 sessions too they are refused); send one message "
    "per request"
)
"""The answer to a batch, over HTTP and stdio alike. The SDK parses one message per request; a
batch would have to be split here and its answers gathered into one, for two old revisions."""

_REPORT_EVERY_S = 60.0
_CANCEL_TIMEOUT_S = 10.0  # delivering the cancel of a request whose client closed its POST
_SESSION_HEADER = b"mcp-session-id"
_VERSION_HEADER = b"mcp-protocol-version"


def _refusal(
    status: int,
    code: int,
    message: str,
    extra: tuple[tuple[bytes, bytes], ...] = (),
    request_id: int | str | None = None,
) -> tuple[Message, Message]:
    body = orjson.dumps({"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}})
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *extra,
        ],
    }
    return start, {"type": "http.response.body", "body": body}


async def _refuse_version(send: Send, requested: str) -> None:
    """HTTP 400, as 2025-06-18 "Protocol Version Header" asks, in the SDK's words and code."""
    body = orjson.dumps(
        {
            "jsonrpc": "2.0",
            "id": None,
            "error": {
                "code": UNSUPPORTED_PROTOCOL_VERSION,
                "message": f"Unsupported protocol version {requested[:100]!r} in the MCP-Protocol-Version "
                f"header; supported: {', '.join(SUPPORTED_VERSIONS)}",
                "data": {"supported": list(SUPPORTED_VERSIONS), "requested": requested[:100]},
            },
        }
    )
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_EMPTY_REFUSALS = {
    405: "Method Not Allowed: the stateless protocol (2026-07-28) takes POST only",
    406: "Not Acceptable: Client must accept both application/json and text/event-stream",
}


def _with_bodies(send: Send) -> Send:
    """`send` for the SDK's stateless wire, which answers a GET or DELETE (405) and a POST whose
    `Accept` lacks a type (406) with no body at all: those get a JSON-RPC error saying why, as
    the handshake era's refusals do."""
    held: Message | None = None

    async def sending(message: Message) -> None:
        nonlocal held
        if message["type"] == "http.response.start" and message["status"] in _EMPTY_REFUSALS:
            held = message
            return
        if held is not None:
            start, held = held, None
            if (
                message["type"] == "http.response.body"
                and not message.get("body")
                and not message.get("more_body", False)
            ):
                status = start["status"]
                kept = tuple(
                    (k, v)
                    for k, v in start.get("headers", ())
                    if k.lower() not in (b"content-type", b"content-length")
                )
                refusal, answer = _refusal(status, INVALID_REQUEST, _EMPTY_REFUSALS[status], kept)
                await send(refusal)
                await send(answer)
                return
            await send(start)
        await send(message)

    return sending


def _method(scope: Scope) -> bytes | None:
    return next((value for key, value in scope["headers"] if key == b"mcp-method"), None)


def _as_unauthorized(send: Send, challenge: tuple[bytes, bytes]) -> Send:
    """`send`, with the answer's status 401 and the challenge among its headers."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "status": 401, "headers": [*message.get("headers", ()), challenge]}
        await send(message)

    return sending


def challenge_header(presented: bool, message: str) -> bytes:
    """RFC 6750 3: no error code when no credentials came; `invalid_token` when bad ones did."""
    if not presented:
        return b'Bearer realm="mcphub"'
    description = message.replace("\\", "").replace('"', "'")
    return f'Bearer realm="mcphub", error="invalid_token", error_description="{description}"'.encode()


class _Sessions:
    """One principal's open sessions, least recently used first, with their requests in flight."""

    __slots__ = ("ended", "in_flight", "opening", "reported_at", "requests", "tokens")

    def __init__(self) -> None:
        self.in_flight: OrderedDict[str, int] = OrderedDict()
        self.requests: dict[str, set[str]] = {}
        self.tokens: dict[str, str | None] = {}
        """By session, the token its last request came with: one a reload revoked or rotated
        frees the session's place (`SessionDoor._make_room`)."""
        """By session, the ids (as text) of its requests in flight; a session with none has no entry."""
        self.opening = 0
        """Initializes admitted and not yet answered: each holds a place under the cap, since
        the session it opens is known here only when the SDK's answer starts."""
        self.ended = 0
        """Sessions ended to make room since the last log line about it."""
        self.reported_at = -math.inf


class _NoteSession:
    """`send` for a POST without a session ID: counts the session the SDK's answer names (its
    place passes from the reservation, if the request held one, to the session)."""

    __slots__ = ("held", "reserved", "send", "token")

    def __init__(self, held: _Sessions, send: Send, reserved: bool, token: str | None) -> None:
        self.held, self.send, self.reserved, self.token = held, send, reserved, token

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] < 400:
            for key, value in message.get("headers", ()):
                if key.lower() == _SESSION_HEADER:
                    session_id = value.decode("latin-1")
                    self.held.in_flight[session_id] = 0
                    self.held.tokens[session_id] = self.token
                    if self.reserved:
                        self.held.opening -= 1
                        self.reserved = False
                    break
        elif message["type"] == "http.response.start":
            # The SDK names a session in its refusal of a request without one ("Missing session
            # ID") that was never opened: a client that took it up got 404.
            headers = message.get("headers", ())
            if any(key.lower() == _SESSION_HEADER for key, _ in headers):
                kept = [(k, v) for k, v in headers if k.lower() != _SESSION_HEADER]
                message = {**message, "headers": kept}
        await self.send(message)


class SessionDoor:
    """ASGI wrapper in front of the SDK's Streamable HTTP app (see the module docstring).

    `authenticate` is the hub's (or sidecar's) authenticator; `default_token` stands in for a
    request without `Authorization`; `open_sessions` gives the SDK's live sessions by ID (its
    transports: `is_terminated`, `terminate()`), so ended ones are forgotten here and an
    evicted one is ended there.
    """

    def __init__(
        self,
        app: ASGIApp,
        authenticate: Callable[[str | None], Principal],
        open_sessions: Callable[[], Mapping[str, Any]],
        *,
        path: str = "/mcp",
        default_token: str | None = None,
        max_sessions: int = MAX_SESSIONS_PER_PRINCIPAL,
        max_body_bytes: int = MAX_BODY_BYTES,
        refusing: Callable[[], str | None] | None = None,
    ) -> None:
        """`refusing`: why the server takes no calls now (draining for a shutdown), or None."""
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.app = app
        self._authenticate = authenticate
        self._open_sessions = open_sessions
        self._path = path
        self._default_token = default_token
        self._max_sessions = max_sessions
        self._max_body = max_body_bytes
        self._refusing = refusing
        self._users: dict[str, AuthenticatedUser] = {}
        self._cancelling: set[asyncio.Task[None]] = set()
        self._held: dict[str, _Sessions] = {}
        """By principal name, as the SDK binds sessions: a reload of the hub's principals makes new
        `Principal` objects, and the sessions opened before it are still theirs."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self._path:
            await self.app(scope, receive, send)
            return
        authorization = version = session_id = None
        credentials = 0
        for key, value in scope["headers"]:
            # The first of each, as Starlette's `Headers.get` (and so the SDK) reads it.
            if key == b"authorization":
                credentials += 1
                authorization = authorization or value
            elif key == _VERSION_HEADER and version is None:
                version = value
            elif key == _SESSION_HEADER and session_id is None:
                session_id = value
        if credentials > 1:
            # Which one named the caller would depend on their order. Everything behind the door
            # (the express lane, the SDK, the hub, which audits a call) reads this one instead.
            authorization = AMBIGUOUS_AUTHORIZATION.encode()
            kept = [(k, v) for k, v in scope["headers"] if k != b"authorization"]
            scope = {**scope, "headers": [*kept, (b"authorization", authorization)]}
        stateless = version is not None and version.decode("latin-1") not in HANDSHAKE_PROTOCOL_VERSIONS
        try:
            token = bearer_token(authorization.decode("latin-1")) if authorization else self._default_token
            principal = self._authenticate(token)
        except Unauthenticated as exc:
            presented = authorization is not None or self._default_token is not None
            challenge = (b"www-authenticate", challenge_header(presented, str(exc)))
            if stateless and _method(scope) == b"tools/call":
                await self.app(scope, receive, _as_unauthorized(send, challenge))  # the hub audits it
                return
            start, body = _refusal(401, UNAUTHENTICATED, str(exc), (challenge,))
            await send(start)
            await send(body)
            return
        unknown = version is not None and version.decode("latin-1") not in SUPPORTED_VERSIONS
        if unknown and (session_id is not None or scope["method"] != "POST"):
            # A version nobody serves, in a session or on a GET or DELETE: the SDK took it for the
            # stateless wire, and answered about `_meta` envelope keys (POST) or 405 with no body.
            # (A POST without a session is the SDK's: its ladder checks the envelope's version.)
            await _refuse_version(send, version.decode("latin-1") if version is not None else "")
            return
        if stateless:
            # The hub authenticates each call again. An empty refusal of the SDK's gets a body.
            await self.app(scope, receive, _with_bodies(send))
            return
        scope = {**scope, "user": self._user(principal)}
        if session_id is None and scope["method"] == "POST":
            screened = await self._screen(receive, send, scope)
            if screened is None:
                return
            receive, _ = screened
        if session_id is not None:
            await self._in_session(principal, token, session_id.decode("latin-1"), scope, receive, send)
        elif scope["method"] == "POST":
            await self._opening(principal, token, scope, receive, send)
        else:
            await self.app(scope, receive, send)  # the SDK answers a GET or DELETE without an ID

    async def _screen(self, receive: Receive, send: Send, scope: Scope) -> tuple[Receive, Any] | None:
        """`receive` with the body read and put back, and the message parsed from it (None when
        the body was not read or is not JSON); or None when the body is no JSON-RPC 2.0 message
        (a batch, a request with an id MCP does not allow, a wrong `jsonrpc`, `params` that are
        not an object, ...): answered here with -32600. The SDK took a batch or such a message
        for one that failed validation (-32602 and pydantic's dump of it, with a null id) and a
        request with a null or object id for a notification (202 and no answer, ever)."""
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        if declared.strip().isdigit() and int(declared) > self._max_body:
            return receive, None  # the SDK refuses it before reading any of it
        body, last = await read_body(receive, self._max_body)
        if last["type"] != "http.request":
            return None  # the client went away
        if last.get("more_body", False) or len(body) > self._max_body:
            return replay(body, last, receive), None
        try:
            message = pydantic_core.from_json(body)  # the SDK's own parser (it takes NaN, as orjson does not)
        except ValueError:
            deep = too_deep(body)
            if deep is not None:
                await send(deep[0])
                await send(deep[1])
                return None
            return replay(body, last, receive), None  # the SDK's to answer, with its parse error
        problem = _shape_problem(message)
        if problem is None:
            return replay(body, last, receive), message
        start, answer = _refusal(400, INVALID_REQUEST, problem, request_id=_valid_id(message))
        await send(start)
        await send(answer)
        return None

    def _user(self, principal: Principal) -> AuthenticatedUser:
        """What the SDK binds a session to: the principal's name (names are unique in a hub)."""
        user = self._users.get(principal.name)
        if user is None:
            access = AccessToken(token=f"principal:{principal.name}", client_id=principal.name, scopes=[])
            user = self._users[principal.name] = AuthenticatedUser(access)
        return user

    async def _in_session(
        self,
        principal: Principal,
        token: str | None,
        session_id: str,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        held = self._held.get(principal.name)
        if held is None or session_id not in held.in_flight:
            await self.app(scope, receive, send)  # not this principal's: the SDK says 404
            return
        held.tokens[session_id] = token
        if scope["method"] == "GET" and any(key == b"last-event-id" for key, _ in scope["headers"]):
            # A client resuming a stream. The bridge keeps no event store and never gave an event an
            # ID, so there is nothing to replay; the SDK, which then only returns, had the server
            # answer a plain-text 500. Replay is optional (2025-06-18 and 2025-11-25, "Resumability
            # and Redelivery": the server MAY replay), and a GET must get an SSE stream or 405: the
            # header is ignored and the client gets a fresh stream, where it hears of later changes
            # (a 4xx would leave a client that resumes without the stream for good).
            kept = [(k, v) for k, v in scope["headers"] if k != b"last-event-id"]
            scope = {**scope, "headers": kept}
        held.in_flight[session_id] += 1
        held.in_flight.move_to_end(session_id)
        request_key: str | None = None
        cancelling: list[asyncio.Task[None]] = []
        try:
            if scope["method"] == "POST":
                # Screened once counted: a session whose request is still uploading is in use.
                screened = await self._screen(receive, send, scope)
                if screened is None:
                    return
                receive, message = screened
                request_id = _valid_id(message) if isinstance(message, dict) and "method" in message else None
                if request_id is not None:
                    # The SDK files a request's answer under str(id): a second request with the
                    # id of one in flight took the first one's answer, lost its own, and left the
                    # first stream open for ever (and its session busy, so never ended).
                    ids = held.requests.setdefault(session_id, set())
                    if str(request_id) in ids:
                        await self._refuse_reused_id(send, request_id)
                        return
                    request_key = str(request_id)
                    ids.add(request_key)
                    receive, send = _answering(
                        receive,
                        send,
                        request_id,
                        lambda: _forget_id(held, session_id, request_key),
                        lambda: cancelling.append(self._cancel_soon(scope, request_id)),
                    )
            await self.app(scope, receive, send)
        finally:
            if session_id in held.in_flight:
                held.in_flight[session_id] -= 1
            if request_key is not None:
                key = request_key
                if cancelling and not cancelling[0].done():
                    # Its id stays taken until the cancel is delivered: a new request reusing it
                    # in the meantime would be the one cancelled. (After that, the SDK may still
                    # answer the cancelled request with -32800 under its id a moment later, on
                    # whichever stream holds the id then: a client must not reuse a request's id
                    # in a session, as the spec says, least of all one it has just abandoned.)
                    cancelling[0].add_done_callback(lambda _: _forget_id(held, session_id, key))
                else:
                    _forget_id(held, session_id, key)

    def _cancel_soon(self, scope: Scope, request_id: int | str) -> asyncio.Task[None]:
        """`_cancel` in a task of its own: the disconnect is seen inside the request's `receive`,
        which the SDK's own handling of the notification may wait on (awaited there, the request
        never ended and its id stayed in flight in its session)."""
        task = asyncio.get_running_loop().create_task(self._cancel(scope, request_id))
        self._cancelling.add(task)
        task.add_done_callback(self._cancelling.discard)
        return task

    async def _cancel(self, scope: Scope, request_id: int | str) -> None:
        """Cancel a request of the session named in `scope`, as its client would with
        `notifications/cancelled`: the request's POST closed before its answer. The SDK watches
        for that only on the stateless wire; in a session it ran the call on for nobody (a command
        to its timeout, holding its `max_concurrent` slot). The answer to a session's request
        comes on that POST only, and the bridge keeps no event store a client could resume it
        from, so a client that closed it has left (the 2025 revisions' "SHOULD NOT interpret a
        disconnect as cancellation" is for resumable streams)."""
        import json  # not orjson: a JSON-RPC id may be an integer past 64 bits

        session_id = next((v.decode("latin-1") for k, v in scope["headers"] if k == _SESSION_HEADER), "")
        transport = self._open_sessions().get(session_id)
        if transport is None or transport.is_terminated:
            return  # ended meanwhile (a DELETE): its calls ended with it, and the SDK would log an ERROR
        notification = {
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": {"requestId": request_id, "reason": "the client closed the connection"},
        }
        body = json.dumps(notification, separators=(",", ":")).encode()
        kept = (b"authorization", b"host", _SESSION_HEADER, _VERSION_HEADER)
        headers = [(k, v) for k, v in scope["headers"] if k in kept]
        headers += [
            (b"content-type", b"application/json"),
            (b"accept", b"application/json, text/event-stream"),
            (b"content-length", b"%d" % len(body)),
        ]
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> Message:
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            pass  # 202, for nobody

        try:
            async with asyncio.timeout(_CANCEL_TIMEOUT_S):
                await self.app({**scope, "headers": headers}, receive, send)
        except Exception:  # the session may be ending too; the call then ends with it
            logger.debug("could not cancel request %r of a client that left", request_id, exc_info=True)

    @staticmethod
    async def _refuse_reused_id(send: Send, request_id: int | str) -> None:
        # The refusal's id is null: a client matches answers by id, and this one must not
        # settle the request in flight that holds it.
        start, answer = _refusal(
            400,
            INVALID_REQUEST,
            f"Invalid Request: a request with id {orjson.dumps(request_id).decode()} is in flight in "
            "this session; a request's id must not be used twice in a session (ids are told apart "
            'by their text: 1 and "1" are the same)',
        )
        await send(start)
        await send(answer)

    async def _opening(
        self, principal: Principal, token: str | None, scope: Scope, receive: Receive, send: Send
    ) -> None:
        held = self._held.setdefault(principal.name, _Sessions())
        # Only an initialize opens a session; any other POST without an ID gets the SDK's 400
        # and must not cost the principal a session. The body is read here to tell (up to the
        # bridge's body limit: past it, the rest is left to the SDK, which answers 413), parsed
        # as the SDK parses it, and handed on unchanged.
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        if declared.strip().isdigit() and int(declared) > self._max_body:
            await self.app(scope, receive, send)  # the SDK refuses it before reading any of it
            return
        body, last = await read_body(receive, self._max_body)
        if last["type"] != "http.request":
            return  # the client went away
        complete = not last.get("more_body", False) and len(body) <= self._max_body
        receive = replay(body, last, receive)
        initialize = _initialize(body) if complete else None
        if initialize is None:
            # Whatever the door concluded, a session the SDK opens is counted.
            await self.app(scope, receive, _NoteSession(held, send, reserved=False, token=token))
            return
        problem = _initialize_problem(initialize.get("params"))
        if problem is not None:
            # The SDK answered it with an error, and an Mcp-Session-Id: a session that counted
            # under the cap (and could end idle ones) where every request got "-32602 Invalid
            # request parameters", as one never initialized.
            start, answer = _refusal(400, INVALID_PARAMS, problem, request_id=_valid_id(initialize))
            await send(start)
            await send(answer)
            return
        refusal = self._refusing() if self._refusing is not None else None
        if refusal is not None:
            # A draining server refuses every call: a session opened now would be refused
            # at its first call. Its client is told as a call is, and goes elsewhere.
            start, answer = _refusal(503, UNAVAILABLE, refusal, request_id=_valid_id(initialize))
            await send(start)
            await send(answer)
            return
        held.opening += 1  # before any await, so concurrent initializes see each other
        noting = _NoteSession(held, send, reserved=True, token=token)
        try:
            if not await self._make_room(principal, held):
                start, answer = _refusal(
                    429,
                    TOO_MANY_SESSIONS,
                    f"principal {principal.name!r} has {self._max_sessions} MCP sessions open or "
                    "opening, all in use; end one (DELETE with its Mcp-Session-Id) before opening another",
                    ((b"retry-after", b"5"),),
                )
                await send(start)
                await send(answer)
                return
            await self.app(scope, receive, noting)
        finally:
            if noting.reserved:
                held.opening -= 1

    def _still_valid(self, principal: Principal, token: str | None) -> bool:
        """Whether `token` still names `principal` (the hub's authenticator reads its current
        principals: a reload is seen at once)."""
        try:
            return self._authenticate(token).name == principal.name
        except Unauthenticated:
            return False

    @staticmethod
    def _forget_session(held: _Sessions, session_id: str) -> None:
        held.in_flight.pop(session_id, None)
        held.tokens.pop(session_id, None)

    async def _make_room(self, principal: Principal, held: _Sessions) -> bool:
        """Forget the principal's ended sessions; past the cap (open ones plus initializes
        admitted), end its least recently used idle ones. False when every one of them has a
        request in flight."""
        live = self._open_sessions()
        for ended in [sid for sid in held.in_flight if sid not in live or live[sid].is_terminated]:
            self._forget_session(held, ended)
        if len(held.in_flight) + held.opening > self._max_sessions:
            # A session whose token a reload revoked or rotated is its client's no longer (every
            # request with that token gets 401), even one holding a GET stream: it is ended, so
            # that the principal's new token is not refused for sessions nobody can use. (Its
            # tool-list watch ends it at the reload when it has one: `bridge/changes.py`.)
            for sid in [
                sid for sid in held.in_flight if not self._still_valid(principal, held.tokens.get(sid))
            ]:
                self._forget_session(held, sid)
                session = live.get(sid)
                if session is not None and not session.is_terminated:
                    logger.info("an MCP session of %r ended: its token is no longer valid", principal.name)
                    await session.terminate()
        # `opening` counts this initialize too.
        while len(held.in_flight) + held.opening > self._max_sessions:
            idle = next((sid for sid, n in held.in_flight.items() if n == 0), None)
            if idle is None:
                return False
            self._forget_session(held, idle)
            held.ended += 1
            now = time.monotonic()
            if now - held.reported_at >= _REPORT_EVERY_S:  # a flood: one line a minute, not one a session
                logger.info(
                    "principal %r is past its %d MCP sessions: its least recently used idle one was ended "
                    "(%d so far since the last such line)",
                    principal.name,
                    self._max_sessions,
                    held.ended,
                )
                held.ended, held.reported_at = 0, now
            session = self._open_sessions().get(idle)
            if session is not None:
                await session.terminate()
        return True


def _shape_problem(message: Any) -> str | None:
    """What makes `message` (parsed JSON) no MCP message of the handshake era, or None."""
    if isinstance(message, list):
        return BATCH_REFUSED
    if isinstance(message, dict) and "method" in message and "id" in message and _valid_id(message) is None:
        return "Invalid Request: a request's id must be a string or an integer (a notification has none)"
    if (
        isinstance(message, dict)
        and message.get("jsonrpc") == "2.0"
        and isinstance(message.get("method"), str)
        and isinstance(message.get("params", {}), dict)
    ):
        return None  # a request or notification, as every call is: no second look needed
    try:
        # What the SDK checks next: anything it refuses here it answered with -32602.
        jsonrpc_message_adapter.validate_python(message, by_name=False)
    except ValidationError as exc:
        return not_a_message(exc)
    return None


def too_deep(body: bytes) -> tuple[Message, Message] | None:
    """The answer to a body the SDK's parser refuses as nested too deeply (pydantic's limit is
    about 200 levels; orjson reads far deeper), or None for any other body. The SDK answered
    such a request, valid JSON, with a bare "Parse error": deep arguments are named as at 65
    levels, anything else deep says what the limit is."""
    try:
        pydantic_core.from_json(body)
    except ValueError as exc:
        if "recursion limit" not in str(exc):
            return None
    else:
        return None
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        message = None
    params = message.get("params") if isinstance(message, dict) else None
    arguments = params.get("arguments") if isinstance(params, dict) else None
    if isinstance(arguments, dict | list) and nested_deeper_than(arguments):
        code, text = (
            INVALID_PARAMS,
            f"invalid params: arguments are nested more than {MAX_ARGUMENT_DEPTH} levels deep",
        )
    else:
        code, text = PARSE_ERROR, "Parse error: the message is nested too deeply (about 200 levels at most)"
    return _refusal(400, code, text, request_id=_valid_id(message))


def _valid_id(message: Any) -> int | str | None:
    """The message's id, when it has one a request may have."""
    request_id = message.get("id") if isinstance(message, dict) else None
    return None if isinstance(request_id, bool) or not isinstance(request_id, int | str) else request_id


def _initialize(body: bytes) -> dict[str, Any] | None:
    """The message in `body` when it is an initialize."""
    # The SDK's own parser: orjson refuses NaN and Infinity, which the SDK takes, and a
    # message the door could not read was an initialize the cap never counted.
    try:
        message = pydantic_core.from_json(body)
    except ValueError:
        return None
    return message if isinstance(message, dict) and message.get("method") == "initialize" else None


def _initialize_problem(params: Any) -> str | None:
    """Why the SDK would refuse an initialize with these params, or None. The checks are its
    runner's: the params as the latest handshake version defines them (a new session's version
    until it is negotiated), then as the model it negotiates with."""
    try:
        spec_methods.validate_client_request("initialize", LATEST_HANDSHAKE_VERSION, params)
        InitializeRequestParams.model_validate(params or {}, by_name=False)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'params'}: {error['msg']}"
            for error in exc.errors()[:5]
        )
        return (
            f"Invalid params: initialize needs params with a protocolVersion (a string such as "
            f'"{LATEST_HANDSHAKE_VERSION}"), capabilities and clientInfo; {details}'
        )
    return None


def _forget_id(held: _Sessions, session_id: str, request_key: str) -> None:
    """The request's id is no longer in flight in its session (idempotent)."""
    ids = held.requests.get(session_id)
    if ids is not None:
        ids.discard(request_key)
        if not ids:
            del held.requests[session_id]


_SMALL_EVENT = 64 * 1024
"""An event up to this size whose start is not the answer's, as the SDK writes it, is parsed."""


def _holds_answer(body: bytes, answer_start: bytes, request_key: str) -> bool:
    """Whether an SSE chunk carries the answer to the request filed under `request_key`: a
    message with that id and no method (progress and server requests have one).

    The SDK writes an answer as `data: {"jsonrpc":"2.0","id":ID,"result"` (or `"error"`):
    `answer_start` is that up to the id, checked first, so that a large result is not parsed
    again here. A small event of another shape (a different SDK's field order) is parsed; a
    large one is not, and the id is then free when the stream ends, as before."""
    if b'"result"' not in body and b'"error"' not in body:
        return False  # the common case (a progress event, a keep-alive) is not looked into
    # Without splitting: a large result is neither copied nor parsed here. (Inside a JSON
    # string a quote is escaped and a line break too: no answer's start can be forged there.)
    at = body.find(b"data:")
    while at != -1:
        start = at + 5 + (body[at + 5 : at + 6] == b" ")
        after = start + len(answer_start)
        if body.startswith(answer_start, start) and body[after : after + 9] in (b',"result"', b',"error":'):
            return True
        line_end = body.find(b"\n", start)
        line_end = len(body) if line_end == -1 else line_end
        at_line_start = at == 0 or body[at - 1 : at] in (b"\n", b"\r")
        if at_line_start and line_end - start <= _SMALL_EVENT:
            try:
                message = orjson.loads(body[start:line_end].rstrip(b"\r"))
            except orjson.JSONDecodeError:
                message = None
            answer = isinstance(message, dict) and "method" not in message and message.get("id") is not None
            if answer and str(message["id"]) == request_key:
                return True
        at = body.find(b"data:", line_end)
    return False


def _answering(
    receive: Receive,
    send: Send,
    request_id: int | str,
    forget: Callable[[], None],
    cancel: Callable[[], None],
) -> tuple[Receive, Send]:
    """`receive` and `send` of a request in a session: `forget` is called just before its answer
    goes (a client that has its answer may send its next request, even with the same id, at once:
    on an SSE stream the answer is an event and the stream's last bytes come after it, while the
    client already holds the answer), and `cancel` is called when the client disconnects before
    it (the SDK's SSE response watches `receive` for that)."""
    answered = False
    request_key = str(request_id)
    # An integer id as its digits: orjson refuses one past 64 bits, which JSON-RPC allows.
    shown_id = str(request_id).encode() if isinstance(request_id, int) else orjson.dumps(request_id)
    answer_start = b'{"jsonrpc":"2.0","id":' + shown_id

    async def sending(message: Message) -> None:
        nonlocal answered
        if message["type"] == "http.response.body" and not answered:
            last = not message.get("more_body", False)
            if last or _holds_answer(message.get("body", b""), answer_start, request_key):
                answered = True
                forget()
        await send(message)

    async def receiving() -> Message:
        nonlocal answered
        message = await receive()
        if message["type"] == "http.disconnect" and not answered:
            answered = True  # once
            cancel()
        return message

    return receiving, sending

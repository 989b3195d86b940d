"""The tool model: a definition plus an async handler, and the per-call context handed to it.

A handler is `async def handler(call: ToolCall) -> ToolResult | str`. It reads
its (already validated) arguments from `call.arguments`, may report progress
and output while it runs, and stops promptly when cancelled: the runtime
cancels its task when the caller goes away or the deadline passes.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from .content import ToolResult
from .errors import ConfigError

if TYPE_CHECKING:
    from .principals import Principal

__all__ = [
    "NULL_SINK",
    "TOOL_NAME",
    "EventSink",
    "Tool",
    "ToolAnnotations",
    "ToolCall",
    "ToolHandler",
]

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
"""Tool names clients accept everywhere (the Anthropic and OpenAI rules; dots break clients)."""


class EventSink(Protocol):
    """Where a running call's events go: a stream to the caller, or nowhere."""

    async def progress(self, progress: float, total: float | None, message: str) -> None: ...

    async def output(self, stream: str, data: bytes) -> None: ...

    async def approval(
        self, approval_id: str, state: int, reason: str, expires_at_ms: int, hint: str
    ) -> None: ...


class _NullSink:
    """The sink of a unary call: events have no one to go to, so they cost nothing."""

    __slots__ = ()

    async def progress(self, progress: float, total: float | None, message: str) -> None:
        return None

    async def output(self, stream: str, data: bytes) -> None:
        return None

    async def approval(
        self, approval_id: str, state: int, reason: str, expires_at_ms: int, hint: str
    ) -> None:
        return None


NULL_SINK: EventSink = _NullSink()


@dataclass(frozen=True, slots=True)
class ToolAnnotations:
    """Hints about behaviour (MCP ToolAnnotations). None means unknown."""

    title: str = ""
    read_only: bool | None = None
    destructive: bool | None = None
    idempotent: bool | None = None
    open_world: bool | None = None


ToolHandler = Callable[["ToolCall"], Awaitable[ToolResult | str]]


@dataclass(frozen=True, slots=True)
class Tool:
    """A tool definition and its handler.

    `timeout_s` bounds one call even when the caller sets no deadline.
    """

    name: str
    description: str
    input_schema: Mapping[str, Any]
    handler: ToolHandler = field(repr=False, compare=False)
    title: str = ""
    output_schema: Mapping[str, Any] | None = None
    annotations: ToolAnnotations = ToolAnnotations()
    meta: Mapping[str, Any] | None = None
    timeout_s: float | None = None
    roles: frozenset[str] = frozenset()
    """When set, only principals with one of these roles see the tool in listings or may call it
    (on top of their tool globs)."""
    precheck: Callable[[ToolCall], str | None] | None = field(default=None, repr=False, compare=False)
    """A pure, cheap check of a call the handler would refuse before doing anything: the reason,
    or None. The gate asks nobody to approve a call its tool refuses anyway (a check can only
    refuse, never let a call past the gate)."""
    annotate: Callable[[Mapping[str, Any]], ToolAnnotations | None] | None = field(
        default=None, repr=False, compare=False
    )
    """For a tool whose risk depends on its arguments (`http_request`: the route's), the
    annotations of one call, which the gate's rules then see instead of `annotations` (the
    riskiest of the tool's calls, as listings show it); None for a call it cannot tell. Pure and
    cheap."""

    def annotations_of(self, arguments: Mapping[str, Any]) -> ToolAnnotations:
        """The annotations the gate reads for a call with `arguments`."""
        if self.annotate is not None:
            return self.annotate(arguments) or self.annotations
        return self.annotations

    def __post_init__(self) -> None:
        if not TOOL_NAME.match(self.name):
            raise ConfigError(f"tool name {self.name!r}: expected 1-64 characters of [a-zA-Z0-9_-]")
        if self.input_schema.get("type") != "object":
            raise ConfigError(f'tool {self.name!r}: input_schema must have "type": "object"')
        if self.output_schema is not None and (
            not isinstance(self.output_schema, Mapping) or self.output_schema.get("type") != "object"
        ):
            # MCP's structured content is an object: a listing carrying any other output schema is
            # one no MCP client or SDK accepts, and it takes every other tool of the list with it.
            raise ConfigError(
                f'tool {self.name!r}: output_schema must have "type": "object" (MCP structured content '
                "is a JSON object; wrap a list or a value in one)"
            )


class ToolCall:
    """One call as it travels through the dispatch pipeline, and the context its handler sees.

    Stages fill it in order (the principal after authentication, the tool after
    lookup, the arguments after validation). It is a plain mutable object with
    slots because it is created once per call on the hot path.
    """

    __slots__ = (
        "approval_id",
        "arguments",
        "arguments_json",
        "authorization",
        "call_id",
        "cancel_reason",
        "client_capabilities_json",
        "deadline",
        "logged",
        "name",
        "principal",
        "request_id",
        "result_limit",
        "sink",
        "source",
        "started",
        "tool",
    )

    def __init__(
        self,
        name: str,
        arguments_json: bytes,
        *,
        authorization: str | None = None,
        deadline: float | None = None,
        sink: EventSink = NULL_SINK,
        client_capabilities_json: bytes = b"",
        request_id: str = "",
        approval_id: str = "",
        result_limit: int | None = None,
    ) -> None:
        self.name = name
        self.arguments_json = arguments_json
        self.authorization = authorization
        """The caller's `authorization` metadata (`Bearer <token>`), until authentication consumes it."""
        self.deadline = deadline
        """Absolute event-loop time (`loop.time()`) after which the call is abandoned, or None."""
        self.sink = sink
        self.client_capabilities_json = client_capabilities_json
        self.request_id = request_id
        self.approval_id = approval_id
        """An approval granted earlier for exactly this call, to spend instead of asking again."""
        self.result_limit = result_limit
        self.cancel_reason: str | None = None
        """Set when the caller said it cancels the call (`CancelCall`): its reason, maybe empty."""
        """Bytes of content the transport can carry back (one gRPC message), or None."""
        self.principal: Principal | None = None
        self.tool: Tool | None = None
        self.source = ""
        """Where the tool comes from: `pack:<name>`, or `sandbox:<name>` (whose annotations are untrusted)."""
        self.arguments: dict[str, Any] = {}
        self.call_id = ""
        """The hub's id for this call in the audit log."""
        self.logged = False
        """Whether the `requested` record of this call is written (hub stages use it)."""
        self.started = False
        """Whether the hub's gate let the tool start: a call whose records cannot be written is
        refused before that, and only its result is withheld after (hub stages use it)."""

    def client_capabilities(self) -> dict[str, Any]:
        """The MCP capabilities the client declared (empty when it declared none or is not an MCP client)."""
        if not self.client_capabilities_json:
            return {}
        try:
            caps = orjson.loads(self.client_capabilities_json)
        except orjson.JSONDecodeError:
            return {}
        return caps if isinstance(caps, dict) else {}

    async def progress(self, progress: float, total: float | None = None, message: str = "") -> None:
        """Report progress to the caller (dropped when the caller did not stream)."""
        await self.sink.progress(progress, total, message)

    async def output(self, data: bytes | str, stream: str = "stdout") -> None:
        """Send a piece of output to the caller while the tool runs."""
        await self.sink.output(stream, data.encode() if isinstance(data, str) else data)

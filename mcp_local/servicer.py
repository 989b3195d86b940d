"""The gRPC edge: `ToolHub` served from a registry and a dispatch pipeline.

This is where `HubError` becomes a gRPC status, in one place, and the one
top-level handler that logs an unexpected exception and answers INTERNAL.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NoReturn

import grpc
import orjson
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from mcphub_proto.metadata import AUTHORIZATION, ERROR_DATA, ERROR_FROM, FROM_HUB
from mcphub_proto.v1 import toolhub_pb2 as pb
from mcphub_proto.v1 import toolhub_pb2_grpc as pb_grpc

from .announcement import MAX_MESSAGE_BYTES
from .errors import HubError
from .grpcservices import add_service
from .principals import bearer_token, first_authorization
from .reflection import add_reflection
from .service import StreamLimit, ToolService

__all__ = [
    "HealthService",
    "ToolHubServicer",
    "abort_with",
    "caller_token",
    "create_grpc_server",
    "start_grpc_server",
]

logger = logging.getLogger(__name__)

MAX_RESULT_BYTES = MAX_MESSAGE_BYTES - 64 * 1024
"""A result's content that still fits in one message with its framing and `_meta`."""


MAX_CONNECTIONS = 4096
"""gRPC connections at most, and at most a quarter of the process's open-file limit (the HTTP
server takes another quarter at most): each sandbox's sidecar holds one."""
MAX_STREAMS = 1024
"""Calls one gRPC connection carries at once."""
CLIENT_PING_INTERVAL_MS = 3_000
"""How often a client may ping (HTTP/2 keepalive) without being told `too_many_pings`: the
interval toolhub.proto documents.

gRPC's default (5 minutes) ends a connection whose client pings every 10 s about 40 s into a
silent call (one waiting on an approval or a long command) with UNAVAILABLE, which clients'
retry policies retry: a tool that is not idempotent could run twice. Well below the 10 s
clients commonly use, so that a timer firing early is never counted against them; a ping every
3 s costs the hub next to nothing (a flood of them is still refused), and lets a test show
the limit in seconds rather than minutes."""
PING_STRIKE_INTERVAL_MS = 2_000
"""Pings closer than this are counted against the client (the third one ends the connection).
Below CLIENT_PING_INTERVAL_MS: a client's timer measures from the ping it sent, or from the
acknowledgement it read, so pings of a client at exactly the documented interval arrive a
little closer together now and then, and those must not add up in a long silent call."""


def max_connections() -> int:
    """MAX_CONNECTIONS, or a quarter of the open-file limit when that is lower."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, soft // 4))


def _authorization(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    return first_authorization(v for k, v in context.invocation_metadata() or () if k == AUTHORIZATION)


def caller_token(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The bearer token of the call's metadata, or None; raises Unauthenticated when malformed."""
    return bearer_token(_authorization(context))


def _deadline(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    remaining: float | None = context.time_remaining()
    if remaining is None:
        return None
    return asyncio.get_running_loop().time() + remaining


async def abort_with(
    context: grpc.aio.ServicerContext[Any, Any],
    exc: Exception,
    where: str = "a gRPC call",
    speaker: str = "hub",
) -> NoReturn:
    """End the RPC with the status of `exc` (INTERNAL, logged, for anything that is not a HubError).

    `where` names the call in that log line: the method, and the tool it called if any.
    `speaker` is who answers (the hub, or a sidecar), whose log the INTERNAL message points to."""
    if isinstance(exc, HubError):
        data = ((ERROR_DATA, orjson.dumps(exc.data).decode()),) if exc.data else ()
        await context.abort(exc.status, exc.message, ((ERROR_FROM, FROM_HUB), *data))
    logger.error("internal error in %s", where, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, internal_error_message(speaker))
    raise AssertionError("abort returned")  # pragma: no cover


def internal_error_message(speaker: str) -> str:
    """What a caller is told of an unexpected failure: where to look (a sidecar's caller was told
    "internal error in the hub", and looked in a hub's log that never saw the call)."""
    return f"internal error in the {speaker}; the {speaker}'s log has the details"


class ToolHubServicer(pb_grpc.ToolHubServicer):
    """ToolHub over gRPC: metadata and deadlines in, `HubError` out as a status.

    `speaker`: "hub", or "sidecar" for a sidecar's own ToolHub (see `internal_error_message`)."""

    def __init__(self, service: ToolService, *, speaker: str = "hub") -> None:
        self.service = service
        self.speaker = speaker

    async def ListTools(
        self, request: pb.ListToolsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListToolsResponse:
        try:
            return self.service.list_tools(_authorization(context), request.cursor, request.page_size)
        except Exception as exc:
            await abort_with(context, exc, "ListTools", self.speaker)

    async def CallTool(
        self, request: pb.CallToolRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CallToolResult:
        try:
            return await self.service.call_tool(
                request, _authorization(context), _deadline(context), MAX_RESULT_BYTES
            )
        except Exception as exc:
            await abort_with(context, exc, f"CallTool of tool {request.name[:80]!r}", self.speaker)

    async def StreamCallTool(
        self, request: pb.CallToolRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.CallToolEvent]:
        events = self.service.stream_call_tool(
            request, _authorization(context), _deadline(context), MAX_RESULT_BYTES
        )
        try:
            async for event in events:
                yield event
        except Exception as exc:
            await abort_with(context, exc, f"StreamCallTool of tool {request.name[:80]!r}", self.speaker)
        finally:
            await events.aclose()

    async def CancelCall(
        self, request: pb.CancelCallRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CancelCallResponse:
        try:
            return self.service.cancel_call(request, _authorization(context))
        except Exception as exc:
            await abort_with(context, exc, "CancelCall")

    async def WatchTools(
        self, request: pb.WatchToolsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ToolsChanged]:
        try:
            async for changed in self.service.watch_tools(_authorization(context)):
                yield changed
        except Exception as exc:
            await abort_with(context, exc, "WatchTools", self.speaker)


class HealthService(health.aio.HealthServicer):  # type: ignore[misc]  # grpc_health is untyped
    """Standard gRPC health checking, with `List`, and `Watch` streams that `streams.close` ends.

    grpcio-health-checking's servicer left `List` (which newer health clients call) to its base,
    which logged a traceback for each call; and its `Watch` never ends, so an open one held the
    server's stop for its whole grace period."""

    def __init__(self, streams: StreamLimit | None = None) -> None:
        super().__init__()
        self.streams = streams if streams is not None else StreamLimit(None)
        self._changed: asyncio.Event | None = None

    async def _set(self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        await super()._set(service, status)
        if self._changed is not None:
            self._changed.set()  # every Watch looks again; each writes only what changed for it
            self._changed = None

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._server_status.items()
            }
        )

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        last = None
        try:
            while True:
                status = self._server_status.get(
                    request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
                )
                if status != last:
                    await context.write(health_pb2.HealthCheckResponse(status=status))
                    last = status
                if self._changed is None:
                    self._changed = asyncio.Event()
                await self.streams.wait(self._changed.wait())
        except HubError as exc:
            await abort_with(context, exc, "Health.Watch")


def create_grpc_server(
    address: str,
    servicer: ToolHubServicer,
    *,
    extra_services: Sequence[tuple[Any, Any, str]] = (),
    health_servicer: health.aio.HealthServicer | None = None,
) -> tuple[grpc.aio.Server, int, Callable[[], Awaitable[None]]]:
    """ToolHub (plus health checking and reflection) bound to `address` but not yet serving.

    Returns the server, the bound port, and the coroutine function that starts it (health
    statuses are set then). `extra_services` are `(add_to_server_fn, servicer, full_service_name)`;
    `health_servicer` replaces the standard one (the sidecar's also reports its hub link).
    Binding first lets a busy port fail before anything slow has started.
    """
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),  # a second server on a busy port must fail, not share it
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # What one client can hold (see MAX_CONNECTIONS): connections past the bound are closed
            # as they are accepted; one that has not finished its HTTP/2 handshake in 10 s, or has
            # had no call for 5 minutes, is closed (a client reconnects when it next calls); a
            # connection carries at most MAX_STREAMS calls at once (more wait in the client); and
            # a peer that vanished is found by pings within 80 s, even under a call that waits.
            # Clients may ping as well, every CLIENT_PING_INTERVAL_MS (see PING_STRIKE_INTERVAL_MS),
            # with calls or without (an idle connection is still closed after 5 minutes without a call).
            ("grpc.max_allowed_incoming_connections", max_connections()),
            ("grpc.server_handshake_timeout_ms", 10_000),
            ("grpc.max_connection_idle_ms", 300_000),
            ("grpc.max_concurrent_streams", MAX_STREAMS),
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.min_ping_interval_without_data_ms", PING_STRIKE_INTERVAL_MS),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
    )
    add_service(pb_grpc.add_ToolHubServicer_to_server, servicer, server)
    names = [pb.DESCRIPTOR.services_by_name["ToolHub"].full_name]
    for add, impl, name in extra_services:
        add_service(add, impl, server)
        names.append(name)
    health_servicer = health_servicer or HealthService()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    add_reflection(server, [*names, health.SERVICE_NAME])
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot listen for gRPC on {address}: {exc}") from exc

    async def start() -> None:
        await server.start()
        for name in ["", *names]:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    return server, port, start


async def start_grpc_server(
    address: str,
    servicer: ToolHubServicer,
    *,
    extra_services: Sequence[tuple[Any, Any, str]] = (),
    health_servicer: health.aio.HealthServicer | None = None,
) -> tuple[grpc.aio.Server, int]:
    """`create_grpc_server`, started: serving on return."""
    server, port, start = create_grpc_server(
        address, servicer, extra_services=extra_services, health_servicer=health_servicer
    )
    await start()
    return server, port

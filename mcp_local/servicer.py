"""The gRPC edge: `ToolHub` served from a registry and a dispatch pipeline.

This is where `HubError` becomes a gRPC status, in one place, and the one
top-level handler that logs an unexpected exception and answers INTERNAL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NoReturn, cast

import grpc
import orjson
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from proto.mcphub.v1 import toolhub_pb2 as pb
from proto.mcphub.v1 import toolhub_pb2_grpc as pb_grpc
from proto.metadata import AUTHORIZATION, ERROR_DATA

from .errors import HubError
from .pipeline import Pipeline
from .principals import Authenticator, bearer_token
from .registry import ToolRegistry
from .tools import ToolCall
from .wire import result_to_proto

__all__ = [
    "ToolHubServicer",
    "abort_with",
    "caller_token",
    "create_grpc_server",
    "start_grpc_server",
]

logger = logging.getLogger(__name__)

STREAM_BUFFER = 256
"""Events a streaming call may queue before the tool waits for the caller to read them."""

_END = object()
"""Put on a streaming call's event queue once its pipeline task is done."""

MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def _authorization(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == AUTHORIZATION:
            return value if isinstance(value, str) else value.decode()
    return None


def caller_token(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The bearer token of the call's metadata, or None; raises Unauthenticated when malformed."""
    return bearer_token(_authorization(context))


def _deadline(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    remaining: float | None = context.time_remaining()
    if remaining is None:
        return None
    return asyncio.get_running_loop().time() + remaining


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> NoReturn:
    """End the RPC with the status of `exc` (INTERNAL, logged, for anything that is not a HubError)."""
    if isinstance(exc, HubError):
        trailing = ((ERROR_DATA, orjson.dumps(exc.data).decode()),) if exc.data else ()
        await context.abort(exc.status, exc.message, trailing)
    logger.error("internal error in %s", context.__class__.__name__, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error in the hub; the hub's log has the details")
    raise AssertionError("abort returned")  # pragma: no cover


class _StreamSink:
    """Events of a streaming call, queued for the RPC to send.

    The queue itself is unbounded so that the end of the call can always be put in
    behind the last event (the `_END` sentinel, from a done-callback that cannot wait);
    `STREAM_BUFFER` slots bound the events a tool may have queued before it waits for
    the caller to read them.
    """

    __slots__ = ("_queue", "_slots")

    def __init__(self, queue: asyncio.Queue[pb.CallToolEvent | object]) -> None:
        self._queue = queue
        self._slots = asyncio.Semaphore(STREAM_BUFFER)

    def taken(self) -> None:
        """The RPC took one event off the queue: its slot is free again."""
        self._slots.release()

    async def _put(self, event: pb.CallToolEvent) -> None:
        await self._slots.acquire()
        self._queue.put_nowait(event)

    async def progress(self, progress: float, total: float | None, message: str) -> None:
        await self._put(
            pb.CallToolEvent(progress=pb.Progress(progress=progress, total=total, message=message))
        )

    async def output(self, stream: str, data: bytes) -> None:
        await self._put(pb.CallToolEvent(output=pb.OutputChunk(stream=stream, data=data)))

    async def approval(
        self, approval_id: str, state: int, reason: str, expires_at_ms: int, hint: str
    ) -> None:
        await self._put(
            pb.CallToolEvent(
                approval=pb.ApprovalState(
                    approval_id=approval_id,
                    state=state,  # type: ignore[arg-type]
                    reason=reason,
                    expires_at_unix_ms=expires_at_ms,
                    how_to_approve=hint,
                )
            )
        )


class ToolHubServicer(pb_grpc.ToolHubServicer):
    def __init__(self, registry: ToolRegistry, pipeline: Pipeline, authenticator: Authenticator) -> None:
        self._registry = registry
        self._pipeline = pipeline
        self._authenticate = authenticator.authenticate

    async def ListTools(
        self, request: pb.ListToolsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListToolsResponse:
        try:
            principal = self._authenticate(caller_token(context))
            page, next_cursor = self._registry.page(principal, request.cursor, request.page_size)
        except Exception as exc:
            await abort_with(context, exc)
        return pb.ListToolsResponse(
            tools=[r.proto for r in page], next_cursor=next_cursor, revision=self._registry.revision
        )

    async def CallTool(
        self, request: pb.CallToolRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CallToolResult:
        try:
            call = ToolCall(
                request.name,
                request.arguments_json,
                authorization=_authorization(context),
                deadline=_deadline(context),
                client_capabilities_json=request.client_capabilities_json,
                request_id=request.request_id,
                approval_id=request.approval_id,
            )
            result = await self._pipeline(call)
        except Exception as exc:
            await abort_with(context, exc)
        return result_to_proto(result)

    async def StreamCallTool(
        self, request: pb.CallToolRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.CallToolEvent]:
        queue: asyncio.Queue[pb.CallToolEvent | object] = asyncio.Queue()
        sink = _StreamSink(queue)
        try:
            call = ToolCall(
                request.name,
                request.arguments_json,
                authorization=_authorization(context),
                deadline=_deadline(context),
                sink=sink,
                client_capabilities_json=request.client_capabilities_json,
                request_id=request.request_id,
                approval_id=request.approval_id,
            )
        except Exception as exc:
            await abort_with(context, exc)
        task = asyncio.ensure_future(self._pipeline(call))
        # Behind the tool's last event: events come out in order, then the end.
        task.add_done_callback(lambda _: queue.put_nowait(_END))
        try:
            while (event := await queue.get()) is not _END:
                sink.taken()
                yield cast(pb.CallToolEvent, event)
            try:
                result = task.result()
            except Exception as exc:
                await abort_with(context, exc)
            yield pb.CallToolEvent(result=result_to_proto(result))
        finally:
            if not task.done():
                task.cancel()  # the caller went away: stop the tool

    async def WatchTools(
        self, request: pb.WatchToolsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ToolsChanged]:
        try:
            self._authenticate(caller_token(context))
        except Exception as exc:
            await abort_with(context, exc)
        async for revision in self._registry.watch():
            yield pb.ToolsChanged(revision=revision)


def create_grpc_server(
    address: str,
    servicer: ToolHubServicer,
    *,
    extra_services: Sequence[tuple[Any, Any, str]] = (),
) -> tuple[grpc.aio.Server, int, Callable[[], Awaitable[None]]]:
    """ToolHub (plus health checking and reflection) bound to `address` but not yet serving.

    Returns the server, the bound port, and the coroutine function that starts it (health
    statuses are set then). `extra_services` are `(add_to_server_fn, servicer, full_service_name)`.
    Binding first lets a busy port fail before anything slow has started.
    """
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),  # a second server on a busy port must fail, not share it
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
    )
    pb_grpc.add_ToolHubServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    names = [pb.DESCRIPTOR.services_by_name["ToolHub"].full_name]
    for add, impl, name in extra_services:
        add(impl, server)
        names.append(name)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
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
) -> tuple[grpc.aio.Server, int]:
    """`create_grpc_server`, started: serving on return."""
    server, port, start = create_grpc_server(address, servicer, extra_services=extra_services)
    await start()
    return server, port

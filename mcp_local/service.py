"""The ToolHub service without a transport: what ListTools, CallTool, StreamCallTool and WatchTools do.

Two edges serve it: the gRPC servicer (`servicer.py`), and `LocalHub`, the in-process client
the bridge uses when it runs inside the hub. Both raise what this raises (`HubError`), each
translating once at its edge, so a call means the same whichever way it comes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Iterator
from typing import TypeVar, cast

from mcphub_proto.v1 import toolhub_pb2 as pb

from .errors import ResourceExhausted, Unavailable
from .pipeline import Pipeline
from .principals import Authenticator, Principal, bearer_token
from .registry import ToolRegistry
from .tools import NULL_SINK, EventSink, ToolCall
from .wire import result_to_proto

__all__ = ["MAX_CANCEL_REASON_CHARS", "STREAM_BUFFER", "StreamLimit", "ToolService"]

MAX_CANCEL_REASON_CHARS = 500
"""The most of a client's cancel reason (`CancelCall`) the hub keeps."""

STREAM_BUFFER = 256
"""Events a streaming call may queue before the tool waits for the caller to read them."""

_T = TypeVar("_T")

_END = object()
"""Put on a streaming call's event queue once its pipeline task is done."""


class _StreamSink:
    """Events of a streaming call, queued for the caller to read.

    The queue itself is unbounded so that the end of the call can always be put in behind
    the last event (the `_END` sentinel, from a done-callback that cannot wait);
    `STREAM_BUFFER` slots bound the events a tool may have queued before it waits for the
    caller to read them.
    """

    __slots__ = ("_queue", "_slots")

    def __init__(self, queue: asyncio.Queue[pb.CallToolEvent | object]) -> None:
        self._queue = queue
        self._slots = asyncio.Semaphore(STREAM_BUFFER)

    def taken(self) -> None:
        """The caller took one event off the queue: its slot is free again."""
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
        approval = pb.ApprovalState(
            approval_id=approval_id,
            state=state,  # type: ignore[arg-type]
            reason=reason,
            expires_at_unix_ms=expires_at_ms,
            how_to_approve=hint,
        )
        await self._put(pb.CallToolEvent(approval=approval))


def _call(
    request: pb.CallToolRequest,
    authorization: str | None,
    deadline: float | None,
    sink: EventSink,
    result_limit: int | None,
) -> ToolCall:
    return ToolCall(
        request.name,
        request.arguments_json,
        authorization=authorization,
        deadline=deadline,
        sink=sink,
        client_capabilities_json=request.client_capabilities_json,
        request_id=request.request_id,
        approval_id=request.approval_id,
        result_limit=result_limit,
    )


class StreamLimit:
    """How many watch streams (WatchTools, WatchApprovals) one principal may hold open at once,
    and ending every watch stream (Health.Watch too) first when the server stops.

    Each costs the server memory for as long as it is open, and its token is all it takes: a
    principal that opened thousands held tens of megabytes. Counted by principal name, so a
    reload that gives a principal a new token does not give it a new allowance. None: no bound
    (the sidecar, whose callers are its own sandbox's).

    A watch never ends by itself: left open, it held a stop for the whole grace period and then
    ended with gRPC's own `Cancelling all calls`, not a status from the server. `close` ends them
    with UNAVAILABLE at once, so that their clients reconnect to another replica."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}
        self.closing: str | None = None
        self._closed: asyncio.Future[None] | None = None

    def close(self, reason: str) -> None:
        """End every watch stream waiting in `wait` (and any opened later) with Unavailable(reason)."""
        self.closing = reason
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    async def wait(self, awaitable: Awaitable[_T]) -> _T:
        """What a watch stream waits for, unless the streams are closed first: Unavailable then."""
        if self.closing is not None:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()  # never to run: closed, or Python warns that it was never awaited
            raise Unavailable(self.closing)
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(awaitable)
        try:
            await asyncio.wait((task, self._closed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if not task.cancelled() and task.done() and self.closing is None:
            return task.result()
        raise Unavailable(self.closing or "the server is shutting down")

    async def until_closed(self, events: AsyncIterator[_T]) -> AsyncGenerator[_T, None]:
        """`events`, ending with Unavailable once the streams are closed."""
        try:
            while True:
                try:
                    yield await self.wait(anext(events))
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    def enter(self, principal: Principal, what: str) -> None:
        """Count one more stream of `principal`'s; ResourceExhausted past the limit."""
        if self.limit is None:
            return
        held = self._open.get(principal.name, 0)
        if held >= self.limit:
            raise ResourceExhausted(
                f"principal {principal.name!r} already holds {held} watch streams open, the most one "
                f"principal may (max_streams_per_principal); close one before opening another {what}"
            )
        self._open[principal.name] = held + 1

    def leave(self, principal: Principal) -> None:
        if self.limit is None:
            return
        held = self._open.get(principal.name, 0) - 1
        if held > 0:
            self._open[principal.name] = held
        else:
            self._open.pop(principal.name, None)

    def held(self, name: str) -> int:
        return self._open.get(name, 0)


class ToolService:
    """A registry and a dispatch pipeline, answering the four ToolHub methods."""

    def __init__(
        self,
        registry: ToolRegistry,
        pipeline: Pipeline,
        authenticator: Authenticator,
        streams: StreamLimit | None = None,
    ) -> None:
        self.registry = registry
        self.pipeline = pipeline
        self._authenticate = authenticator.authenticate
        self.streams = streams if streams is not None else StreamLimit(None)
        self._keyed: dict[str, ToolCall] = {}
        """Calls in flight by their caller's `call_key`, for `cancel_call`."""

    @contextlib.contextmanager
    def _keyed_call(self, request: pb.CallToolRequest, call: ToolCall) -> Iterator[None]:
        key = request.call_key
        if not key or key in self._keyed:
            yield
            return
        self._keyed[key] = call
        try:
            yield
        finally:
            self._keyed.pop(key, None)

    def cancel_call(self, request: pb.CancelCallRequest, authorization: str | None) -> pb.CancelCallResponse:
        """Note why the caller cancels its call keyed `request.call_key` (see the proto)."""
        principal = self._authenticate(bearer_token(authorization))
        call = self._keyed.get(request.call_key) if request.call_key else None
        if call is not None and call.principal is not None and call.principal.name == principal.name:
            call.cancel_reason = request.reason[:MAX_CANCEL_REASON_CHARS]
        return pb.CancelCallResponse()

    def list_tools(self, authorization: str | None, cursor: str, page_size: int) -> pb.ListToolsResponse:
        principal = self._authenticate(bearer_token(authorization))
        page, next_cursor = self.registry.page(principal, cursor, page_size)
        return pb.ListToolsResponse(
            tools=[r.proto for r in page], next_cursor=next_cursor, revision=self.registry.revision
        )

    async def call_tool(
        self,
        request: pb.CallToolRequest,
        authorization: str | None,
        deadline: float | None,
        result_limit: int | None = None,
    ) -> pb.CallToolResult:
        """`result_limit`: what the caller's transport can carry back (see `ToolCall.result_limit`)."""
        call = _call(request, authorization, deadline, NULL_SINK, result_limit)
        if not request.call_key:  # most calls: no generator-based context on the hot path
            return result_to_proto(await self.pipeline(call))
        with self._keyed_call(request, call):
            return result_to_proto(await self.pipeline(call))

    async def stream_call_tool(
        self,
        request: pb.CallToolRequest,
        authorization: str | None,
        deadline: float | None,
        result_limit: int | None = None,
    ) -> AsyncGenerator[pb.CallToolEvent, None]:
        """The call's events as it runs, then its result; closing the iterator cancels the call."""
        queue: asyncio.Queue[pb.CallToolEvent | object] = asyncio.Queue()
        sink = _StreamSink(queue)
        call = _call(request, authorization, deadline, sink, result_limit)
        keyed = self._keyed_call(request, call)
        keyed.__enter__()
        task = asyncio.ensure_future(self.pipeline(call))
        task.add_done_callback(lambda _: keyed.__exit__(None, None, None))
        # Behind the tool's last event: events come out in order, then the end.
        task.add_done_callback(lambda _: queue.put_nowait(_END))
        try:
            while (event := await queue.get()) is not _END:
                sink.taken()
                yield cast(pb.CallToolEvent, event)
            yield pb.CallToolEvent(result=result_to_proto(task.result()))
        finally:
            if not task.done():
                task.cancel()  # the caller went away: stop the tool

    async def watch_tools(self, authorization: str | None) -> AsyncGenerator[pb.ToolsChanged, None]:
        token = bearer_token(authorization)
        holder = self._authenticate(token)
        self.streams.enter(holder, "WatchTools")
        try:
            told: int | None = None
            async for revision in self.streams.until_closed(self.registry.watch()):
                # Asked again at every change: a token revoked by a reload ends the watch, and
                # one whose tools a reload changed is told by the list it may now see.
                principal = self._authenticate(token)
                seen = self.registry.visible_fingerprint(principal)
                if seen != told:
                    # Only when its own list changed: not every other sandbox's coming and going.
                    told = seen
                    yield pb.ToolsChanged(revision=revision)
        finally:
            self.streams.leave(holder)

"""Clients of a ToolHub: the interface the bridge needs, and its gRPC implementation.

`HubClient` talks gRPC to a hub anywhere (the CLI, `mcphub bridge --stdio`, the sidecar's
bridge). A bridge running inside the hub gets `mcp_local.localhub.LocalHub` instead: the
same interface and errors, without the loopback hop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Protocol, TypeVar

import grpc

from mcp_local.principals import authorization_value
from mcphub_proto.metadata import AUTHORIZATION
from mcphub_proto.v1 import toolhub_pb2 as pb
from mcphub_proto.v1 import toolhub_pb2_grpc as pb_grpc

__all__ = ["HubClient", "ToolHubClient"]

MAX_MESSAGE_BYTES = 16 * 1024 * 1024

_Response = TypeVar("_Response")


def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return ((AUTHORIZATION, authorization_value(token)),) if token else ()


async def _unary(call: grpc.aio.UnaryUnaryCall[Any, _Response]) -> _Response:
    """The response of a unary call; cancelling the awaiting task cancels the call.

    Awaiting a grpc.aio unary call directly does not let a cancellation through: the cancel
    lands in grpc's own invocation task, which swallows it, and the awaiting task then gets
    a new, bare `CancelledError`. anyio does not know that exception as its cancel scope's
    (its message is gone), so it escapes the scope as if the task had been cancelled from
    outside, and a task group holding the task cancels all its other tasks. In the MCP SDK's
    dispatcher that is every request of the connection: one cancelled `tools/call` ended the
    whole stdio session. Behind a shield the cancel stays in the awaiting task, as raised.
    """
    response = asyncio.ensure_future(call)
    try:
        return await asyncio.shield(response)
    except asyncio.CancelledError:
        call.cancel()
        # Its outcome is now nobody's; taking it keeps asyncio from logging it as lost.
        response.add_done_callback(lambda done: done.cancelled() or done.exception())
        raise


class ToolHubClient(Protocol):
    """What the bridge calls. Protocol failures raise `grpc.aio.AioRpcError` (see bridge/errors.py)."""

    async def list_tools(
        self, token: str | None, cursor: str = "", page_size: int = 0
    ) -> pb.ListToolsResponse: ...

    async def call_tool(
        self, token: str | None, request: pb.CallToolRequest, timeout: float | None = None
    ) -> pb.CallToolResult: ...

    def stream_call_tool(
        self, token: str | None, request: pb.CallToolRequest, timeout: float | None = None
    ) -> AsyncIterator[pb.CallToolEvent]: ...

    def watch_tools(self, token: str | None) -> AsyncIterator[pb.ToolsChanged]: ...

    async def cancel_call(self, token: str | None, call_key: str, reason: str) -> None: ...

    async def close(self) -> None: ...


class HubClient:
    """One channel to one hub. Methods raise `grpc.aio.AioRpcError` on protocol failures."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._stub = pb_grpc.ToolHubStub(self._channel)  # type: ignore[no-untyped-call]

    async def list_tools(
        self, token: str | None, cursor: str = "", page_size: int = 0
    ) -> pb.ListToolsResponse:
        return await _unary(
            self._stub.ListTools(
                pb.ListToolsRequest(cursor=cursor, page_size=page_size), metadata=_metadata(token)
            )
        )

    async def all_tools(self, token: str | None) -> list[pb.Tool]:
        tools: list[pb.Tool] = []
        cursor = ""
        while True:
            page = await self.list_tools(token, cursor)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                return tools

    async def call_tool(
        self, token: str | None, request: pb.CallToolRequest, timeout: float | None = None
    ) -> pb.CallToolResult:
        return await _unary(self._stub.CallTool(request, metadata=_metadata(token), timeout=timeout))

    def stream_call_tool(
        self, token: str | None, request: pb.CallToolRequest, timeout: float | None = None
    ) -> AsyncIterator[pb.CallToolEvent]:
        """The call's events; the last is the result. Cancel the awaiting task to cancel the call."""
        call: AsyncIterator[pb.CallToolEvent] = self._stub.StreamCallTool(
            request, metadata=_metadata(token), timeout=timeout
        )
        return call

    async def cancel_call(self, token: str | None, call_key: str, reason: str) -> None:
        """Tell the hub why the call made with `call_key` is about to be cancelled."""
        request = pb.CancelCallRequest(call_key=call_key, reason=reason)
        await _unary(self._stub.CancelCall(request, metadata=_metadata(token), timeout=5))

    def watch_tools(self, token: str | None) -> AsyncIterator[pb.ToolsChanged]:
        call: AsyncIterator[pb.ToolsChanged] = self._stub.WatchTools(
            pb.WatchToolsRequest(), metadata=_metadata(token)
        )
        return call

    async def wait_ready(self, timeout: float) -> None:
        """Wait until the channel is connected; raises TimeoutError after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            await self._channel.channel_ready()

    async def close(self) -> None:
        await self._channel.close()

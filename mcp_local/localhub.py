"""`LocalHub`: the bridge's client of a ToolHub running in the same process, without the gRPC hop.

It answers exactly as the gRPC client does (`bridge.hubclient.HubClient`): the same messages,
and protocol failures as `grpc.aio.AioRpcError` with the status and error data the gRPC edge
would have sent, so the bridge maps them by its one table either way. Only the loopback
round trip (serialising, HTTP/2 framing, a second pass through the event loop) is saved.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from typing import TypeVar

import grpc
import orjson

from mcphub_proto.metadata import ERROR_DATA, ERROR_FROM, FROM_HUB
from mcphub_proto.v1 import toolhub_pb2 as pb

from .errors import HubError
from .principals import authorization_value
from .service import ToolService
from .servicer import internal_error_message

__all__ = ["LocalHub"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _as_rpc_error(exc: Exception, speaker: str = "hub") -> grpc.aio.AioRpcError:
    if isinstance(exc, HubError):
        data = ((ERROR_DATA, orjson.dumps(exc.data).decode()),) if exc.data else ()
        trailing = grpc.aio.Metadata((ERROR_FROM, FROM_HUB), *data)
        return grpc.aio.AioRpcError(exc.status, grpc.aio.Metadata(), trailing, details=exc.message)
    logger.error("internal error in the in-process hub client", exc_info=exc)
    return grpc.aio.AioRpcError(
        grpc.StatusCode.INTERNAL,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details=internal_error_message(speaker),
    )


async def _relayed(stream: AsyncGenerator[T, None], speaker: str) -> AsyncGenerator[T, None]:
    """`stream`'s items, its failures raised as the gRPC client would raise them."""
    try:
        async for item in stream:
            yield item
    except Exception as exc:
        raise _as_rpc_error(exc, speaker) from exc
    finally:
        await stream.aclose()


def _authorization(token: str | None) -> str | None:
    return authorization_value(token) if token else None


class LocalHub:
    """The `HubClient` interface over a `ToolService` in this process."""

    target = "in-process"

    def __init__(self, service: ToolService, *, speaker: str = "hub") -> None:
        """`speaker`: "hub", or "sidecar" in a sidecar (see `servicer.internal_error_message`)."""
        self._service = service
        self._speaker = speaker

    async def list_tools(
        self, token: str | None, cursor: str = "", page_size: int = 0
    ) -> pb.ListToolsResponse:
        try:
            return self._service.list_tools(_authorization(token), cursor, page_size)
        except Exception as exc:
            raise _as_rpc_error(exc, self._speaker) from exc

    async def call_tool(
        self, token: str | None, request: pb.CallToolRequest, timeout: float | None = None
    ) -> pb.CallToolResult:
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        try:
            return await self._service.call_tool(request, _authorization(token), deadline)
        except Exception as exc:
            raise _as_rpc_error(exc, self._speaker) from exc

    def stream_call_tool(
        self, token: str | None, request: pb.CallToolRequest, timeout: float | None = None
    ) -> AsyncGenerator[pb.CallToolEvent, None]:
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        return _relayed(
            self._service.stream_call_tool(request, _authorization(token), deadline), self._speaker
        )

    async def cancel_call(self, token: str | None, call_key: str, reason: str) -> None:
        try:
            self._service.cancel_call(
                pb.CancelCallRequest(call_key=call_key, reason=reason), _authorization(token)
            )
        except Exception as exc:
            raise _as_rpc_error(exc) from exc

    def watch_tools(self, token: str | None) -> AsyncGenerator[pb.ToolsChanged, None]:
        return _relayed(self._service.watch_tools(_authorization(token)), self._speaker)

    async def close(self) -> None:
        return None

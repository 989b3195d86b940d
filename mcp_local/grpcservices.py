"""Register generated gRPC services so that an undecodable request is INVALID_ARGUMENT, not UNKNOWN.

grpc.aio decodes a request with the handler's `request_deserializer` before any servicer
code runs. When the bytes are not a valid message (garbage, a string field holding
invalid UTF-8), protobuf raises DecodeError inside grpc, which answers UNKNOWN
("Unexpected DecodeError ...") and logs an ERROR with a traceback, for a client's
mistake. `add_service` registers a generated `add_XServicer_to_server` function's
handlers with a deserializer that turns DecodeError into a marker, and a behaviour
that answers the marker with INVALID_ARGUMENT and a sentence, before the servicer sees
it; for request streams the check runs on each message as it is read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError

__all__ = ["add_service", "guard"]


class _Undecodable:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _message(method: str, bad: _Undecodable) -> str:
    return f"{method}: the request is not a valid protobuf message ({bad.reason})"


def _safe_deserializer(decode: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return decode(data)
        except DecodeError as exc:
            return _Undecodable(str(exc))

    return deserialize


def guard(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """`handler` for `method`, answering a request its deserializer cannot decode with INVALID_ARGUMENT."""
    if handler.request_deserializer is None:  # pragma: no cover - generated handlers always have one
        return handler
    deserializer = _safe_deserializer(handler.request_deserializer)
    if handler.unary_unary is not None:
        unary_unary = handler.unary_unary

        async def guarded_unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if isinstance(request, _Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(method, request))
            return await unary_unary(request, context)

        return handler._replace(request_deserializer=deserializer, unary_unary=guarded_unary_unary)
    if handler.unary_stream is not None:
        unary_stream = handler.unary_stream

        async def guarded_unary_stream(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            if isinstance(request, _Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(method, request))
            async for response in unary_stream(request, context):
                yield response

        return handler._replace(request_deserializer=deserializer, unary_stream=guarded_unary_stream)
    stream = handler.stream_stream or handler.stream_unary

    async def checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        async for request in requests:
            if isinstance(request, _Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(method, request))
            yield request

    if handler.stream_stream is not None:

        async def guarded_stream_stream(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            async for response in stream(checked(requests, context), context):
                yield response

        return handler._replace(request_deserializer=deserializer, stream_stream=guarded_stream_stream)

    async def guarded_stream_unary(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        return await stream(checked(requests, context), context)

    return handler._replace(request_deserializer=deserializer, stream_unary=guarded_stream_unary)


class _Capture:
    """Stands in for the server while a generated `add_*_to_server` function registers."""

    def __init__(self) -> None:
        self.services: dict[str, Mapping[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the same handlers arrive through add_registered_method_handlers

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self.services[service] = handlers


def add_service(add_to_server: Callable[[Any, Any], None], servicer: Any, server: grpc.aio.Server) -> None:
    """`add_to_server(servicer, server)`, with undecodable requests refused as INVALID_ARGUMENT."""
    capture = _Capture()
    add_to_server(servicer, capture)
    if not capture.services:  # pragma: no cover - generated code from an older grpcio-tools
        raise RuntimeError(f"{add_to_server.__name__} registered no method handlers")
    for service, handlers in capture.services.items():
        guarded = {name: guard(f"/{service}/{name}", h) for name, h in handlers.items()}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, guarded),))
        server.add_registered_method_handlers(service, guarded)

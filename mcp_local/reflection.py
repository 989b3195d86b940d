"""gRPC server reflection (`grpcurl`, Postman), loaded when it is first asked for.

grpcio's reflection servicer imports protobuf's `descriptor_pb2`, about 0.4 MB resident
that nearly every hub and sidecar would carry without ever being asked. This handler
answers the same service, `grpc.reflection.v1alpha.ServerReflection`, importing that
servicer and the reflection messages on its first call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from .grpcservices import guard

__all__ = ["SERVICE_NAME", "add_reflection"]

SERVICE_NAME = "grpc.reflection.v1alpha.ServerReflection"
_METHOD = f"/{SERVICE_NAME}/ServerReflectionInfo"


def _request(data: bytes) -> Any:
    from grpc_reflection.v1alpha import reflection_pb2  # loaded by the first call

    return reflection_pb2.ServerReflectionRequest.FromString(data)


def _response(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


class _Reflection(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, service_names: Sequence[str]) -> None:
        self._names = (*service_names, SERVICE_NAME)
        self._servicer: Any = None
        # Requests that do not decode are refused as on every other service (grpcservices).
        self._handler = guard(
            _METHOD,
            grpc.stream_stream_rpc_method_handler(
                self._info, request_deserializer=_request, response_serializer=_response
            ),
        )

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self._handler if handler_call_details.method == _METHOD else None

    def _info(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if self._servicer is None:
            from grpc_reflection.v1alpha._async import ReflectionServicer

            self._servicer = ReflectionServicer(self._names)
        return self._servicer.ServerReflectionInfo(requests, context)


def add_reflection(server: grpc.aio.Server, service_names: Sequence[str]) -> None:
    """Serve reflection on `server` for `service_names` (and for reflection itself)."""
    server.add_generic_rpc_handlers((_Reflection(service_names),))

"""gRPC server reflection (`grpcurl`, Postman), loaded when it is first asked for.

grpcio's reflection servicer imports protobuf's `descriptor_pb2`, about 0.4 MB resident
that nearly every hub and sidecar would carry without ever being asked. This handler
answers the same service, `grpc.reflection.v1alpha.ServerReflection`, by importing that
servicer on its first call and passing it the decoded requests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

__all__ = ["SERVICE_NAME", "add_reflection"]

SERVICE_NAME = "grpc.reflection.v1alpha.ServerReflection"
_METHOD = f"/{SERVICE_NAME}/ServerReflectionInfo"


class _Reflection(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, service_names: Sequence[str]) -> None:
        self._names = (*service_names, SERVICE_NAME)
        self._servicer: Any = None

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if handler_call_details.method != _METHOD:
            return None
        # No (de)serializers: requests arrive as bytes, and are decoded once the module is loaded.
        return grpc.stream_stream_rpc_method_handler(self._info)

    async def _info(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        from google.protobuf.message import DecodeError
        from grpc_reflection.v1alpha import reflection_pb2
        from grpc_reflection.v1alpha._async import ReflectionServicer

        if self._servicer is None:
            self._servicer = ReflectionServicer(self._names)

        async def decoded() -> AsyncIterator[Any]:
            async for raw in requests:
                try:
                    yield reflection_pb2.ServerReflectionRequest.FromString(raw)
                except DecodeError as exc:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"ServerReflectionInfo: the request is not a valid protobuf message ({exc})",
                    )

        async for response in self._servicer.ServerReflectionInfo(decoded(), context):
            yield response.SerializeToString()


def add_reflection(server: grpc.aio.Server, service_names: Sequence[str]) -> None:
    """Serve reflection on `server` for `service_names` (and for reflection itself)."""
    server.add_generic_rpc_handlers((_Reflection(service_names),))

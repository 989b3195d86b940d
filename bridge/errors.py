"""gRPC status -> JSON-RPC error: the one table the bridge translates protocol failures by.

| gRPC status          | JSON-RPC code | meaning for an MCP client                              |
|----------------------|---------------|--------------------------------------------------------|
| INVALID_ARGUMENT     | -32602        | invalid params (bad arguments bytes, bad cursor)       |
| NOT_FOUND            | -32602        | unknown tool (the MCP spec's code for it)              |
| FAILED_PRECONDITION  | -32021        | missing required client capability (data says which)   |
| UNIMPLEMENTED        | -32601        | method not found                                       |
| DEADLINE_EXCEEDED    | -32001        | request timed out                                      |
| UNAUTHENTICATED      | -32030        | missing or unknown bearer token                        |
| PERMISSION_DENIED    | -32031        | the principal may not call this tool                   |
| RESOURCE_EXHAUSTED   | -32032        | a rate or size limit was hit                           |
| UNAVAILABLE          | -32033        | the hub cannot be reached, or says why it cannot serve |
| CANCELLED            | -32034        | the call was cancelled                                 |
| anything else        | -32603        | internal error (details stay in the hub's log)         |

Tool failures are not errors here: they arrive as results with `isError`.

Every status the hub sends itself carries `mcphub-error-from: hub` (so does one from the hub in
this process, `LocalHub`): its message goes to the client as the hub wrote it. An UNAVAILABLE
without it is gRPC's own, for a hub that cannot be reached, and gets the hint to start one: the
hub's reasons (it is stopping; its audit log cannot be written, so the call was refused, or the
tool ran and its result is withheld) must reach the agent, which acts on them.

A message that is not JSON-RPC 2.0 at all is -32600 Invalid Request on both transports, in the
words of `not_a_message` (the SDK answered it over HTTP with -32602 and pydantic's dump of it).
"""

from __future__ import annotations

from typing import Any

import grpc
import orjson
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from mcphub_proto.metadata import ERROR_DATA, ERROR_FROM, FROM_HUB

__all__ = ["STATUS_TO_JSONRPC", "mcp_error_from_grpc", "not_a_message"]

STATUS_TO_JSONRPC: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: -32602,
    grpc.StatusCode.NOT_FOUND: -32602,
    grpc.StatusCode.FAILED_PRECONDITION: -32021,
    grpc.StatusCode.UNIMPLEMENTED: -32601,
    grpc.StatusCode.DEADLINE_EXCEEDED: -32001,
    grpc.StatusCode.UNAUTHENTICATED: -32030,
    grpc.StatusCode.PERMISSION_DENIED: -32031,
    grpc.StatusCode.RESOURCE_EXHAUSTED: -32032,
    grpc.StatusCode.UNAVAILABLE: -32033,
    grpc.StatusCode.CANCELLED: -32034,
}
INTERNAL_ERROR = -32603


def _error_data(error: grpc.aio.AioRpcError) -> Any:
    for key, value in error.trailing_metadata() or ():
        if key == ERROR_DATA:
            try:
                return orjson.loads(value)
            except orjson.JSONDecodeError:
                return None
    return None


def _from_hub(error: grpc.aio.AioRpcError) -> bool:
    return any(key == ERROR_FROM and value == FROM_HUB for key, value in error.trailing_metadata() or ())


def mcp_error_from_grpc(error: grpc.aio.AioRpcError) -> MCPError:
    status = error.code()
    code = STATUS_TO_JSONRPC.get(status, INTERNAL_ERROR)
    if status == grpc.StatusCode.UNAVAILABLE and not _from_hub(error):
        message = "the mcphub hub is unavailable; is `mcphub serve` running?"
    else:
        message = error.details() or status.name.lower()
    return MCPError(code=code, message=message, data=_error_data(error))


def not_a_message(exc: ValidationError) -> str:
    """The -32600 message for what the SDK's JSON-RPC message model refused: its first complaint,
    and where (pydantic's full text names every member of the union, and its URLs)."""
    errors = exc.errors()
    first = errors[0] if errors else None
    where = ".".join(str(part) for part in first["loc"]) if first else ""
    detail = f"{first['msg']} (at {where})" if first and where else first["msg"] if first else str(exc)
    return f"Invalid Request: not a JSON-RPC 2.0 message: {detail}"

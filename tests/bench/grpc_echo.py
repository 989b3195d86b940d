"""The ceiling: a bare `grpc.aio` server answering `ToolHub.CallTool`/`StreamCallTool` with the echo.

    python -m tests.bench.grpc_echo

No authentication, registry, validation or pipeline: it decodes the arguments and
builds the same result message the hub sends, so its answers are byte for byte the
hub's and the difference between the two is exactly what mcphub adds. It runs on
uvloop with the hub's server options. Prints one JSON ready line (`{"grpc": ..., "pid": ...}`).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
import uvloop

from mcp_local.servicer import MAX_MESSAGE_BYTES
from mcphub_proto.v1 import toolhub_pb2 as pb
from mcphub_proto.v1 import toolhub_pb2_grpc as pb_grpc

__all__ = ["EchoServicer", "main"]


def _echo(request: pb.CallToolRequest) -> pb.CallToolResult:
    text = orjson.loads(request.arguments_json)["text"]
    return pb.CallToolResult(content=[pb.ContentBlock(text=pb.TextContent(text=text))])


class EchoServicer(pb_grpc.ToolHubServicer):
    async def CallTool(self, request: pb.CallToolRequest, context: Any) -> pb.CallToolResult:
        return _echo(request)

    async def StreamCallTool(
        self, request: pb.CallToolRequest, context: Any
    ) -> AsyncIterator[pb.CallToolEvent]:
        yield pb.CallToolEvent(result=_echo(request))


async def _serve() -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
    )
    pb_grpc.add_ToolHubServicer_to_server(EchoServicer(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"grpc": f"127.0.0.1:{port}", "pid": os.getpid()}), flush=True)
    await stop.wait()
    await server.stop(1)


def main() -> int:
    uvloop.run(_serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())

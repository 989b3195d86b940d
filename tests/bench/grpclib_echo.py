"""The same bare echo as `grpc_echo`, served by grpclib (pure Python HTTP/2 on asyncio).

    python -m tests.bench.grpclib_echo

An extra row (`--systems grpclib-bare`): it answers whether another Python gRPC server
could be a higher ceiling than `grpc.aio` for the hub. It decodes the arguments and
builds the result message exactly as `grpc_echo` does, on uvloop, and prints the same
JSON ready line (`{"grpc": ..., "pid": ...}`).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

import uvloop
from grpclib.const import Cardinality, Handler
from grpclib.server import Server, Stream

from mcphub_proto.v1 import toolhub_pb2 as pb
from tests.bench.grpc_echo import _echo

__all__ = ["main"]

_SERVICE = "/mcphub.v1.ToolHub/"


class _Echo:
    async def call_tool(self, stream: Stream[pb.CallToolRequest, pb.CallToolResult]) -> None:
        request = await stream.recv_message()
        assert request is not None
        await stream.send_message(_echo(request))

    async def stream_call_tool(self, stream: Stream[pb.CallToolRequest, pb.CallToolEvent]) -> None:
        request = await stream.recv_message()
        assert request is not None
        await stream.send_message(pb.CallToolEvent(result=_echo(request)))

    def __mapping__(self) -> dict[str, Handler]:
        return {
            _SERVICE + "CallTool": Handler(
                self.call_tool, Cardinality.UNARY_UNARY, pb.CallToolRequest, pb.CallToolResult
            ),
            _SERVICE + "StreamCallTool": Handler(
                self.stream_call_tool, Cardinality.UNARY_STREAM, pb.CallToolRequest, pb.CallToolEvent
            ),
        }


async def _serve() -> None:
    server: Any = Server([_Echo()])
    await server.start("127.0.0.1", 0)
    port = server._server.sockets[0].getsockname()[1]  # grpclib has no public accessor
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"grpc": f"127.0.0.1:{port}", "pid": os.getpid()}), flush=True)
    await stop.wait()
    server.close()
    await server.wait_closed()


def main() -> int:
    uvloop.run(_serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())

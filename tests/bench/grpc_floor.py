"""The memory floor: a bare `grpc.aio` server offering what the sidecar offers, and nothing behind it.

    python -m tests.bench.grpc_floor

`ToolHub` (every method unimplemented), health checking and reflection, on plain
asyncio as the sidecar runs, with the sidecar's server options, settled as the
sidecar settles after start-up. No manifest, packs,
pipeline, validation or YAML. Its idle RSS is what any Python process costs that
serves this gRPC contract with grpcio; `sidecar_bench` measures it next to the sidecar,
so the sidecar's own share is the difference. Prints one JSON ready line
(`{"grpc": ..., "pid": ...}`) and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mcp_local.memory import settle_memory
from mcphub_proto.v1 import toolhub_pb2 as pb
from mcphub_proto.v1 import toolhub_pb2_grpc as pb_grpc

MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # the sidecar's limit, without importing its server module


async def _serve() -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
    )
    pb_grpc.add_ToolHubServicer_to_server(pb_grpc.ToolHubServicer(), server)  # type: ignore[no-untyped-call]
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    name = pb.DESCRIPTOR.services_by_name["ToolHub"].full_name
    reflection.enable_server_reflection([name, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    settle_memory()  # as the sidecar does once it serves
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"grpc": f"127.0.0.1:{port}", "pid": os.getpid()}), flush=True)
    await stop.wait()
    await server.stop(1)


def main() -> int:
    asyncio.run(_serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The reference point: the official `mcp` SDK's `MCPServer` serving a no-op `echo` under uvicorn.

    python -m tests.bench.sdk_echo --mode fastest|default

Binds 127.0.0.1 port 0 and prints one JSON ready line (`{"url": ..., "pid": ...}`).

Modes (both serve the 2026-07-28 stateless wire the benchmark drives; they differ in
how the SDK answers it and in what the handshake-era path does):

- `fastest`: `streamable_http_app(stateless_http=True, json_response=True)`, the
  configuration the SDK's README recommends for production and scalability; a
  2026-07-28 `tools/call` is answered in the request's own task with a JSON body.
- `default`: `streamable_http_app()` with the SDK's defaults (stateful, SSE responses);
  a 2026-07-28 `tools/call` runs as a sibling task that may upgrade to SSE, and is
  answered as JSON when it finishes without a notification.

uvicorn runs exactly as the hub runs its bridge (uvloop, httptools, no access log,
`server_header=False`), so the two differ only in the application.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys

import uvicorn
import uvloop
from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette

__all__ = ["MODES", "build_app", "main"]

MODES = ("fastest", "default")


def build_app(mode: str) -> Starlette:
    server = MCPServer("sdk-echo", log_level="WARNING")

    # structured_output=False: the same result shape as mcphub's echo (one text block).
    @server.tool(description="Return the given text unchanged.", structured_output=False)
    async def echo(text: str) -> str:
        return text

    if mode == "fastest":
        return server.streamable_http_app(stateless_http=True, json_response=True)
    return server.streamable_http_app()


async def _serve(mode: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    config = uvicorn.Config(
        build_app(mode),
        lifespan="on",
        log_config=None,
        access_log=False,
        ws="none",
        loop="none",
        http="httptools",
        server_header=False,
        timeout_graceful_shutdown=2,
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    await server.startup(sockets=[sock])
    port = sock.getsockname()[1]
    print(json.dumps({"url": f"http://127.0.0.1:{port}/mcp", "pid": os.getpid()}), flush=True)
    await server.main_loop()
    await server.shutdown(sockets=[sock])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.sdk_echo")
    parser.add_argument("--mode", choices=MODES, required=True)
    args = parser.parse_args(argv)
    uvloop.run(_serve(args.mode))
    return 0


if __name__ == "__main__":
    sys.exit(main())

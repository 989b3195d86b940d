"""The bridge over stdio, for clients that can only start a command."""

from __future__ import annotations

from mcp.server.stdio import stdio_server

from .hubclient import HubClient, ToolHubClient
from .server import BridgeOptions, build_mcp_server

__all__ = ["serve_stdio"]


async def serve_stdio(hub: str | ToolHubClient, options: BridgeOptions) -> None:
    """MCP on stdin/stdout for the hub at `hub` (a gRPC address, or a client to use)."""
    if isinstance(hub, str):
        hub = HubClient(hub)
    server = build_mcp_server(hub, options)
    try:
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
    finally:
        await hub.close()

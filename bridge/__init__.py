"""The MCP bridge: MCP JSON-RPC (Streamable HTTP, stdio) in front of the ToolHub gRPC API."""

from __future__ import annotations

from .errors import STATUS_TO_JSONRPC, mcp_error_from_grpc
from .hubclient import HubClient
from .security import HostOriginGuard, OriginPolicy, default_policy
from .server import BridgeOptions, build_asgi_app, build_mcp_server
from .stdio import serve_stdio

__all__ = [
    "STATUS_TO_JSONRPC",
    "BridgeOptions",
    "HostOriginGuard",
    "HubClient",
    "OriginPolicy",
    "build_asgi_app",
    "build_mcp_server",
    "default_policy",
    "mcp_error_from_grpc",
    "serve_stdio",
]

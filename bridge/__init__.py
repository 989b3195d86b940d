"""The MCP bridge: MCP JSON-RPC (Streamable HTTP, stdio) in front of the ToolHub gRPC API.

Names are imported on first use, so a gRPC-only user of `bridge.hubclient` (the CLI) does not
pay for importing the MCP SDK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcp_local.lazy import names_on_first_use

if TYPE_CHECKING:
    from .app import BridgeApp as BridgeApp
    from .app import bridge_app as bridge_app
    from .errors import STATUS_TO_JSONRPC as STATUS_TO_JSONRPC
    from .errors import mcp_error_from_grpc as mcp_error_from_grpc
    from .hubclient import HubClient as HubClient
    from .options import BridgeOptions as BridgeOptions
    from .security import (
        HostOriginGuard as HostOriginGuard,
    )
    from .security import (
        OriginPolicy as OriginPolicy,
    )
    from .security import (
        default_policy as default_policy,
    )
    from .server import (
        build_asgi_app as build_asgi_app,
    )
    from .server import (
        build_mcp_server as build_mcp_server,
    )
    from .stdio import serve_stdio as serve_stdio

_HOMES = {
    "BridgeApp": "app",
    "bridge_app": "app",
    "STATUS_TO_JSONRPC": "errors",
    "mcp_error_from_grpc": "errors",
    "HubClient": "hubclient",
    "HostOriginGuard": "security",
    "OriginPolicy": "security",
    "default_policy": "security",
    "BridgeOptions": "options",
    "build_asgi_app": "server",
    "build_mcp_server": "server",
    "serve_stdio": "stdio",
}

__all__ = sorted(_HOMES)

__getattr__ = names_on_first_use(__name__, _HOMES)

"""The errors that do not cross the wire, defined without gRPC (see `mcp_local.errors`).

`mcphub local serve` reads and checks the manifest before it loads gRPC (the serving process
does that, see `mcp_local.serving`), so the errors of configuration live here.
"""

from __future__ import annotations

__all__ = ["ConfigError", "ToolError", "ToolHubError"]


class ToolHubError(Exception):
    """Base of every error raised by mcphub code."""


class ToolError(ToolHubError):
    """Raised by a tool handler for an expected failure; its message is shown to the model."""


class ConfigError(ToolHubError):
    """Invalid configuration: the message names the key and the value expected."""

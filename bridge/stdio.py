"""The bridge over stdio, for clients that can only start a command."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import mcp_types as types
from mcp.server.stdio import stdio_server
from mcp.shared._context_streams import create_context_streams
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from .hubclient import HubClient, ToolHubClient
from .server import BridgeOptions, build_mcp_server

__all__ = ["serve_stdio"]

logger = logging.getLogger(__name__)


def _error_for(exc: Exception) -> types.JSONRPCError | None:
    """The JSON-RPC answer to a line that is not a message (None for a blank line)."""
    errors = exc.errors() if isinstance(exc, ValidationError) else []
    first = errors[0] if errors else None
    if first is not None and first["type"] == "json_invalid":
        if isinstance(first.get("input"), str) and not first["input"].strip():
            return None
        code, message = types.PARSE_ERROR, f"Parse error: the line is not JSON ({first['msg']})"
    else:
        where = ".".join(str(part) for part in first["loc"]) if first else ""
        detail = f"{first['msg']} (at {where})" if first and where else first["msg"] if first else str(exc)
        code, message = types.INVALID_REQUEST, f"Invalid Request: not a JSON-RPC 2.0 message: {detail}"
    return types.JSONRPCError(jsonrpc="2.0", id=None, error=types.ErrorData(code=code, message=message))


async def _answer_bad_lines(source: Any, sink: Any, replies: Any) -> None:
    """Pass messages from `source` to `sink`; answer each line the SDK could not read (which it
    would drop without a word) with a parse or invalid-request error on `replies`."""
    async with sink:
        async for item in source:
            if not isinstance(item, Exception):
                await sink.send(item)
                continue
            error = _error_for(item)
            if error is None:
                continue
            logger.warning("answered a line on stdin that is not a JSON-RPC message: %s", error.error.message)
            try:
                await replies.send(SessionMessage(error))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return


async def serve_stdio(hub: str | ToolHubClient, options: BridgeOptions) -> None:
    """MCP on stdin/stdout for the hub at `hub` (a gRPC address, or a client to use)."""
    if isinstance(hub, str):
        hub = HubClient(hub)
    server = build_mcp_server(hub, options)
    try:
        async with stdio_server() as (read_stream, write_stream), anyio.create_task_group() as tg:
            sink, checked = create_context_streams[SessionMessage | Exception](0)
            tg.start_soon(_answer_bad_lines, read_stream, sink, write_stream)
            await server.run(checked, write_stream, server.create_initialization_options())
            tg.cancel_scope.cancel()
    finally:
        await hub.close()

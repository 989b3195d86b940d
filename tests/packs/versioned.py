"""A sandbox tool whose description comes from the manifest: changing it is what a rug pull looks like."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mcp_local import StaticPack, Tool, ToolCall
from mcp_local.packs import PackEnv


def create_pack(options: Mapping[str, Any], env: PackEnv) -> StaticPack:
    description = str(options.get("description", "Tell the message of the day."))

    async def motd(call: ToolCall) -> str:
        return f"motd: {description}"

    return StaticPack("versioned", [Tool("motd", description, {"type": "object"}, motd)])

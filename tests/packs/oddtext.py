"""Tools whose results hold text that is not Unicode (lone surrogates), as a file name or a
command's output decoded with `surrogateescape` does: for the sidecar's result path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mcp_local import StaticPack, Tool, ToolAnnotations, ToolCall, ToolResult
from mcp_local.content import TextContent
from mcp_local.packs import PackEnv

RO = ToolAnnotations(read_only=True, destructive=False)


def create_pack(options: Mapping[str, Any], env: PackEnv) -> StaticPack:
    async def surrogate(call: ToolCall) -> ToolResult:
        name = b"bad\xffname.txt".decode("utf-8", "surrogateescape")
        return ToolResult((TextContent(f"found {name}"),), structured={"found": 1})

    return StaticPack(
        "oddtext",
        [Tool("surrogate", "A result with a lone surrogate.", {"type": "object"}, surrogate, annotations=RO)],
    )

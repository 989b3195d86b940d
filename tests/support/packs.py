"""Call a pack's tools in-process, through the same dispatch stages a server uses."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from mcp_local.content import TextContent, ToolResult
from mcp_local.packs import PackEnv, ToolPack, load_pack
from mcp_local.pipeline import Authenticate, Authorize, Pipeline, ResolveTool, ValidateArguments
from mcp_local.principals import OpenAccess
from mcp_local.redaction import Redactor
from mcp_local.registry import ToolRegistry
from mcp_local.tools import Tool, ToolCall


class PackUnderTest:
    def __init__(self, pack: ToolPack) -> None:
        self.pack = pack
        self.registry = ToolRegistry()
        self.registry.set_source("pack", pack.tools())
        access = OpenAccess()
        self.pipeline = Pipeline(
            [Authenticate(access), ResolveTool(self.registry), Authorize(), ValidateArguments(self.registry)]
        )

    @property
    def tools(self) -> dict[str, Tool]:
        return {t.name: t for t in self.pack.tools()}

    async def call(self, name: str, **arguments: Any) -> ToolResult:
        return await self.pipeline(ToolCall(name, orjson.dumps(arguments)))


def make_pack(
    ref: str,
    options: Mapping[str, Any],
    workspace: Path,
    *,
    environ: Mapping[str, str] | None = None,
    redactor: Redactor | None = None,
) -> PackUnderTest:
    env = PackEnv(
        state_dir=workspace / ".state",
        redactor=redactor or Redactor(),
        extra={"workspace": str(workspace), "environ": dict(environ or {})},
    )
    return PackUnderTest(load_pack(ref, options, env))


def text(result: ToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, TextContent))

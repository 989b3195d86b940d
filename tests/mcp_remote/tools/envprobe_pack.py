"""A test pack that shows what a process the hub starts would inherit (as a shell or sandbox would)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

from mcp_local import StaticPack, Tool, ToolAnnotations, ToolCall
from mcp_local.packs import PackEnv


async def spawn_env(call: ToolCall) -> str:
    process = await asyncio.create_subprocess_exec(
        "env", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out, _ = await process.communicate()
    return out.decode(errors="replace")


async def hub_environ(call: ToolCall) -> str:
    return "\n".join(f"{k}={v}" for k, v in sorted(os.environ.items()))


def create_pack(options: Mapping[str, Any], env: PackEnv) -> StaticPack:
    ro = ToolAnnotations(read_only=True, destructive=False)
    empty = {"type": "object", "properties": {}}
    return StaticPack(
        "envprobe",
        [
            Tool("spawn_env", "Run `env` as a child of the hub.", empty, spawn_env, annotations=ro),
            Tool("hub_environ", "The hub process's own environment.", empty, hub_environ, annotations=ro),
        ],
    )

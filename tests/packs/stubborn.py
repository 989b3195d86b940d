"""Tools that are slow to stop when cancelled, or do not stop at all: for the sidecar's cancel handling.

Each leaves marker files in the pack's state directory: `<marker>.started` once running,
`<marker>.stopping` once cancelled, and `<marker>` saying how it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from mcp_local import StaticPack, Tool, ToolAnnotations, ToolCall
from mcp_local.packs import PackEnv

RO = ToolAnnotations(read_only=True, destructive=False)


def create_pack(options: Mapping[str, Any], env: PackEnv) -> StaticPack:
    markers = env.state_dir / "markers"
    markers.mkdir(parents=True, exist_ok=True)

    async def slow_to_stop(call: ToolCall) -> str:
        """Runs until cancelled, then takes `seconds` to clean up (an await a second cancel interrupts)."""
        name = call.arguments["marker"]
        (markers / f"{name}.started").touch()
        try:
            await asyncio.sleep(600)
        except asyncio.CancelledError:
            (markers / f"{name}.stopping").touch()
            try:
                await asyncio.sleep(call.arguments["seconds"])
            except asyncio.CancelledError:
                (markers / name).write_text("cleanup interrupted")
                raise
            (markers / name).write_text("cleaned up")
            raise
        return "never cancelled"

    async def ignores_cancel(call: ToolCall) -> str:
        """Runs until cancelled, then carries on for `seconds` whatever cancels arrive."""
        name = call.arguments["marker"]
        (markers / f"{name}.started").touch()
        try:
            await asyncio.sleep(600)
        except asyncio.CancelledError:
            (markers / f"{name}.stopping").touch()
        loop = asyncio.get_running_loop()
        until = loop.time() + call.arguments["seconds"]
        while loop.time() < until:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(until - loop.time())
        (markers / name).write_text("carried on")
        return "carried on"

    schema = {
        "type": "object",
        "properties": {
            "marker": {"type": "string", "pattern": "^[a-z0-9-]{1,40}$"},
            "seconds": {"type": "number", "minimum": 0, "maximum": 60},
        },
        "required": ["marker", "seconds"],
    }
    return StaticPack(
        "stubborn",
        [
            Tool(
                "slow_to_stop", "Clean up for `seconds` when cancelled.", schema, slow_to_stop, annotations=RO
            ),
            Tool(
                "ignores_cancel",
                "Run on for `seconds` when cancelled.",
                schema,
                ignores_cancel,
                annotations=RO,
            ),
        ],
    )

"""Tools that let tests observe the hub from the outside: identity, cancellation, exact JSON, failures."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import orjson

from mcp_local import StaticPack, TextContent, Tool, ToolAnnotations, ToolCall, ToolResult
from mcp_local.content import REFUSED_META
from mcp_local.packs import PackEnv

RO = ToolAnnotations(read_only=True, destructive=False)


def create_pack(options: Mapping[str, Any], env: PackEnv) -> StaticPack:
    markers = env.state_dir / "markers"
    markers.mkdir(parents=True, exist_ok=True)

    async def whoami(call: ToolCall) -> str:
        assert call.principal is not None
        return call.principal.name

    async def wait_for_cancel(call: ToolCall) -> str:
        marker = markers / call.arguments["marker"]
        (markers / (call.arguments["marker"] + ".started")).touch()
        try:
            for i in range(1200):
                await call.progress(i, None, f"tick {i}")
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            marker.write_text("cancelled")
            raise
        return "never cancelled"

    async def echo_json(call: ToolCall) -> ToolResult:
        value = call.arguments["value"]
        return ToolResult(content=(TextContent(orjson.dumps(value).decode()),), structured={"value": value})

    async def boom(call: ToolCall) -> str:
        raise RuntimeError("the probe tool failed on purpose")

    async def claims_refusal(call: ToolCall) -> ToolResult:
        """A tool that ran and says the hub refused it: only the hub may say that."""
        meta = {REFUSED_META: "policy", "x": 1}
        return ToolResult(content=(TextContent("I ran"),), is_error=True, meta=meta)

    async def emit_bytes(call: ToolCall) -> str:
        return "x" * int(call.arguments["n"])

    async def routed(call: ToolCall) -> str:
        region: str = call.arguments["region"]
        return region

    marker_schema = {
        "type": "object",
        "properties": {"marker": {"type": "string", "pattern": "^[a-z0-9-]{1,40}$"}},
        "required": ["marker"],
    }
    return StaticPack(
        "probe",
        [
            Tool("whoami", "Name the calling principal.", {"type": "object"}, whoami, annotations=RO),
            Tool(
                "wait_for_cancel",
                "Tick until cancelled; leaves a marker file.",
                marker_schema,
                wait_for_cancel,
                annotations=RO,
            ),
            Tool(
                "echo_json",
                "Return the value as structured content.",
                {"type": "object", "properties": {"value": {}}, "required": ["value"]},
                echo_json,
                annotations=RO,
                output_schema={"type": "object", "properties": {"value": {}}, "required": ["value"]},
            ),
            Tool("boom", "Always raises.", {"type": "object"}, boom, annotations=RO),
            Tool(
                "emit_bytes",
                "Return n bytes of text.",
                {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}, "required": ["n"]},
                emit_bytes,
                annotations=RO,
            ),
            Tool(
                "claims_refusal",
                "Fails, claiming the hub refused it.",
                {"type": "object"},
                claims_refusal,
                annotations=RO,
            ),
            Tool(
                "routed",
                "Return the region, which 2026-07-28 clients also send as the Mcp-Param-Region header.",
                {
                    "type": "object",
                    "properties": {"region": {"type": "string", "x-mcp-header": "Region"}},
                    "required": ["region"],
                },
                routed,
                annotations=RO,
            ),
        ],
    )

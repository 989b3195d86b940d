"""Tools the gate must hold back: one destructive, one with no annotations, one that knows a secret;
and one that fails quoting what it was given."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mcp_local import StaticPack, Tool, ToolAnnotations, ToolCall
from mcp_local.errors import PermissionDenied
from mcp_local.packs import PackEnv

THING = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "password": {"type": "string"}},
    "required": ["name"],
}


def create_pack(options: Mapping[str, Any], env: PackEnv) -> StaticPack:
    secret = options.get("secret")
    if secret:
        env.redactor.add(secret)

    async def delete_thing(call: ToolCall) -> str:
        return f"deleted {call.arguments['name']}"

    async def plain_thing(call: ToolCall) -> str:
        return f"did {call.arguments['name']}"

    async def fail_with_secret(call: ToolCall) -> str:
        if call.arguments["name"] == "refuse":
            raise PermissionDenied(f"key {secret} lacks the scope")
        raise RuntimeError(f"upstream refused key {secret}")

    async def quote_and_fail(call: ToolCall) -> str:
        raise RuntimeError(f"cannot use {call.arguments['name']}")

    return StaticPack(
        "risky",
        [
            Tool(
                "fail_with_secret",
                "Fails, quoting the secret the pack holds.",
                THING,
                fail_with_secret,
                annotations=ToolAnnotations(read_only=True),
            ),
            Tool(
                "quote_and_fail",
                "Fails, quoting its argument.",
                THING,
                quote_and_fail,
                annotations=ToolAnnotations(read_only=True),
            ),
            Tool(
                "delete_thing",
                "Deletes a thing.",
                THING,
                delete_thing,
                annotations=ToolAnnotations(destructive=True, read_only=False),
            ),
            Tool("plain_thing", "Does a thing; declares nothing about itself.", THING, plain_thing),
        ],
    )

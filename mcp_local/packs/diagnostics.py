"""The `diagnostics` pack: `echo` and `sleep`, for checking that a hub answers and streams."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from ..tools import Tool, ToolAnnotations, ToolCall
from . import PackEnv, StaticPack

__all__ = ["create_pack"]

MAX_SLEEP_S = 3600.0


async def _echo(call: ToolCall) -> str:
    text: str = call.arguments["text"]
    return text


async def _sleep(call: ToolCall) -> str:
    seconds = float(call.arguments["seconds"])
    loop = asyncio.get_running_loop()
    start = loop.time()
    end = start + seconds
    step = min(1.0, max(0.05, seconds / 20))
    await call.progress(0.0, seconds, f"sleeping {seconds:g}s")
    while (now := loop.time()) < end:
        await asyncio.sleep(min(step, end - now))
        done = min(loop.time() - start, seconds)
        await call.progress(round(done, 3), seconds, f"slept {done:.1f} of {seconds:g}s")
    return f"slept {seconds:g}s"


ECHO = Tool(
    name="echo",
    title="Echo",
    description="Return the given text unchanged. Use it to check that the hub answers.",
    input_schema={
        "type": "object",
        "properties": {"text": {"type": "string", "description": "The text to send back."}},
        "required": ["text"],
        "additionalProperties": False,
    },
    handler=_echo,
    annotations=ToolAnnotations(
        title="Echo", read_only=True, destructive=False, idempotent=True, open_world=False
    ),
)

SLEEP = Tool(
    name="sleep",
    title="Sleep",
    description=(
        "Wait for the given number of seconds, reporting progress as it goes. "
        "Stops at once when the call is cancelled."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "seconds": {
                "type": "number",
                "minimum": 0,
                "maximum": MAX_SLEEP_S,
                "description": "How long to wait.",
            }
        },
        "required": ["seconds"],
        "additionalProperties": False,
    },
    handler=_sleep,
    annotations=ToolAnnotations(
        title="Sleep", read_only=True, destructive=False, idempotent=True, open_world=False
    ),
)


def create_pack(options: Mapping[str, Any], env: PackEnv) -> StaticPack:
    if not isinstance(options, Mapping):
        raise ConfigError(f"packs[diagnostics].options: expected a mapping, got {type(options).__name__}")
    if options:
        # An option given here is a typo or meant for another pack: say so rather than ignore it.
        raise ConfigError(
            f"packs[diagnostics].options.{next(iter(options))}: unknown option (this pack takes none)"
        )
    return StaticPack("diagnostics", [ECHO, SLEEP])

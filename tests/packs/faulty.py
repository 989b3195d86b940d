"""A pack that misbehaves as its options say: how servers bear a newcomer's pack.

Options: `name` (default "faulty"); `fail`: "create" or "start" (RuntimeError), "start-oserror";
`start`/`stop`: "hang" (never return); `events`: a file each start and stop appends a line to;
`tools`: "wrong" (handlers returning what no caller can receive), "sync" (a plain `def` handler),
"precheck" (a precheck that raises), "blocks" (`blocks_loop`, whose handler sleeps without
awaiting: the event loop stops for `seconds`).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mcp_local.content import ImageContent, ToolResult
from mcp_local.packs import PackEnv
from mcp_local.tools import Tool, ToolAnnotations, ToolCall

NO_ARGS = {"type": "object"}


async def _int(call: ToolCall) -> Any:
    return 42


async def _dict(call: ToolCall) -> Any:
    return {"a": 1}


async def _none(call: ToolCall) -> Any:
    return None


async def _bytes(call: ToolCall) -> Any:
    return b"bytes"


async def _plain(call: ToolCall) -> Any:
    return ToolResult(content=("plain string",))  # type: ignore[arg-type]


async def _image(call: ToolCall) -> Any:
    return ToolResult(content=(ImageContent(data="aGk=", mime_type="image/png"),))  # type: ignore[arg-type]


def _sync(call: ToolCall) -> str:
    return "blocking"


async def _fine(call: ToolCall) -> str:
    return "fine"


async def _blocks_loop(call: ToolCall) -> str:
    time.sleep(float(call.arguments["seconds"]))  # noqa: ASYNC251 - the defect this tool stands for
    return "woke"


def _raising_precheck(call: ToolCall) -> str | None:
    raise KeyError("path")


RO = ToolAnnotations(read_only=True)  # the default policy lets them run

WRONG = [
    Tool("wrong_int", "Returns 42.", NO_ARGS, _int, annotations=RO),
    Tool("wrong_dict", "Returns a dict.", NO_ARGS, _dict, annotations=RO),
    Tool("wrong_none", "Returns None.", NO_ARGS, _none, annotations=RO),
    Tool("wrong_bytes", "Returns bytes.", NO_ARGS, _bytes, annotations=RO),
    Tool("wrong_plain", "Returns a string as a content block.", NO_ARGS, _plain, annotations=RO),
    Tool("wrong_image", "Returns an image whose data is a str.", NO_ARGS, _image, annotations=RO),
]


class FaultyPack:
    def __init__(self, options: Mapping[str, Any]) -> None:
        self.name = str(options.get("name", "faulty"))
        self.options = options
        events = options.get("events")
        self.events = Path(events) if events else None

    def _event(self, what: str) -> None:
        if self.events is not None:
            with self.events.open("a") as f:
                f.write(f"{what} {self.name}\n")

    def tools(self) -> Sequence[Tool]:
        kind = self.options.get("tools")
        if kind == "wrong":
            return WRONG
        if kind == "sync":
            return [Tool("blocking_tool", "A plain def handler.", NO_ARGS, _sync)]  # type: ignore[arg-type]
        if kind == "blocks":
            seconds = {
                "type": "object",
                "properties": {"seconds": {"type": "number"}},
                "required": ["seconds"],
            }
            return [Tool("blocks_loop", "Sleeps on the event loop.", seconds, _blocks_loop, annotations=RO)]
        if kind == "precheck":
            return [Tool("checked_tool", "Its precheck raises.", NO_ARGS, _fine, precheck=_raising_precheck)]
        return []

    async def start(self) -> None:
        self._event("start")
        if self.options.get("fail") == "start":
            raise RuntimeError("the service it needs is down")
        if self.options.get("fail") == "start-oserror":
            raise OSError("svc down")
        if self.options.get("start") == "hang":
            print(f"faulty pack {self.name}: starting for ever", file=sys.stderr, flush=True)
            await asyncio.Event().wait()

    async def stop(self) -> None:
        self._event("stop")
        if self.options.get("stop") == "hang":
            await asyncio.Event().wait()


def create_pack(options: Mapping[str, Any], env: PackEnv) -> FaultyPack:
    if options.get("fail") == "create":
        raise RuntimeError("no config file")
    return FaultyPack(options)

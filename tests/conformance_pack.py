"""Fixture tools the official MCP conformance suite calls by name, served by the hub through the bridge.

Loaded with `mcphub serve --pack tests/conformance_pack.py`. Each tool does what
the suite's scenario description asks of a server.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import Mapping
from typing import Any

from mcp_local import (
    EmbeddedResource,
    ImageContent,
    MissingCapability,
    StaticPack,
    TextContent,
    Tool,
    ToolAnnotations,
    ToolCall,
    ToolError,
    ToolResult,
)
from mcp_local.content import AudioContent
from mcp_local.packs import PackEnv


def _png_1x1() -> bytes:
    """A valid one-pixel PNG, built here rather than pasted."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(b"\x00\x33\x66\x99")  # filter byte + one RGB pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _wav_silence() -> bytes:
    """A valid WAV header with no samples (8 kHz, mono, 16-bit)."""
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, 8000, 16000, 2, 16)
    data = struct.pack("<4sI", b"data", 0)
    return struct.pack("<4sI4s", b"RIFF", 4 + len(fmt) + len(data), b"WAVE") + fmt + data


PNG_1X1 = _png_1x1()
WAV_SILENCE = _wav_silence()

NO_ARGS: Mapping[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


async def simple_text(call: ToolCall) -> str:
    return "This is a simple text response for testing."


async def image_content(call: ToolCall) -> ToolResult:
    return ToolResult(content=(ImageContent(PNG_1X1, "image/png"),))


async def audio_content(call: ToolCall) -> ToolResult:
    return ToolResult(content=(AudioContent(WAV_SILENCE, "audio/wav"),))


async def embedded_resource(call: ToolCall) -> ToolResult:
    return ToolResult(
        content=(
            EmbeddedResource(
                "test://embedded-resource", "text/plain", text="This is an embedded resource content."
            ),
        )
    )


async def multiple_content_types(call: ToolCall) -> ToolResult:
    return ToolResult(
        content=(
            TextContent("Multiple content types test:"),
            ImageContent(PNG_1X1, "image/png"),
            EmbeddedResource(
                "test://mixed-content-resource", "application/json", text='{"test": "data", "value": 123}'
            ),
        )
    )


async def error_handling(call: ToolCall) -> str:
    raise ToolError("This tool intentionally returns an error for testing")


async def with_progress(call: ToolCall) -> str:
    for step in (0, 50, 100):
        await call.progress(step, 100, f"Completed step {step} of 100")
        if step < 100:
            await asyncio.sleep(0.05)
    return "Progress reported at 0, 50 and 100 of 100"


async def missing_capability(call: ToolCall) -> str:
    if "sampling" not in call.client_capabilities():
        raise MissingCapability(
            "this tool needs the client's 'sampling' capability", capabilities={"sampling": {}}
        )
    return "The client declared sampling."


async def streaming(call: ToolCall) -> str:
    await call.progress(1, 2, "working")
    return "Streamed without sending the client any request."


async def quiet(call: ToolCall) -> str:
    return "Logged nothing: the request did not ask for log messages."


async def json_schema_tool(call: ToolCall) -> str:
    return "json_schema_2020_12_tool"


JSON_SCHEMA_2020_12 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}

READ_ONLY = ToolAnnotations(read_only=True, destructive=False)

TOOLS = [
    Tool("test_simple_text", "Returns one text block.", NO_ARGS, simple_text, annotations=READ_ONLY),
    Tool("test_image_content", "Returns one PNG image.", NO_ARGS, image_content, annotations=READ_ONLY),
    Tool("test_audio_content", "Returns one WAV clip.", NO_ARGS, audio_content, annotations=READ_ONLY),
    Tool(
        "test_embedded_resource",
        "Returns an embedded text resource.",
        NO_ARGS,
        embedded_resource,
        annotations=READ_ONLY,
    ),
    Tool(
        "test_multiple_content_types",
        "Returns text, an image and a resource.",
        NO_ARGS,
        multiple_content_types,
        annotations=READ_ONLY,
    ),
    Tool(
        "test_error_handling",
        "Always fails with an error result.",
        NO_ARGS,
        error_handling,
        annotations=READ_ONLY,
    ),
    Tool(
        "test_tool_with_progress",
        "Reports progress 0, 50 and 100 of 100.",
        NO_ARGS,
        with_progress,
        annotations=READ_ONLY,
    ),
    Tool(
        "test_missing_capability",
        "Needs the client's sampling capability.",
        NO_ARGS,
        missing_capability,
        annotations=READ_ONLY,
    ),
    Tool(
        "test_streaming_elicitation",
        "Streams progress, never a request to the client.",
        NO_ARGS,
        streaming,
        annotations=READ_ONLY,
    ),
    Tool(
        "test_logging_tool",
        "Logs only when the request asks for log messages.",
        NO_ARGS,
        quiet,
        annotations=READ_ONLY,
    ),
    Tool(
        "json_schema_2020_12_tool",
        "Tool with JSON Schema 2020-12 features",
        JSON_SCHEMA_2020_12,
        json_schema_tool,
        annotations=READ_ONLY,
    ),
]


async def dynamic_tool(call: ToolCall) -> str:
    return "dynamic"


DYNAMIC = Tool(
    "test_dynamic_tool",
    "Comes and goes with test_trigger_tool_change.",
    NO_ARGS,
    dynamic_tool,
    annotations=READ_ONLY,
)


def create_pack(options: Mapping[str, Any], env: PackEnv) -> StaticPack:
    pack = StaticPack("conformance", list(TOOLS))

    async def trigger_tool_change(call: ToolCall) -> str:
        """Add or remove a tool, so clients listening for list changes get one."""
        tools = list(pack.tool_list)
        if DYNAMIC in tools:
            tools.remove(DYNAMIC)
        else:
            tools.append(DYNAMIC)
        pack.tool_list = tools
        env.tools_changed(pack)
        return "the tool list changed"

    pack.tool_list = [
        *TOOLS,
        Tool(
            "test_trigger_tool_change",
            "Adds or removes test_dynamic_tool.",
            NO_ARGS,
            trigger_tool_change,
            annotations=READ_ONLY,
        ),
    ]
    return pack

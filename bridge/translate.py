"""Protobuf <-> MCP JSON (wire dicts, camelCase): pure functions, no I/O."""

from __future__ import annotations

import base64
from typing import Any

import orjson

from mcphub_proto.v1 import toolhub_pb2 as pb

__all__ = ["result_to_mcp", "tool_to_mcp"]

_EMPTY_SCHEMA = {"type": "object"}


def _loads(raw: bytes) -> Any:
    return orjson.loads(raw)


def tool_to_mcp(tool: pb.Tool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": tool.name,
        "inputSchema": _loads(tool.input_schema_json) if tool.input_schema_json else _EMPTY_SCHEMA,
    }
    if tool.title:
        out["title"] = tool.title
    if tool.description:
        out["description"] = tool.description
    if tool.output_schema_json:
        out["outputSchema"] = _loads(tool.output_schema_json)
    if tool.meta_json:
        out["_meta"] = _loads(tool.meta_json)
    if tool.HasField("annotations"):
        a = tool.annotations
        ann: dict[str, Any] = {}
        if a.title:
            ann["title"] = a.title
        if a.HasField("read_only_hint"):
            ann["readOnlyHint"] = a.read_only_hint
        if a.HasField("destructive_hint"):
            ann["destructiveHint"] = a.destructive_hint
        if a.HasField("idempotent_hint"):
            ann["idempotentHint"] = a.idempotent_hint
        if a.HasField("open_world_hint"):
            ann["openWorldHint"] = a.open_world_hint
        if ann:
            out["annotations"] = ann
    return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _block_to_mcp(block: pb.ContentBlock) -> dict[str, Any]:
    kind = block.WhichOneof("block")
    out: dict[str, Any]
    if kind == "text":
        out = {"type": "text", "text": block.text.text}
    elif kind == "image":
        out = {"type": "image", "data": _b64(block.image.data), "mimeType": block.image.mime_type}
    elif kind == "audio":
        out = {"type": "audio", "data": _b64(block.audio.data), "mimeType": block.audio.mime_type}
    elif kind == "resource_link":
        r = block.resource_link
        out = {"type": "resource_link", "uri": r.uri, "name": r.name}
        if r.title:
            out["title"] = r.title
        if r.description:
            out["description"] = r.description
        if r.mime_type:
            out["mimeType"] = r.mime_type
        if r.HasField("size"):
            out["size"] = r.size
    elif kind == "resource":
        e = block.resource
        contents: dict[str, Any] = {"uri": e.uri}
        if e.mime_type:
            contents["mimeType"] = e.mime_type
        if e.WhichOneof("contents") == "blob":
            contents["blob"] = _b64(e.blob)
        else:
            contents["text"] = e.text
        out = {"type": "resource", "resource": contents}
    else:
        out = {"type": "text", "text": ""}
    if block.HasField("annotations"):
        a = block.annotations
        ann: dict[str, Any] = {}
        if a.audience:
            ann["audience"] = list(a.audience)
        if a.HasField("priority"):
            ann["priority"] = a.priority
        if a.last_modified:
            ann["lastModified"] = a.last_modified
        if ann:
            out["annotations"] = ann
    if block.meta_json:
        out["_meta"] = _loads(block.meta_json)
    return out


def result_to_mcp(result: pb.CallToolResult) -> dict[str, Any]:
    out: dict[str, Any] = {"content": [_block_to_mcp(b) for b in result.content]}
    if result.structured_content_json:
        out["structuredContent"] = _loads(result.structured_content_json)
    if result.is_error:
        out["isError"] = True
    if result.meta_json:
        out["_meta"] = _loads(result.meta_json)
    return out

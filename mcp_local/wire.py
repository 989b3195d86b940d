"""Translation between the runtime's dataclasses and protobuf messages: pure functions, no I/O."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import orjson

from mcphub_proto.v1 import toolhub_pb2 as pb

from .content import (
    AudioContent,
    Content,
    ContentAnnotations,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
    ToolResult,
)
from .tools import Tool, ToolAnnotations

__all__ = ["content_from_proto", "result_from_proto", "result_to_proto", "tool_to_proto"]


def _json(value: Mapping[str, Any] | None) -> bytes:
    return orjson.dumps(value) if value is not None else b""


def _annotations_to_proto(a: ToolAnnotations) -> pb.ToolAnnotations:
    msg = pb.ToolAnnotations(title=a.title)
    if a.read_only is not None:
        msg.read_only_hint = a.read_only
    if a.destructive is not None:
        msg.destructive_hint = a.destructive
    if a.idempotent is not None:
        msg.idempotent_hint = a.idempotent
    if a.open_world is not None:
        msg.open_world_hint = a.open_world
    return msg


def annotations_from_proto(msg: pb.ToolAnnotations) -> ToolAnnotations:
    return ToolAnnotations(
        title=msg.title,
        read_only=msg.read_only_hint if msg.HasField("read_only_hint") else None,
        destructive=msg.destructive_hint if msg.HasField("destructive_hint") else None,
        idempotent=msg.idempotent_hint if msg.HasField("idempotent_hint") else None,
        open_world=msg.open_world_hint if msg.HasField("open_world_hint") else None,
    )


def tool_to_proto(tool: Tool) -> pb.Tool:
    return pb.Tool(
        name=tool.name,
        title=tool.title,
        description=tool.description,
        input_schema_json=orjson.dumps(tool.input_schema),
        output_schema_json=_json(tool.output_schema),
        annotations=_annotations_to_proto(tool.annotations),
        meta_json=_json(tool.meta),
    )


def _content_annotations(a: ContentAnnotations | None) -> pb.ContentAnnotations | None:
    if a is None:
        return None
    msg = pb.ContentAnnotations(audience=list(a.audience), last_modified=a.last_modified)
    if a.priority is not None:
        msg.priority = a.priority
    return msg


def _content_to_proto(block: Content) -> pb.ContentBlock:
    annotations = _content_annotations(block.annotations)
    if isinstance(block, TextContent):
        return pb.ContentBlock(text=pb.TextContent(text=block.text), annotations=annotations)
    if isinstance(block, ImageContent):
        return pb.ContentBlock(
            image=pb.ImageContent(data=block.data, mime_type=block.mime_type), annotations=annotations
        )
    if isinstance(block, AudioContent):
        return pb.ContentBlock(
            audio=pb.AudioContent(data=block.data, mime_type=block.mime_type), annotations=annotations
        )
    if isinstance(block, ResourceLink):
        link = pb.ResourceLink(
            uri=block.uri,
            name=block.name,
            title=block.title,
            description=block.description,
            mime_type=block.mime_type,
        )
        if block.size is not None:
            link.size = block.size
        return pb.ContentBlock(resource_link=link, annotations=annotations)
    resource = pb.EmbeddedResource(uri=block.uri, mime_type=block.mime_type)
    if block.text is not None:
        resource.text = block.text
    else:
        resource.blob = block.blob or b""
    return pb.ContentBlock(resource=resource, annotations=annotations)


def result_to_proto(result: ToolResult) -> pb.CallToolResult:
    try:
        return pb.CallToolResult(
            content=[_content_to_proto(c) for c in result.content],
            structured_content_json=_json(result.structured),
            is_error=result.is_error,
            meta_json=_json(result.meta),
        )
    except (UnicodeEncodeError, orjson.JSONEncodeError):
        # Text that is not Unicode (a lone surrogate: a file name or a command's output decoded
        # with `surrogateescape`) can be neither a protobuf string nor JSON; such a result failed
        # the call (through a hub, it hung it). Those characters become U+FFFD.
        return pb.CallToolResult(
            content=[_content_to_proto(_valid_text(c)) for c in result.content],
            structured_content_json=_json(_valid_json(result.structured)),
            is_error=result.is_error,
            meta_json=_json(_valid_json(result.meta)),
        )


_SURROGATE = re.compile("[\ud800-\udfff]")


def _valid_json(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, Mapping):
        return {_valid_json(k): _valid_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_valid_json(v) for v in value]
    return value


def _valid_text(block: Content) -> Content:
    if isinstance(block, TextContent):
        return dataclasses.replace(block, text=_valid_json(block.text))
    if isinstance(block, EmbeddedResource) and block.text is not None:
        return dataclasses.replace(block, text=_valid_json(block.text))
    return block


def content_from_proto(block: pb.ContentBlock) -> Content:
    kind = block.WhichOneof("block")
    ann = None
    if block.HasField("annotations"):
        a = block.annotations
        ann = ContentAnnotations(
            audience=tuple(a.audience),
            priority=a.priority if a.HasField("priority") else None,
            last_modified=a.last_modified,
        )
    if kind == "text":
        return TextContent(block.text.text, ann)
    if kind == "image":
        return ImageContent(block.image.data, block.image.mime_type, ann)
    if kind == "audio":
        return AudioContent(block.audio.data, block.audio.mime_type, ann)
    if kind == "resource_link":
        r = block.resource_link
        return ResourceLink(
            r.uri, r.name, r.title, r.description, r.mime_type, r.size if r.HasField("size") else None, ann
        )
    if kind == "resource":
        e = block.resource
        if e.WhichOneof("contents") == "blob":
            return EmbeddedResource(e.uri, e.mime_type, blob=e.blob, annotations=ann)
        return EmbeddedResource(e.uri, e.mime_type, text=e.text, annotations=ann)
    return TextContent("", ann)


def result_from_proto(msg: pb.CallToolResult) -> ToolResult:
    return ToolResult(
        content=tuple(content_from_proto(c) for c in msg.content),
        structured=orjson.loads(msg.structured_content_json) if msg.structured_content_json else None,
        is_error=msg.is_error,
        meta=orjson.loads(msg.meta_json) if msg.meta_json else None,
    )

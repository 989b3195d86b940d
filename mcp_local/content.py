"""Content blocks and results of tool calls, as plain frozen dataclasses.

These mirror MCP's content types; `wire.py` turns them into protobuf and the
bridge turns protobuf into JSON-RPC. Binary data is kept as bytes; only the
JSON edge base64-encodes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "REFUSED_META",
    "AudioContent",
    "Content",
    "ContentAnnotations",
    "EmbeddedResource",
    "ImageContent",
    "ResourceLink",
    "TextContent",
    "ToolResult",
]


@dataclass(frozen=True, slots=True)
class ContentAnnotations:
    audience: tuple[Literal["user", "assistant"], ...] = ()
    priority: float | None = None
    last_modified: str = ""


@dataclass(frozen=True, slots=True)
class TextContent:
    text: str
    annotations: ContentAnnotations | None = None


@dataclass(frozen=True, slots=True)
class ImageContent:
    data: bytes
    mime_type: str
    annotations: ContentAnnotations | None = None


@dataclass(frozen=True, slots=True)
class AudioContent:
    data: bytes
    mime_type: str
    annotations: ContentAnnotations | None = None


@dataclass(frozen=True, slots=True)
class ResourceLink:
    uri: str
    name: str
    title: str = ""
    description: str = ""
    mime_type: str = ""
    size: int | None = None
    annotations: ContentAnnotations | None = None


@dataclass(frozen=True, slots=True)
class EmbeddedResource:
    """A resource's contents: exactly one of `text` and `blob`."""

    uri: str
    mime_type: str = ""
    text: str | None = None
    blob: bytes | None = None
    annotations: ContentAnnotations | None = None

    def __post_init__(self) -> None:
        if (self.text is None) == (self.blob is None):
            raise ValueError("EmbeddedResource needs exactly one of text and blob")


Content = TextContent | ImageContent | AudioContent | ResourceLink | EmbeddedResource

REFUSED_META = "dev.mcphub/refused"
"""The result `_meta` key marking a call the hub refused or stopped (see `ToolResult.refused`)."""


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool returns. `structured` must match the tool's output schema when it has one."""

    content: tuple[Content, ...] = ()
    structured: Mapping[str, Any] | None = None
    is_error: bool = False
    meta: Mapping[str, Any] | None = field(default=None)

    @classmethod
    def text(cls, text: str, *, is_error: bool = False) -> ToolResult:
        return cls(content=(TextContent(text),), is_error=is_error)

    @classmethod
    def error(cls, message: str) -> ToolResult:
        return cls(content=(TextContent(message),), is_error=True)

    @classmethod
    def refused(cls, message: str, why: str) -> ToolResult:
        """An error result for a call the hub would not run, or stopped: the model reads the
        message; `_meta` says which (`why`: policy, denied, timeout, approval, stopped), so
        that a program can tell it from a tool's own failure."""
        return cls(content=(TextContent(message),), is_error=True, meta={REFUSED_META: why})

    @property
    def refusal(self) -> str | None:
        """`why` of a `refused` result, else None."""
        why = self.meta.get(REFUSED_META) if self.is_error and self.meta else None
        return why if isinstance(why, str) else None

"""The tool-server runtime (tool model, registry, dispatch pipeline, gRPC servicer) and the sidecar."""

from __future__ import annotations

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
from .errors import (
    ConfigError,
    DeadlineExceeded,
    HubError,
    InvalidArgument,
    MissingCapability,
    PermissionDenied,
    ResourceExhausted,
    ToolError,
    ToolHubError,
    ToolNotFound,
    Unauthenticated,
    Unavailable,
)
from .outputs import OutputStore, output_read_tool
from .packs import PackEnv, StaticPack, ToolPack, load_pack
from .pipeline import Authenticate, Authorize, Next, Pipeline, ResolveTool, Stage, ValidateArguments, execute
from .principals import LOCAL, Authenticator, OpenAccess, Principal
from .redaction import REDACTED, RedactingFilter, Redactor
from .registry import RegisteredTool, ToolRegistry
from .servicer import ToolHubServicer, start_grpc_server
from .tools import Tool, ToolAnnotations, ToolCall

__all__ = [
    "LOCAL",
    "REDACTED",
    "AudioContent",
    "Authenticate",
    "Authenticator",
    "Authorize",
    "ConfigError",
    "Content",
    "ContentAnnotations",
    "DeadlineExceeded",
    "EmbeddedResource",
    "HubError",
    "ImageContent",
    "InvalidArgument",
    "MissingCapability",
    "Next",
    "OpenAccess",
    "OutputStore",
    "PackEnv",
    "PermissionDenied",
    "Pipeline",
    "Principal",
    "RedactingFilter",
    "Redactor",
    "RegisteredTool",
    "ResolveTool",
    "ResourceExhausted",
    "ResourceLink",
    "Stage",
    "StaticPack",
    "TextContent",
    "Tool",
    "ToolAnnotations",
    "ToolCall",
    "ToolError",
    "ToolHubError",
    "ToolHubServicer",
    "ToolNotFound",
    "ToolPack",
    "ToolRegistry",
    "ToolResult",
    "Unauthenticated",
    "Unavailable",
    "ValidateArguments",
    "execute",
    "load_pack",
    "output_read_tool",
    "start_grpc_server",
]

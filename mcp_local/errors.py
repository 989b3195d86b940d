"""Errors of the tool runtime.

    ToolHubError                 base of every error raised by mcphub code
    +-- HubError                 a protocol failure that crosses the wire as a gRPC status
    |   +-- Unauthenticated      UNAUTHENTICATED
    |   +-- PermissionDenied     PERMISSION_DENIED
    |   +-- ToolNotFound         NOT_FOUND
    |   +-- InvalidArgument      INVALID_ARGUMENT
    |   +-- MissingCapability    FAILED_PRECONDITION (data names the capabilities)
    |   +-- Conflict             FAILED_PRECONDITION (e.g. an approval already decided)
    |   +-- DeadlineExceeded     DEADLINE_EXCEEDED
    |   +-- ResourceExhausted    RESOURCE_EXHAUSTED
    |   +-- Unavailable          UNAVAILABLE
    +-- ToolError                raised by a tool: becomes an `is_error` result the model reads
    +-- ConfigError              bad configuration or pack; names the key and what was expected

A tool that fails returns a result with `is_error` set, as MCP does; only the
pipeline raises `HubError`. The gRPC edge translates `HubError` to a status
code in one place (`servicer.py`); the bridge maps status codes to JSON-RPC by
one table (`bridge/errors.py`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import grpc

from .plainerrors import ConfigError, ToolError, ToolHubError

__all__ = [
    "ConfigError",
    "Conflict",
    "DeadlineExceeded",
    "HubError",
    "InvalidArgument",
    "MissingCapability",
    "PermissionDenied",
    "ResourceExhausted",
    "ToolError",
    "ToolHubError",
    "ToolNotFound",
    "Unauthenticated",
    "Unavailable",
]


class HubError(ToolHubError):
    """A protocol failure, sent to the caller as a gRPC status (never a crash)."""

    status: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class Unauthenticated(HubError):
    status = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(HubError):
    status = grpc.StatusCode.PERMISSION_DENIED


class ToolNotFound(HubError):
    status = grpc.StatusCode.NOT_FOUND


class InvalidArgument(HubError):
    status = grpc.StatusCode.INVALID_ARGUMENT


class MissingCapability(HubError):
    """The client did not declare a capability the tool needs (MCP -32021)."""

    status = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, message: str, *, capabilities: dict[str, Any]) -> None:
        super().__init__(message, data={"requiredCapabilities": capabilities})


class Conflict(HubError):
    """The target is not in a state that allows the request (e.g. an approval already decided)."""

    status = grpc.StatusCode.FAILED_PRECONDITION


class DeadlineExceeded(HubError):
    status = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhausted(HubError):
    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(HubError):
    status = grpc.StatusCode.UNAVAILABLE

"""What a hub accepts of a sidecar's announcement: the limits both sides apply, in one place.

The hub (`mcp_remote/federation.py`) refuses an announcement of more than `MAX_SANDBOX_TOOLS`
tools, gRPC refuses a message over `MAX_MESSAGE_BYTES` (on both sides: `servicer.py`,
`hublink.py`), and the hub blocks a tool whose exposed name `<sandbox>__<tool>` is not a
`TOOL_NAME` or whose schemas, as they arrive in JSON, are not valid. The sidecar's link
(`hublink.py`) checks its hello before it sends it, and `mcphub local check` reports all of these
before an image ships.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from mcphub_proto.v1 import sidecar_pb2 as spb
from mcphub_proto.v1 import toolhub_pb2 as pb

from .errors import ConfigError
from .principals import Principal
from .registry import ToolRegistry
from .tools import TOOL_NAME

__all__ = [
    "HUB_CALLER",
    "MAX_MESSAGE_BYTES",
    "MAX_SANDBOX_TOOLS",
    "SEPARATOR",
    "exposed_name",
    "hello_message",
    "hub_problems",
    "registration_problem",
    "tool_problem",
]

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""The largest gRPC message either side sends or takes (the hub's and the sidecar's servers, the
sidecar's link)."""
MAX_SANDBOX_TOOLS = 1000
"""The most tools one announcement may carry; the hub refuses a sidecar that announces more."""
SEPARATOR = "__"
"""Between a sandbox's name and its tool's in the name the hub exposes."""
MAX_TOOL_NAME = 64
"""`TOOL_NAME`'s length limit, which the exposed name must meet."""
HUB_CALLER = Principal("hub", ("*",))
"""Who the hub's calls come as: a sidecar offers the hub the tools this principal sees."""


def exposed_name(sandbox: str, tool: str) -> str:
    return f"{sandbox}{SEPARATOR}{tool}"


def hello_message(sandbox: str, tools: Sequence[pb.Tool], version: str) -> spb.SidecarMessage:
    return spb.SidecarMessage(hello=spb.SidecarHello(sandbox=sandbox, tools=tools, version=version))


def registration_problem(message: spb.SidecarMessage) -> str | None:
    """Why the hub can never register a sidecar that sends this hello (or tools update), or None."""
    tools = message.hello.tools if message.HasField("hello") else message.tools.tools
    if len(tools) > MAX_SANDBOX_TOOLS:
        return f"the announcement has {len(tools)} tools; a sandbox may announce at most {MAX_SANDBOX_TOOLS}"
    size = message.ByteSize()
    if size > MAX_MESSAGE_BYTES:
        biggest = max(tools, key=lambda t: t.ByteSize(), default=None)
        return (
            f"the announcement is too large: {size:,} bytes, more than the {MAX_MESSAGE_BYTES:,} one "
            "message may carry"
            + (f" (the largest tool, {biggest.name[:64]!r}, is {biggest.ByteSize():,})" if biggest else "")
        )
    return None


def tool_problem(sandbox: str | None, definition: pb.Tool) -> str | None:
    """Why the hub would block this tool of `sandbox` (None when its name is not known yet: the
    token's principal), or None. The schemas are checked as the hub reads them, from their JSON."""
    from .validation import ArgumentValidator, check_output_schema

    name = definition.name
    if sandbox is not None and not TOOL_NAME.match(exposed_name(sandbox, name)):
        return (
            f"exposed as {exposed_name(sandbox, name)[:100]!r}: expected 1-{MAX_TOOL_NAME} characters of "
            "[a-zA-Z0-9_-] with the sandbox prefix"
        )
    if sandbox is None and len(name) > MAX_TOOL_NAME - len(SEPARATOR) - 1:
        return (
            f"{len(name)} characters: exposed as <sandbox>{SEPARATOR}{name[:40]}..., which may have at "
            f"most {MAX_TOOL_NAME}, it leaves no room for a sandbox's name"
        )
    try:
        schema = orjson.loads(definition.input_schema_json or b"{}")
        output = orjson.loads(definition.output_schema_json) if definition.output_schema_json else None
        ArgumentValidator(name, schema)
        if isinstance(output, dict):
            check_output_schema(name, output)
    except (orjson.JSONDecodeError, ConfigError) as exc:
        return f"as sent to the hub (in JSON, where NaN and infinities are null): {exc}"
    return None


def hub_problems(
    sandbox: str | None, registry: ToolRegistry, version: str = ""
) -> tuple[str | None, list[tuple[str, str]]]:
    """What a hub would make of this sidecar's announcement: why it cannot register at all (or
    None), and the tools it would block, with the reason, as (name, reason)."""
    offered = [r.proto for r in registry.visible_to(HUB_CALLER)]
    refused = registration_problem(hello_message(sandbox or "", offered, version))
    blocked = [(t.name, problem) for t in offered if (problem := tool_problem(sandbox, t)) is not None]
    return refused, blocked

"""The bridge's settings, in a module of their own so that building them imports no MCP SDK."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from mcp_local.principals import Principal

__all__ = ["KEEPALIVE_S", "MAX_BODY_BYTES", "MAX_SESSIONS_PER_PRINCIPAL", "BridgeOptions"]

MAX_BODY_BYTES: Final = 4 * 1024 * 1024
"""The largest request body the bridge reads."""

MAX_SESSIONS_PER_PRINCIPAL: Final = 100
"""Handshake-era MCP sessions one principal may hold open (`bridge/door.py`)."""

KEEPALIVE_S: Final = 15.0
"""A call silent this long commits to SSE and is kept alive by comments (the SDK's interval)."""


@dataclass(frozen=True, slots=True)
class BridgeOptions:
    name: str = "mcphub"
    instructions: str = (
        "mcphub: shared tools (shell, browser, cloud APIs, sandbox tools) behind an operator's policy. "
        "Some calls wait for a human approval; progress notifications say so."
    )
    default_token: str | None = None
    """Token used when a request carries none (stdio clients)."""
    max_body_bytes: int = MAX_BODY_BYTES
    express: bool = True
    """Serve plain stateless `tools/call` POSTs in the express lane (`express.py`); False: all via the SDK."""
    keepalive_s: float = KEEPALIVE_S
    """An express call silent this long commits to SSE and is kept alive by comments."""
    tool_input_schema: Callable[[str, str | None], Mapping[str, Any] | None] | None = None
    """A tool's input schema by (name, caller's bearer token), when the bridge runs beside
    the hub's registry (`ToolRegistry.header_schema_lookup`).

    On the 2026-07-28 wire the SDK checks a `tools/call`'s `Mcp-Param-*` headers against
    the tool's input schema. Without this lookup it finds the schema by listing the
    tools through the hub (a ListTools round trip on every call with arguments). The
    token is there so a tool the caller may not see is not checked (None): the hub's
    refusal answers, not a header mismatch that would reveal the tool."""
    authenticate: Callable[[str | None], Principal] | None = None
    """The hub's (or sidecar's) authenticator, when the bridge runs beside it: a handshake-era
    request must then name a principal before the SDK opens or serves a session for it, and
    sessions are bound to their principal (`bridge/door.py`). None: the SDK's defaults."""
    refusing: Callable[[], str | None] | None = None
    """With `authenticate`: why the server behind the bridge refuses calls for good now (it is
    draining for a shutdown), or None; an `initialize` then gets that answer (HTTP 503, -32033)
    rather than a session no call of which would be taken."""
    max_sessions_per_principal: int = MAX_SESSIONS_PER_PRINCIPAL
    """With `authenticate`: sessions one principal may hold; one more ends its least recently
    used idle session (or is refused, 429, when all are in use)."""

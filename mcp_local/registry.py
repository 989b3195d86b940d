"""The set of tools a server offers, grouped by source, with a revision that changes with it."""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mcphub_proto.v1 import toolhub_pb2 as pb

from .errors import ConfigError, HubError, InvalidArgument
from .principals import Authenticator, Principal
from .tools import Tool
from .validation import ArgumentValidator, check_output_schema
from .wire import tool_to_proto

__all__ = ["HeaderSchemaLookup", "RegisteredTool", "ToolRegistry", "definition_fingerprint"]

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

HeaderSchemaLookup = Callable[[str, str | None], Mapping[str, Any] | None]
"""A tool's input schema by (tool name, caller's bearer token); None: no header check."""


@dataclass(frozen=True, slots=True)
class RegisteredTool:
    """A tool with what is derived from it once: its validator and its wire form."""

    tool: Tool
    source: str
    validator: ArgumentValidator = field(repr=False)
    proto: pb.Tool = field(repr=False)
    fingerprint: int = field(default=0, repr=False)
    """Of the wire form: equal for the same definition within this process (`visible_fingerprint`)."""


def definition_fingerprint(tool: Tool) -> int:
    """Equal for tools of the same definition (the same wire form), within this process."""
    return hash(tool_to_proto(tool).SerializeToString(deterministic=True))


def _registered(tool: Tool, source: str) -> RegisteredTool:
    proto = tool_to_proto(tool)
    fingerprint = hash(proto.SerializeToString(deterministic=True))
    return RegisteredTool(tool, source, ArgumentValidator(tool.name, tool.input_schema), proto, fingerprint)


class ToolRegistry:
    """Tools by name. Each source (a pack, a sidecar) owns its tools and replaces them together."""

    def __init__(self) -> None:
        self._tools: dict[str, RegisteredTool] = {}
        self._sorted: list[RegisteredTool] = []
        # From the time the registry was made, in ms: revisions go up by one at each change, and
        # a restarted server starts above the last run's (unless that run made more changes than
        # it lasted milliseconds), so a client that kept a revision across a restart sees it change.
        self._revision = time.time_ns() // 1_000_000
        self._visible: dict[str, list[RegisteredTool]] = {}
        self._waiters: set[asyncio.Future[None]] = set()

    @property
    def revision(self) -> int:
        return self._revision

    def get(self, name: str) -> RegisteredTool | None:
        return self._tools.get(name)

    def header_schema_lookup(self, authenticator: Authenticator) -> HeaderSchemaLookup:
        """`(tool name, caller's bearer token) -> input schema or None`, for a bridge beside
        this registry to check a call's `Mcp-Param-*` headers against (no tools/list per call).

        Only schemas that declare such headers (`x-mcp-header`) are given, and only to a
        caller the tool is visible to: for any other call the check compares nothing, so
        None changes no outcome, and the caller learns nothing from it. (A header check
        that ran for a tool the caller may not see would answer "header mismatch" where
        the hub answers "may not call": it would tell the caller the tool exists.)
        """

        def lookup(name: str, token: str | None) -> Mapping[str, Any] | None:
            registered = self._tools.get(name)
            if registered is None or b"x-mcp-header" not in registered.proto.input_schema_json:
                return None
            try:
                principal = authenticator.authenticate(token)
            except HubError:  # the call itself is refused, with the hub's own words
                return None
            return registered.tool.input_schema if principal.may_use(registered.tool) else None

        return lookup

    def names(self) -> list[str]:
        """Every registered tool's name, sorted."""
        return [r.tool.name for r in self._sorted]

    def __len__(self) -> int:
        return len(self._tools)

    def set_source(self, source: str, tools: Iterable[Tool]) -> None:
        """Make `tools` the whole contribution of `source` (an empty list removes it)."""
        tools = list(tools)
        for t in tools:
            if t.output_schema is not None:
                check_output_schema(t.name, t.output_schema)
        new = [_registered(t, source) for t in tools]
        names = [r.tool.name for r in new]
        if len(set(names)) != len(names):
            raise ConfigError(f"{source}: a tool name appears twice in {sorted(names)}")
        for entry in new:
            other = self._tools.get(entry.tool.name)
            if other is not None and other.source != source:
                raise ConfigError(
                    f"tool {entry.tool.name!r} of {source} is already provided by {other.source}"
                )
        kept = {n: r for n, r in self._tools.items() if r.source != source}
        kept.update((r.tool.name, r) for r in new)
        self._tools = kept
        self._sorted = sorted(kept.values(), key=lambda r: r.tool.name)
        self._changed()

    def sources(self) -> set[str]:
        return {r.source for r in self._tools.values()}

    def _changed(self) -> None:
        self._revision += 1
        self._visible.clear()
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def principals_changed(self) -> None:
        """The principals (their tools or roles) were reloaded: what each may see is worked out
        again, and watchers are woken (`ToolService.watch_tools` tells only those whose list
        changed)."""
        self._changed()

    def visible_to(self, principal: Principal) -> list[RegisteredTool]:
        """The tools `principal` may call, sorted by name (cached until the next change)."""
        cached = self._visible.get(principal.name)
        if cached is None:
            cached = [r for r in self._sorted if principal.may_use(r.tool)]
            self._visible[principal.name] = cached
        return cached

    def visible_fingerprint(self, principal: Principal) -> int:
        """Equal as long as `visible_to(principal)` lists the same definitions."""
        return hash(tuple(r.fingerprint for r in self.visible_to(principal)))

    def page(self, principal: Principal, cursor: str, page_size: int) -> tuple[list[RegisteredTool], str]:
        """One page of `visible_to(principal)` after `cursor`, and the cursor of the next page."""
        tools = self.visible_to(principal)
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        start = 0
        if cursor:
            after = _decode_cursor(cursor)
            start = next((i for i, r in enumerate(tools) if r.tool.name > after), len(tools))
        chunk = tools[start : start + size]
        more = start + size < len(tools)
        return chunk, _encode_cursor(chunk[-1].tool.name) if more and chunk else ""

    async def watch(self) -> AsyncIterator[int]:
        """The current revision now, then the new one after each change."""
        seen = self._revision
        yield seen
        loop = asyncio.get_running_loop()
        while True:
            if self._revision == seen:
                waiter = loop.create_future()
                self._waiters.add(waiter)
                try:
                    await waiter
                finally:
                    self._waiters.discard(waiter)
            seen = self._revision
            yield seen


def _encode_cursor(name: str) -> str:
    return base64.urlsafe_b64encode(b"after:" + name.encode()).decode()


def _invalid_cursor(cursor: str) -> str:
    # MCP clients and gRPC callers know the same cursor by different names.
    return (
        f"invalid cursor {cursor[:40]!r}: pass the cursor the previous page gave "
        "(nextCursor of an MCP tools/list result, next_cursor of a gRPC ListTools response)"
    )


def _decode_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor.encode())
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgument(_invalid_cursor(cursor)) from exc
    if not raw.startswith(b"after:"):
        raise InvalidArgument(_invalid_cursor(cursor))
    return raw[len(b"after:") :].decode(errors="replace")

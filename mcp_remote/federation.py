"""Federation: sandboxes' sidecars register over one stream each, and their tools join the hub's registry.

    sidecar --Connect(stream)--> SandboxRegistryServicer --> SandboxConnection
                                                              |  tools as `<sandbox>__<tool>`
    caller --> hub pipeline (auth, authorize, gate, audit) --> registry --> forward down the stream

Who may register: a principal with the role `sandbox` registers the sandbox of
its own name; a principal with the role `operator` (e.g. `local` on an open
loopback hub) may register any name it gives. Who may call a sandbox's tools:
the principals whose tool globs match `<sandbox>__*`, checked by the hub's
ordinary `Authorize` stage. Because the tools live in the hub's registry, every
stage of the dispatch path applies to them; tools know nothing of it.

Rug-pull defence (see `pins.py`): a tool whose definition differs from the one
pinned for that sandbox is not exposed until an operator accepts it.
Connections, pins and blocks are reported to `on_event` (the audit log's hook).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import grpc
import orjson

from mcp_local.announcement import MAX_SANDBOX_TOOLS, SEPARATOR, exposed_name
from mcp_local.content import ToolResult
from mcp_local.errors import (
    ConfigError,
    Conflict,
    DeadlineExceeded,
    HubError,
    InvalidArgument,
    PermissionDenied,
    ToolError,
    ToolNotFound,
    Unavailable,
)
from mcp_local.principals import Authenticator, Principal, bearer_token, first_authorization
from mcp_local.registry import ToolRegistry
from mcp_local.shown import shown
from mcp_local.tools import TOOL_NAME, Tool, ToolCall
from mcp_local.validation import ArgumentValidator, check_output_schema
from mcp_local.wire import annotations_from_proto, result_from_proto
from mcphub_proto.metadata import AUTHORIZATION
from mcphub_proto.v1 import sidecar_pb2 as spb
from mcphub_proto.v1 import sidecar_pb2_grpc as spb_grpc
from mcphub_proto.v1 import toolhub_pb2 as pb

from .config import SANDBOX_NAME as SANDBOX_NAME_PATTERN
from .config import SANDBOX_NAME_RULE
from .pins import ToolPins, definition_hash

__all__ = [
    "ROLE_SANDBOX",
    "SANDBOX_META_KEY",
    "SEPARATOR",
    "Federation",
    "SandboxConnection",
    "SandboxEvent",
    "exposed_name",
]

logger = logging.getLogger(__name__)

ROLE_SANDBOX = "sandbox"
ROLE_OPERATOR = "operator"
SANDBOX_NAME = re.compile(SANDBOX_NAME_PATTERN)
SANDBOX_META_KEY = "mcphub/sandbox"
MAX_TOOLS = MAX_SANDBOX_TOOLS  # shared with the sidecar (`mcphub local check`, its link)
_CANCELLED = grpc.StatusCode.CANCELLED
REPLACED = grpc.StatusCode.ABORTED
"""The status that ends a stream taken over by a new connection of the same sandbox."""


def _check_count(tools: Sequence[pb.Tool]) -> None:
    if len(tools) > MAX_TOOLS:
        raise InvalidArgument(f"a sandbox may announce at most {MAX_TOOLS} tools, not {len(tools)}")


@dataclass(frozen=True, slots=True)
class SandboxEvent:
    """Something an operator (and the audit log) should know about a sandbox.

    kind: connected | disconnected | replaced | rejected | tool_pinned | tool_blocked |
    tool_accepted | pins_dropped | forgotten | accept_refused | forget_refused

    `replaced`: a new connection of the same sandbox took over this one's stream (the sidecar
    reconnecting after its old stream broke, or a second sidecar holding the sandbox's token).
    `rejected`: the hub refused a connection (`principal` empty when its token is unknown;
    `sandbox` the name it asked for). `pins_dropped`: an announcement pinned new tools and the
    least recently announced lost their pins (see `pins.MAX_PINS_PER_SANDBOX`). `forgotten`: an
    operator dropped the pins of a sandbox that is gone. `accept_refused`, `forget_refused`: the
    hub refused `principal`'s attempt to accept a tool of `sandbox`, or to forget it.
    `principal` is who acted: the sandbox's principal, or for `tool_accepted`, `forgotten` and
    the refused attempts the operator. Refusals repeat at no cost to whoever
    repeats them, so their repeats are counted (`attempts`, see `Federation._refused`).
    """

    kind: str
    sandbox: str
    principal: str = ""
    tool: str = ""
    detail: str = ""
    pinned_sha256: str = ""
    announced_sha256: str = ""
    peer: str = ""
    """Where a refused attempt came from (the peer's address without its port)."""
    attempts: int = 0
    """For a refusal: how many attempts this record stands for (1, or its repeats since the last)."""


EventHook = Callable[[SandboxEvent], None]

REPEATS_RECORDED_AFTER_S = 60.0
"""A refusal that repeats one already recorded is counted, and the count recorded this long
after the last record of it (see `Federation._refused`)."""
REFUSALS_KEPT = 4096
"""Refusals the hub remembers, to count their repeats; when full, the counts so far are
recorded and it starts again."""
PINS_FLUSH_AT_STOP_S = 5.0
"""How long a stop waits for the pins file to take the last changes."""
SHOWN_NAME = 80
"""Characters of a sandbox name a refusal quotes (a refused name has not been checked)."""


_ACTS_OF_OTHERS = frozenset({"rejected", "tool_accepted", "forgotten", "accept_refused", "forget_refused"})
"""Events whose principal need not be the sandbox's: their log lines always name it."""


@dataclass(slots=True)
class _Repeats:
    """One refusal and its repeats not yet recorded."""

    event: SandboxEvent
    recorded_at: float
    """Event-loop time of the last record of it."""
    unrecorded: int = 0
    timer: asyncio.TimerHandle | None = None


class _Gone:
    """Put in a pending call's inbox when the sandbox goes away."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


_Inbox = asyncio.Queue[pb.CallToolEvent | spb.SidecarCallFailure | _Gone]


class SandboxConnection:
    """One sidecar's live stream: what it announced, what is exposed, and its calls in flight."""

    def __init__(self, sandbox: str, principal: str, version: str) -> None:
        self.sandbox = sandbox
        self.principal = principal
        self.version = version
        self.connected_at_ms = int(time.time() * 1000)
        self.outbound: asyncio.Queue[spb.HubMessage | None] = asyncio.Queue()
        self.pending: dict[str, _Inbox] = {}
        self.announced: dict[str, pb.Tool] = {}
        self.hashes: dict[str, str] = {}
        self.exposed: dict[str, Tool] = {}
        self.blocked: dict[str, spb.BlockedTool] = {}
        self.last_heard = asyncio.get_running_loop().time()
        self.closed: str | None = None
        self.close_code: grpc.StatusCode | None = None
        """The status the stream ends with when the hub ended it for a reason the sidecar must act on."""

    def send(self, message: spb.HubMessage) -> None:
        if self.closed is None:
            self.outbound.put_nowait(message)

    def close(self, reason: str, code: grpc.StatusCode | None = None) -> None:
        """End the stream (the Connect handler stops, with `code` and `reason` when a code is
        given) and fail every call in flight."""
        if self.closed is not None:
            return
        self.closed = reason
        self.close_code = code
        self.outbound.put_nowait(None)
        for inbox in self.pending.values():
            inbox.put_nowait(_Gone(reason))

    def route(self, call_id: str, item: pb.CallToolEvent | spb.SidecarCallFailure) -> None:
        inbox = self.pending.get(call_id)
        if inbox is not None:  # an unknown id is a call that already ended (e.g. cancelled)
            inbox.put_nowait(item)

    async def forward(self, tool: str, call: ToolCall) -> ToolResult:
        """Send `call` down the stream and relay its events until the result comes back."""
        if self.closed is not None:
            raise ToolError(f"sandbox {self.sandbox!r} is not connected: {self.closed}")
        call_id = secrets.token_hex(8)
        inbox: _Inbox = asyncio.Queue()
        self.pending[call_id] = inbox
        timeout_ms = 0
        if call.deadline is not None:
            timeout_ms = max(1, int((call.deadline - asyncio.get_running_loop().time()) * 1000))
        request = spb.SidecarCallRequest(
            call_id=call_id,
            request=pb.CallToolRequest(
                name=tool,
                arguments_json=call.arguments_json,
                client_capabilities_json=call.client_capabilities_json,
                request_id=call.request_id,
            ),
            principal=call.principal.name if call.principal else "",
            timeout_ms=timeout_ms,
        )
        try:
            self.send(spb.HubMessage(call=request))
            while True:
                item = await inbox.get()
                if isinstance(item, _Gone):
                    raise ToolError(f"sandbox {self.sandbox!r} went away while {tool} ran ({item.reason})")
                if isinstance(item, spb.SidecarCallFailure):
                    _raise_failure(self.sandbox, tool, item)
                kind = item.WhichOneof("event")
                if kind == "result":
                    return result_from_proto(item.result)
                if kind == "progress":
                    p = item.progress
                    await call.progress(p.progress, p.total if p.HasField("total") else None, p.message)
                elif kind == "output":
                    await call.output(item.output.data, item.output.stream or "stdout")
        except asyncio.CancelledError:
            self.send(spb.HubMessage(cancel=spb.SidecarCancel(call_id=call_id)))
            raise
        finally:
            self.pending.pop(call_id, None)

    def info(self) -> spb.SandboxInfo:
        return spb.SandboxInfo(
            name=self.sandbox,
            principal=self.principal,
            exposed=sorted(self.exposed),
            blocked=[self.blocked[n] for n in sorted(self.blocked)],
            connected_at_unix_ms=self.connected_at_ms,
            version=self.version,
        )


_STOPPING = {
    grpc.StatusCode.UNAVAILABLE.value[0]: (
        "the sandbox's sidecar is shutting down and says the call did not start"
    ),
    grpc.StatusCode.CANCELLED.value[0]: "the sandbox's sidecar stopped the call for its shutdown",
}
"""What the hub says of a stopping sidecar's failure codes. A sandbox is not trusted: its word
is a tool error that quotes it, never a status of the hub's (an UNAVAILABLE makes clients' retry
policies call again, and a call the sandbox claims it did not start may have run) nor a refusal
of the hub's (`stopped`), which only the hub may answer."""


def _raise_failure(sandbox: str, tool: str, failure: spb.SidecarCallFailure) -> NoReturn:
    where = f"sandbox {sandbox!r}, tool {tool}"
    if failure.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]:
        raise DeadlineExceeded(f"{where}: {failure.message}")
    stopping = _STOPPING.get(failure.code)
    if stopping is not None:
        raise ToolError(f"{where}: {stopping}: {failure.message}")
    raise ToolError(f"{where}: {failure.message}")


class Federation:
    """The hub's registry of connected sandboxes."""

    def __init__(
        self,
        registry: ToolRegistry,
        authenticator: Authenticator,
        state_dir: Path,
        *,
        on_event: EventHook | None = None,
        ping_interval_s: float = 15.0,
        hello_timeout_s: float = 10.0,
    ) -> None:
        self.registry = registry
        self.authenticator = authenticator
        self.pins = ToolPins(state_dir)
        self.on_event = on_event
        self.ping_interval_s = ping_interval_s
        self.hello_timeout_s = hello_timeout_s
        self.connections: dict[str, SandboxConnection] = {}
        self._refusals: dict[tuple[str, str, str, str, str], _Repeats] = {}
        self._stopping = False

    def service(self) -> tuple[Any, Any, str]:
        """`(add_to_server, servicer, service name)` for `start_grpc_server(extra_services=...)`."""
        name = spb.DESCRIPTOR.services_by_name["SandboxRegistry"].full_name
        return spb_grpc.add_SandboxRegistryServicer_to_server, SandboxRegistryServicer(self), name

    async def close(self) -> None:
        """End every sandbox's stream (each sidecar is told the hub is stopping, and redials) and
        record it, with the counts of refusals not yet recorded."""
        for conn in list(self.connections.values()):
            self.disconnect(conn, "the hub is stopping")
        self._stopping = True
        self._record_all_repeats()
        try:
            async with asyncio.timeout(PINS_FLUSH_AT_STOP_S):
                await self.pins.flush()
        except (TimeoutError, OSError) as exc:  # a hung or full disk must not hold the stop
            logger.error("the sandbox tool pins may not all be in their file at stop: %s", exc or "timed out")
        await asyncio.sleep(0)

    # --- events ----------------------------------------------------------------------------

    def _event(self, event: SandboxEvent) -> None:
        level = logging.INFO
        if event.kind in ("tool_blocked", "rejected", "replaced", "accept_refused", "forget_refused"):
            level = logging.WARNING
        text = f"sandbox {event.sandbox or '?'}: {event.kind}"
        if event.tool:
            text += f" {event.tool}"
        if event.principal != event.sandbox or event.kind in _ACTS_OF_OTHERS:
            text += f" (principal {event.principal})" if event.principal else " (no principal)"
        if event.peer:
            text += f" from {event.peer}"
        if event.attempts > 1:
            text += f" ({event.attempts} attempts since the last record of it)"
        if event.detail:
            text += f": {event.detail}"
        # Names, versions and reasons come from the sidecar: escaped, none can forge a log line of
        # its own or send a terminal escapes.
        logger.log(level, "%s", shown(text))
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # a broken hook must not break registration
                logger.exception("sandbox event hook failed")

    def _refused(self, event: SandboxEvent) -> None:
        """Record a refusal (`event.attempts` is set here).

        A sidecar whose token is unknown redials for ever, and anybody may repeat a refused
        attempt at no cost: one record each would fill the log, one record for all would hide
        how many there were. So the first is recorded at once (`attempts: 1`), and its repeats
        are counted: REPEATS_RECORDED_AFTER_S after the last record of it, one record carries
        how many came since (`attempts: N`), as refused decisions of approvals are."""
        if self._stopping:  # no timer would fire: recorded as it comes
            self._event(replace(event, attempts=1))
            return
        if not event.principal:
            # Nobody known: what such a caller names is its own choice, and each new name would be
            # a new record. Counted by where it comes from.
            event = replace(event, sandbox="")
        key = (event.kind, event.sandbox, event.principal, event.peer, event.detail)
        repeats = self._refusals.get(key)
        loop = asyncio.get_running_loop()
        if repeats is None:
            if len(self._refusals) >= REFUSALS_KEPT:
                self._record_all_repeats()
            self._refusals[key] = _Repeats(event, loop.time())
            self._event(replace(event, attempts=1))
            return
        repeats.unrecorded += 1
        if repeats.timer is None:
            due = repeats.recorded_at + REPEATS_RECORDED_AFTER_S
            repeats.timer = loop.call_at(due, self._record_repeats, key)

    def _record_repeats(self, key: tuple[str, str, str, str, str]) -> None:
        repeats = self._refusals.get(key)
        if repeats is None:
            return
        repeats.timer = None
        if not repeats.unrecorded:
            return
        count, repeats.unrecorded = repeats.unrecorded, 0
        repeats.recorded_at = asyncio.get_running_loop().time()
        self._event(replace(repeats.event, attempts=count))

    def _record_all_repeats(self) -> None:
        """Record every count not yet recorded, and forget the refusals."""
        for key, repeats in list(self._refusals.items()):
            if repeats.timer is not None:
                repeats.timer.cancel()
            self._record_repeats(key)
        self._refusals.clear()

    # --- registration ----------------------------------------------------------------------

    def sandbox_name(self, principal: Principal, wanted: str) -> str:
        """The name `principal` registers under; raises PermissionDenied/InvalidArgument."""
        if principal.has_role(ROLE_SANDBOX):
            if wanted and wanted != principal.name:
                raise PermissionDenied(
                    f"principal {principal.name!r} may register the sandbox {principal.name!r} only, "
                    f"not {wanted!r}"
                )
            name = principal.name
        elif principal.has_role(ROLE_OPERATOR):
            if not wanted:
                raise InvalidArgument(
                    "name the sandbox in hello.sandbox (or use a token of a `sandbox` principal)"
                )
            name = wanted
        else:
            raise PermissionDenied(
                f"principal {principal.name!r} may not register a sandbox: it needs the role `sandbox`"
            )
        if not SANDBOX_NAME.fullmatch(name):
            raise InvalidArgument(f"sandbox name {name[:80]!r}: expected {SANDBOX_NAME_RULE}")
        return name

    def connect(self, conn: SandboxConnection, tools: Sequence[pb.Tool]) -> spb.Welcome:
        # Refused before it replaces anything: a hello the hub will not take must not knock
        # the registered sidecar off (over and over, with a minute's backoff each time).
        _check_count(tools)
        old = self.connections.get(conn.sandbox)
        if old is not None:
            # The newest connection wins: a sidecar whose stream broke (and the hub has not
            # noticed yet) must be able to take its place. The old stream ends with ABORTED and
            # says why, so a second sidecar with the same token knows it lost, backs off and
            # says so, instead of both taking over from each other in a loop without a trace.
            reason = (
                f"replaced by a new connection of the same sandbox (principal {conn.principal}, "
                f"version {conn.version or '?'}); if this sidecar did not reconnect, another one "
                "is using this sandbox's token"
            )
            old.close(reason, REPLACED)
            self._event(SandboxEvent("replaced", old.sandbox, old.principal, detail=reason))
        self.connections[conn.sandbox] = conn
        self._event(
            SandboxEvent("connected", conn.sandbox, conn.principal, detail=f"version {conn.version or '?'}")
        )
        return self.announce(conn, tools)

    def announce(self, conn: SandboxConnection, tools: Sequence[pb.Tool]) -> spb.Welcome:
        """Take `tools` as the sandbox's whole tool set: pin new ones, block changed ones, expose the rest."""
        _check_count(tools)
        announced: dict[str, pb.Tool] = {}
        hashes: dict[str, str] = {}
        exposed: dict[str, Tool] = {}
        blocked: dict[str, spb.BlockedTool] = {}
        new_pins: dict[str, str] = {}
        for definition in tools:
            own = definition.name
            if own in announced:
                blocked[own] = spb.BlockedTool(name=own, reason="announced twice")
                exposed.pop(own, None)
                continue
            announced[own] = definition
            digest = hashes[own] = definition_hash(definition)
            try:
                tool = self._remote_tool(conn.sandbox, definition)
            except ConfigError as exc:
                blocked[own] = spb.BlockedTool(name=own, reason=str(exc), announced_sha256=digest)
                continue
            pinned = self.pins.get(conn.sandbox, own)
            if pinned is None:
                new_pins[own] = digest
            elif pinned != digest:
                blocked[own] = spb.BlockedTool(
                    name=own,
                    reason=(
                        "its definition changed since it was pinned; an operator accepts the new one with "
                        f"`mcphub sandboxes accept {conn.sandbox} {own}`"
                    ),
                    pinned_sha256=pinned,
                    announced_sha256=digest,
                )
                continue
            exposed[own] = tool
        self.pins.announced(conn.sandbox, announced)
        dropped = self.pins.set(conn.sandbox, new_pins)
        if dropped:
            self._event(
                SandboxEvent(
                    "pins_dropped",
                    conn.sandbox,
                    conn.principal,
                    detail=(
                        f"the pins of {len(dropped)} tools not announced lately were dropped, "
                        f"{self.pins.max_per_sandbox} are kept per sandbox (e.g. {dropped[0]})"
                    ),
                )
            )
        for own, digest in new_pins.items():
            self._event(
                SandboxEvent("tool_pinned", conn.sandbox, conn.principal, own, announced_sha256=digest)
            )
        for own, b in blocked.items():
            if own not in conn.blocked or conn.blocked[own].announced_sha256 != b.announced_sha256:
                self._event(
                    SandboxEvent(
                        "tool_blocked",
                        conn.sandbox,
                        conn.principal,
                        own,
                        b.reason,
                        b.pinned_sha256,
                        b.announced_sha256,
                    )
                )
        conn.announced, conn.hashes, conn.blocked = announced, hashes, blocked
        self._expose(conn, exposed)
        return spb.Welcome(
            sandbox=conn.sandbox,
            exposed=sorted(t.name for t in conn.exposed.values()),
            blocked=[blocked[n] for n in sorted(blocked)],
            ping_interval_s=max(1, round(self.ping_interval_s)),
        )

    def _expose(self, conn: SandboxConnection, exposed: dict[str, Tool]) -> None:
        try:
            self.registry.set_source(f"sandbox:{conn.sandbox}", list(exposed.values()))
        except ConfigError as exc:  # a name clash with a hub tool
            self.registry.set_source(f"sandbox:{conn.sandbox}", [])
            raise PermissionDenied(f"sandbox {conn.sandbox!r}: {exc}") from exc
        conn.exposed = exposed

    def _remote_tool(self, sandbox: str, definition: pb.Tool) -> Tool:
        name = exposed_name(sandbox, definition.name)
        if not TOOL_NAME.match(definition.name) or not TOOL_NAME.match(name):
            raise ConfigError(
                f"tool name {name[:100]!r}: expected 1-64 characters of [a-zA-Z0-9_-] with the sandbox prefix"
            )
        try:
            schema = orjson.loads(definition.input_schema_json or b"{}")
            output_schema = (
                orjson.loads(definition.output_schema_json) if definition.output_schema_json else None
            )
            meta = orjson.loads(definition.meta_json) if definition.meta_json else {}
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"tool {definition.name!r}: a schema is not valid JSON: {exc}") from exc
        if not isinstance(schema, dict) or not isinstance(meta, dict):
            raise ConfigError(f"tool {definition.name!r}: input_schema and _meta must be JSON objects")
        ArgumentValidator(definition.name, schema)  # raises ConfigError for an invalid schema
        if isinstance(output_schema, dict):  # anything else is refused by Tool itself
            check_output_schema(definition.name, output_schema)
        return Tool(
            name=name,
            title=definition.title,
            description=definition.description,
            input_schema=schema,
            output_schema=output_schema,
            # Passed through untouched: the gate may only let a sidecar's annotations raise the risk.
            annotations=annotations_from_proto(definition.annotations),
            meta={**meta, SANDBOX_META_KEY: sandbox},
            handler=partial(self._forward, sandbox, definition.name),
        )

    async def _forward(self, sandbox: str, tool: str, call: ToolCall) -> ToolResult:
        conn = self.connections.get(sandbox)
        if conn is None:
            raise ToolError(f"sandbox {sandbox!r} is not connected to the hub")
        return await conn.forward(tool, call)

    def missing_tool(self, call: ToolCall) -> HubError | None:
        """Why a call names a tool the registry lacks, when it is a tool of a sandbox the hub
        knows (pinned for it) that is not connected now: after the hub's restart, until its
        sidecar registers again, or after its sidecar went away. UNAVAILABLE, to call again
        later, rather than "unknown tool"; None otherwise, for a caller that may not call the
        name (it is told no more than of any unknown name), and for a sandbox whose principal is
        no longer configured (a retrying client would call again for ever)."""
        sandbox, separator, tool = call.name.partition(SEPARATOR)
        if not separator or sandbox in self.connections or self.pins.get(sandbox, tool) is None:
            return None
        if call.principal is None or not call.principal.may_call(call.name):
            return None
        by_name = getattr(self.authenticator, "by_name", None)
        registrant = by_name().get(sandbox) if by_name is not None else None
        if by_name is not None and (registrant is None or not registrant[1].has_role("sandbox")):
            return None  # no principal can register it any more (removed from the config): unknown
        return Unavailable(
            f"sandbox {sandbox!r} is not connected to the hub (its sidecar has not registered since the "
            "hub started, or went away); call again once it has registered",
            data={"sandbox": sandbox},  # the sandbox is unavailable, not the hub (`mcphub call` says so)
        )

    def reject(self, sandbox: str, principal: str, reason: str, peer: str = "") -> None:
        """Record a refused connection: `sandbox` the name it asked for (or "" when it named none),
        `principal` who it authenticated as ("" for an unknown token)."""
        self._refused(SandboxEvent("rejected", sandbox[:SHOWN_NAME], principal, detail=reason, peer=peer))

    def refuse_attempt(self, kind: str, sandbox: str, principal: str, reason: str, peer: str = "") -> None:
        """Record a refused attempt (`kind`: accept_refused, forget_refused) about `sandbox`."""
        self._refused(SandboxEvent(kind, sandbox[:SHOWN_NAME], principal, detail=reason, peer=peer))

    def disconnect(
        self, conn: SandboxConnection, reason: str, code: grpc.StatusCode | None = grpc.StatusCode.UNAVAILABLE
    ) -> None:
        """End `conn`'s stream: the sidecar is told `reason` with `code` (None: the stream just ends)."""
        conn.close(reason, code)
        if self._unregister(conn):
            self._event(SandboxEvent("disconnected", conn.sandbox, conn.principal, detail=reason))

    def _unregister(self, conn: SandboxConnection) -> bool:
        if self.connections.get(conn.sandbox) is not conn:
            return False  # already replaced by a newer connection
        del self.connections[conn.sandbox]
        self.registry.set_source(f"sandbox:{conn.sandbox}", [])
        return True

    def accept(self, sandbox: str, names: Sequence[str], by: str) -> list[str]:
        """Pin the announced definitions of blocked tools (all, or `names`) and expose them;
        `by` is the operator's principal, the one the records name."""
        conn = self.connections.get(sandbox)
        if conn is None:
            raise ToolNotFound(f"sandbox {sandbox!r} is not connected; accept its tools while it is")
        wanted = list(names) or sorted(conn.blocked)
        unknown = [n for n in wanted if n not in conn.blocked]
        if unknown:
            listed = ", ".join(sorted(conn.blocked)) or "none"
            raise InvalidArgument(
                f"sandbox {sandbox!r} has no blocked tool {unknown[0]!r} (blocked: {listed})"
            )
        changed = [n for n in wanted if conn.blocked[n].pinned_sha256]
        invalid = [n for n in wanted if not conn.blocked[n].pinned_sha256]
        if invalid:
            raise InvalidArgument(
                f"tool {invalid[0]!r} cannot be accepted: {conn.blocked[invalid[0]].reason}"
            )
        self.pins.set(sandbox, {n: conn.hashes[n] for n in changed})
        for n in changed:
            b = conn.blocked[n]
            self._event(
                SandboxEvent("tool_accepted", sandbox, by, n, "", b.pinned_sha256, b.announced_sha256)
            )
        self.announce(conn, list(conn.announced.values()))
        return changed

    def forget(self, sandbox: str, by: str) -> int:
        """Drop the pins of a sandbox that is gone for good; `by` is the operator's principal.
        Returns how many there were."""
        if sandbox in self.connections:
            raise Conflict(
                f"sandbox {sandbox!r} is connected: stop its sidecar (or remove its principal) first; "
                "forgetting its pins now would expose every tool it announces next without a check"
            )
        count = self.pins.forget(sandbox)
        if not count:
            known = ", ".join(self.pins.sandboxes()[:20]) or "none"
            raise ToolNotFound(
                f"no pins of a sandbox {sandbox[:SHOWN_NAME]!r} (sandboxes with pins: {known})"
            )
        self._event(SandboxEvent("forgotten", sandbox, by, detail=f"the pins of {count} tools"))
        return count

    async def flush(self) -> None:
        """Wait until the pins file holds every pin made so far."""
        await self.pins.flush()


def _token(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    return bearer_token(
        first_authorization(v for k, v in context.invocation_metadata() or () if k == AUTHORIZATION)
    )


def _peer(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The caller's address without its port (one sidecar redials from a new port each time)."""
    peer = context.peer() or ""
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.split(":", 1)[1].rsplit(":", 1)[0]
    return peer


async def _hello(messages: AsyncIterator[spb.SidecarMessage], timeout_s: float) -> spb.SidecarHello:
    try:
        async with asyncio.timeout(timeout_s):
            first: spb.SidecarMessage = await messages.__anext__()
    except (TimeoutError, StopAsyncIteration):
        raise InvalidArgument("expected a hello as the first message") from None
    if first.WhichOneof("message") != "hello":
        raise InvalidArgument("expected a hello as the first message")
    return first.hello


class SandboxRegistryServicer(spb_grpc.SandboxRegistryServicer):
    def __init__(self, federation: Federation) -> None:
        self._f = federation

    def _principal(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        return self._f.authenticator.authenticate(_token(context))

    async def Connect(
        self, request_iterator: AsyncIterator[spb.SidecarMessage], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[spb.HubMessage]:
        f = self._f
        messages = request_iterator.__aiter__()
        conn: SandboxConnection | None = None
        principal: Principal | None = None
        hello: spb.SidecarHello | None = None
        try:
            # An unknown token is refused before its hello is read: a hello may be 16 MiB, and
            # parsing one for anybody who dials cost the hub tens of MB each. (The sidecar may then
            # be told INTERNAL, "Internal error from Core", in place of UNAUTHENTICATED, when the
            # refusal races its hello: docs/sidecar.md.)
            principal = self._principal(context)
            hello = await _hello(messages, f.hello_timeout_s)
            # Asked again: a reload may have revoked the token while the hub waited for the hello.
            principal = self._principal(context)
            name = f.sandbox_name(principal, hello.sandbox)
            conn = SandboxConnection(name, principal.name, hello.version)
            welcome = f.connect(conn, hello.tools)
        except HubError as exc:
            if conn is not None:
                f.disconnect(conn, exc.message, None)
            wanted = hello.sandbox if hello is not None else ""
            if not wanted and principal is not None and principal.has_role(ROLE_SANDBOX):
                wanted = principal.name
            f.reject(wanted, principal.name if principal else "", exc.message, _peer(context))
            await context.abort(exc.status, exc.message)
            raise AssertionError("abort returned") from None  # pragma: no cover
        reader = asyncio.create_task(self._read(conn, messages), name=f"mcphub-sandbox-{name}")
        loop = asyncio.get_running_loop()
        reason = "the sidecar ended the stream"
        try:
            yield spb.HubMessage(welcome=welcome)
            nonce = 0
            interval = f.ping_interval_s
            next_ping = loop.time() + interval
            while True:
                # Two clocks, each checked when it is due (not only when a ping is): a ping every
                # interval, however busy the stream is, and silence for three intervals ends it.
                now = loop.time()
                silent_until = conn.last_heard + 3 * interval
                if now >= silent_until:
                    reason = f"nothing heard for {now - conn.last_heard:.0f}s"
                    break
                if now >= next_ping:
                    nonce += 1
                    next_ping = now + interval
                    yield spb.HubMessage(ping=spb.Ping(nonce=nonce))
                    continue
                try:
                    async with asyncio.timeout(min(next_ping, silent_until) - now):
                        message = await conn.outbound.get()
                except TimeoutError:
                    continue
                if message is None:
                    reason = conn.closed or reason
                    break
                yield message
        except asyncio.CancelledError:
            reason = "the stream broke"
            raise
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            f.disconnect(conn, reason, None)
        if conn.close_code is not None:
            # The hub ended the stream (a reload that removed the principal, the hub stopping, a
            # newer connection): the sidecar logs why, and its callers' errors say the same.
            await context.abort(conn.close_code, reason)

    async def _read(self, conn: SandboxConnection, messages: AsyncIterator[spb.SidecarMessage]) -> None:
        loop = asyncio.get_running_loop()
        reason = "the sidecar ended the stream"
        code: grpc.StatusCode | None = None  # a stream the sidecar ended needs no status from the hub
        try:
            async for message in messages:
                conn.last_heard = loop.time()
                kind = message.WhichOneof("message")
                if kind == "event":
                    conn.route(message.event.call_id, message.event.event)
                elif kind == "failure":
                    conn.route(message.failure.call_id, message.failure)
                elif kind == "tools":
                    try:
                        conn.send(spb.HubMessage(welcome=self._f.announce(conn, message.tools.tools)))
                    except HubError as exc:
                        reason, code = exc.message, exc.status
                        break
                elif kind == "hello":
                    reason, code = "a second hello on one stream", grpc.StatusCode.INVALID_ARGUMENT
                    break
        except grpc.aio.AioRpcError as exc:
            reason = f"the stream broke ({exc.code().name})"
        conn.close(reason, code)

    async def ListSandboxes(
        self, request: spb.ListSandboxesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> spb.ListSandboxesResponse:
        try:
            principal = self._principal(context)
            if not principal.has_role(ROLE_OPERATOR):
                raise PermissionDenied(
                    f"principal {principal.name!r} may not list sandboxes: it needs the role `operator`"
                )
        except HubError as exc:
            await context.abort(exc.status, exc.message)
        conns = sorted(self._f.connections.values(), key=lambda c: c.sandbox)
        return spb.ListSandboxesResponse(sandboxes=[c.info() for c in conns])

    async def AcceptTools(
        self, request: spb.AcceptToolsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> spb.AcceptToolsResponse:
        principal: Principal | None = None
        try:
            principal = self._principal(context)
            if not principal.has_role(ROLE_OPERATOR):
                raise PermissionDenied(
                    f"principal {principal.name!r} may not accept tools: it needs the role `operator`"
                )
            accepted = self._f.accept(request.sandbox, list(request.tools), principal.name)
        except HubError as exc:
            who = principal.name if principal else ""
            self._f.refuse_attempt("accept_refused", request.sandbox, who, exc.message, _peer(context))
            await context.abort(exc.status, exc.message)
        await self._written(context, "accepted")
        return spb.AcceptToolsResponse(accepted=accepted)

    async def _written(self, context: grpc.aio.ServicerContext[Any, Any], what: str) -> None:
        """The pins file holds the change before the operator is told it is done: else a restart
        would block an accepted tool again, or bring forgotten pins back."""
        try:
            await self._f.flush()
        except OSError as exc:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"{what} for this hub's run, but the pins file cannot be written ({exc.strerror or exc}): "
                "a restart would undo it; the hub's log says more, and the next change writes the file again",
            )

    async def ForgetSandbox(
        self, request: spb.ForgetSandboxRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> spb.ForgetSandboxResponse:
        principal: Principal | None = None
        try:
            principal = self._principal(context)
            if not principal.has_role(ROLE_OPERATOR):
                raise PermissionDenied(
                    f"principal {principal.name!r} may not forget a sandbox: it needs the role `operator`"
                )
            forgotten = self._f.forget(request.sandbox, principal.name)
        except HubError as exc:
            who = principal.name if principal else ""
            self._f.refuse_attempt("forget_refused", request.sandbox, who, exc.message, _peer(context))
            await context.abort(exc.status, exc.message)
        await self._written(context, "forgotten")
        return spb.ForgetSandboxResponse(pins=forgotten)

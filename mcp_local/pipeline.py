"""The dispatch pipeline: explicit, ordered stages every call passes through.

    authenticate -> resolve -> authorize -> [hub stages: gate, audit, rate limits] -> validate -> execute

A stage is `async (call, call_next) -> ToolResult`: it may refuse the call
(raise a `HubError`), answer it without going further (return a result), or
pass it on and look at what comes back. The pipeline is composed once, at
start-up; per call it costs one coroutine frame per stage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import reprlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, Protocol

import orjson

from .content import AudioContent, EmbeddedResource, ImageContent, ResourceLink, TextContent, ToolResult
from .errors import (
    DeadlineExceeded,
    HubError,
    InvalidArgument,
    PermissionDenied,
    ToolError,
    ToolNotFound,
    Unavailable,
)
from .principals import Authenticator, bearer_token
from .redaction import Redactor
from .registry import ToolRegistry
from .tools import ToolCall
from .validation import ArgumentValidator

__all__ = [
    "Authenticate",
    "Authorize",
    "InFlight",
    "Next",
    "Pipeline",
    "RedactErrors",
    "ResolveTool",
    "Stage",
    "ValidateArguments",
    "execute",
]

logger = logging.getLogger(__name__)

Next = Callable[[ToolCall], Awaitable[ToolResult]]


class Stage(Protocol):
    """One step of the dispatch path."""

    name: str

    async def __call__(self, call: ToolCall, call_next: Next) -> ToolResult: ...


class InFlight:
    """The calls in flight, so that a server that stops can answer them rather than drop them.

    As a stage (outermost; the sidecar's) it tracks every call. `drain` refuses new calls
    (UNAVAILABLE), gives the running ones `grace` seconds, then cancels the rest; a call
    cancelled that way answers its caller with an error naming the reason instead of losing
    its connection when the servers close. The hub's audit trail does the same through
    `enter`, `leave` and `stopped`, so that it can also record the call's end.
    """

    name = "in-flight"

    def __init__(self) -> None:
        self._running: dict[int, asyncio.Task[object]] = {}
        self._stopped: set[asyncio.Task[object]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.closing: str | None = None

    def refusal(self) -> str | None:
        """What a call is told once draining (None before): the bridge tells a new MCP session so."""
        if self.closing is None:
            return None
        return f"{self.closing}; call again later (another replica, or this one once it is back)"

    def enter(self, key: int) -> asyncio.Task[object] | None:
        """Track the current task under `key`; raises `Unavailable` once draining."""
        if self.closing is not None:
            raise Unavailable(self.refusal() or self.closing)
        task = asyncio.current_task()
        if task is not None:
            self._running[key] = task
            self._idle.clear()
        return task

    def leave(self, key: int) -> None:
        if self._running.pop(key, None) is not None and not self._running:
            self._idle.set()

    def stopping(self) -> bool:
        """Is the current task a call that `drain` is stopping (asked while its cancellation
        unwinds, before the outermost stage takes it back with `stopped`)?"""
        task = asyncio.current_task()
        return task is not None and task in self._stopped

    def stopped(self, task: asyncio.Task[object] | None) -> str | None:
        """For a task that caught CancelledError: the message for its caller when `drain`
        stopped it (its cancellation is then taken back), else None (re-raise)."""
        if task is None or task not in self._stopped:
            return None
        self._stopped.discard(task)
        task.uncancel()
        return f"{self.closing}: the call was stopped before it finished"

    async def drain(self, grace: float, reason: str) -> int:
        """See the class (and the log says what it waits for and stops); returns how many calls
        were stopped."""
        self.closing = reason
        if self._running and grace > 0:
            logger.info("waiting up to %gs for %d running call(s)", grace, len(self._running))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        stopped = [task for task in self._running.values() if not task.done()]
        for task in stopped:
            self._stopped.add(task)
            task.cancel()
        if stopped:
            logger.info(
                "stopped %d call(s) still running after %gs; their callers are told why", len(stopped), grace
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), 5.0)
        return len(stopped)

    async def __call__(self, call: ToolCall, call_next: Next) -> ToolResult:
        key = id(call)
        task = self.enter(key)
        try:
            return await call_next(call)
        except asyncio.CancelledError:
            message = self.stopped(task)
            if message is None:
                raise
            return ToolResult.refused(message, "stopped")
        finally:
            self.leave(key)


class Pipeline:
    """Stages composed around a terminal step (normally `execute`)."""

    def __init__(self, stages: Sequence[Stage], terminal: Next | None = None) -> None:
        self.stages = tuple(stages)
        chain: Next = terminal or execute
        for stage in reversed(self.stages):
            chain = partial(stage, call_next=chain)
        self._chain = chain

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages] + ["execute"]

    def __call__(self, call: ToolCall) -> Awaitable[ToolResult]:
        return self._chain(call)


class RedactErrors:
    """Error results and refusals through `redactor` (the hub's or the sidecar's, holding its
    packs' secrets).

    A pack's exception text, which `execute` passes on, may quote a secret the pack holds (a
    DSN, a key); a hub passes a sandbox's errors on to its callers and into its audit log as
    they are. Results that are not errors are the caller's data: each pack redacts its own.
    """

    name = "redact-errors"

    def __init__(self, redactor: Redactor) -> None:
        self._text = redactor.text

    async def __call__(self, call: ToolCall, call_next: Next) -> ToolResult:
        try:
            result = await call_next(call)
        except HubError as exc:
            text = self._text(exc.message)
            if text != exc.message:
                exc.message, exc.args = text, (text,)
            raise
        if not result.is_error:
            return result
        content = tuple(
            replace(c, text=self._text(c.text)) if isinstance(c, TextContent) else c for c in result.content
        )
        return replace(result, content=content)


class Authenticate:
    """`authorization: Bearer <token>` -> principal. The token is dropped once it has named one."""

    name = "authenticate"

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticate = authenticator.authenticate

    async def __call__(self, call: ToolCall, call_next: Next) -> ToolResult:
        authorization, call.authorization = call.authorization, None
        call.principal = self._authenticate(bearer_token(authorization))
        return await call_next(call)


class ResolveTool:
    """Tool name -> registered tool. `missing`: why a name the registry lacks is not simply
    unknown (a tool of a sandbox that is not connected now), or None."""

    name = "resolve"

    def __init__(
        self, registry: ToolRegistry, missing: Callable[[ToolCall], HubError | None] | None = None
    ) -> None:
        self._get = registry.get
        self._missing = missing

    async def __call__(self, call: ToolCall, call_next: Next) -> ToolResult:
        registered = self._get(call.name)
        if registered is None:
            error = self._missing(call) if self._missing is not None else None
            if error is not None:
                raise error
            raise ToolNotFound(f"unknown tool {call.name[:80]!r}; list the tools to see what exists")
        call.tool = registered.tool
        call.source = registered.source
        return await call_next(call)


class Authorize:
    """The principal's allowed tool globs, and the roles a tool is restricted to."""

    name = "authorize"

    async def __call__(self, call: ToolCall, call_next: Next) -> ToolResult:
        principal = call.principal
        if principal is None or not principal.may_call(call.name):
            who = principal.name if principal else "anonymous"
            raise PermissionDenied(f"principal {who!r} may not call tool {call.name!r}")
        tool = call.tool
        if tool is not None and tool.roles and tool.roles.isdisjoint(principal.roles):
            roles = " or ".join(sorted(tool.roles))
            raise PermissionDenied(f"tool {call.name!r} is for principals with the role {roles}")
        return await call_next(call)


MAX_ARGUMENT_DEPTH = 64
"""Deepest nesting of arrays and objects an arguments object may have. Tool schemas need a
few levels; records and encoders need bounds (orjson writes at most 254 levels, and a
record wraps the arguments)."""


def nested_deeper_than(value: Any, limit: int = MAX_ARGUMENT_DEPTH) -> bool:
    """Whether `value` nests arrays/objects more than `limit` levels; iterative, any depth."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


LONG_DIGITS = re.compile(rb"\d{19,}")
"""A run of digits that may be an integer orjson reads as a float (beyond 64 bits)."""


def has_wide_integer(raw: bytes) -> bool:
    """Whether JSON `raw` holds an integer outside what orjson keeps exact (int64 and uint64)."""
    if not LONG_DIGITS.search(raw):
        return False
    stack: list[Any] = [json.loads(raw)]  # the standard parser keeps integers exact
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool) and not -(2**63) <= item < 2**64:
            return True
    return False


def _not_json(raw: bytes, exc: orjson.JSONDecodeError) -> str:
    """What is wrong with arguments orjson refused, and where.

    orjson says "surrogates not allowed: line 1 column 1 (char 0)" for any invalid UTF-8, wherever
    it is: neither the cause nor the place. Only looked for once the bytes were refused."""
    try:
        raw.decode()
    except UnicodeDecodeError as bad:
        return (
            f"arguments_json is not valid UTF-8: byte 0x{raw[bad.start]:02x} at offset {bad.start} "
            f"({bad.reason}); JSON text must be UTF-8 (send binary data as base64 in a string)"
        )
    return f"arguments_json is not valid JSON: {exc}"


class ValidateArguments:
    """JSON bytes -> arguments object, checked against the tool's input schema.

    Bytes that are not a JSON object are a protocol error (INVALID_ARGUMENT); an
    object that does not match the schema is a tool error the model can read.
    """

    name = "validate"

    def __init__(self, registry: ToolRegistry) -> None:
        self._get = registry.get

    async def __call__(self, call: ToolCall, call_next: Next) -> ToolResult:
        raw = call.arguments_json
        try:
            arguments = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError as exc:
            raise InvalidArgument(_not_json(raw, exc)) from exc
        if not isinstance(arguments, dict):
            raise InvalidArgument(f"arguments must be a JSON object, not {_json_type(arguments)}")
        if nested_deeper_than(arguments):
            raise InvalidArgument(f"arguments are nested more than {MAX_ARGUMENT_DEPTH} levels deep")
        if has_wide_integer(raw):  # orjson read it as a float: the tool would get another number
            raise InvalidArgument(
                "arguments hold an integer beyond 64 bits, which cannot be passed on exactly; "
                "send it as a string"
            )
        registered = self._get(call.name)
        if registered is None:  # removed while the call was on its way
            raise ToolNotFound(f"unknown tool {call.name[:80]!r}")
        problem = registered.validator.problem(arguments)
        if problem is not None:
            return ToolResult.error(problem)
        call.arguments = arguments
        return await call_next(call)


async def execute(call: ToolCall) -> ToolResult:
    """Run the tool's handler under the caller's deadline and the tool's own timeout.

    This is the boundary to tool code: whatever a handler raises becomes an
    `is_error` result here (and is logged with its traceback), except
    cancellation, which propagates so the handler stops when the caller goes.
    """
    tool = call.tool
    if tool is None:  # pragma: no cover - ResolveTool always runs first
        raise ToolNotFound(f"unknown tool {call.name!r}")
    deadline = call.deadline
    if tool.timeout_s is not None:
        own = asyncio.get_running_loop().time() + tool.timeout_s
        deadline = own if deadline is None else min(deadline, own)
    timer = None
    try:
        if deadline is None:
            outcome = await tool.handler(call)
        else:
            # Whether the deadline passed is asked of the timer, not of `loop.time()`: the
            # clock said "not yet" for about 1 call in 6 whose timer had fired.
            timer = asyncio.timeout_at(deadline)
            async with timer:
                outcome = await tool.handler(call)
    except TimeoutError as exc:
        if timer is not None and timer.expired():
            raise DeadlineExceeded(f"tool {tool.name!r} did not finish before the deadline") from exc
        return ToolResult.error(f"{tool.name} failed: timed out")
    except ToolError as exc:
        return ToolResult.error(str(exc))
    except HubError:
        raise
    except Exception as exc:  # the boundary to tool code, see docstring
        logger.exception("tool %s raised", tool.name)
        return ToolResult.error(f"{tool.name} failed: {type(exc).__name__}: {exc}")
    # What no caller can receive is said here, where the audit trail records it as the tool's
    # error, not by the transport failing to send it (INTERNAL, naming no tool).
    if isinstance(outcome, str):
        result = ToolResult.text(outcome)
        if call.result_limit is None:
            return result
    elif isinstance(outcome, ToolResult):
        result = outcome
    else:
        return _wrong_result(call, f"returned {_described(outcome)}, not a ToolResult or a str")
    try:
        size = _content_bytes(result, call.result_limit)
    except _Unsendable as exc:
        return _wrong_result(call, f"returned a ToolResult whose {exc}")
    if call.result_limit is not None and size > call.result_limit:
        # Said here for the same reason: gRPC would fail to send a result the log calls delivered.
        return ToolResult.error(
            f"{tool.name} returned {size:,} bytes, more than the {call.result_limit:,} one gRPC message "
            "carries back: ask for less (or page it with output_read where the tool offers it)"
        )
    if result.structured is not None and tool.output_schema is not None and not result.is_error:
        # MCP: structured content conforms to the tool's output schema. An MCP client's SDK
        # refuses one that does not, with an error naming neither the tool nor the field.
        problem = _output_problem(tool, result.structured)
        if problem is not None:
            return _wrong_result(call, f"returned structured content its output schema refuses: {problem}")
    return result


_OUTPUT_CHECKS: dict[int, tuple[Any, ArgumentValidator]] = {}
"""Output schemas compiled, by tool (the tool kept beside it, so its id is not reused)."""


def _output_problem(tool: Any, structured: Mapping[str, Any]) -> str | None:
    entry = _OUTPUT_CHECKS.get(id(tool))
    if entry is None or entry[0] is not tool:
        if len(_OUTPUT_CHECKS) >= 4096:  # sandboxes re-registering make new tools: never unbounded
            _OUTPUT_CHECKS.clear()
        entry = _OUTPUT_CHECKS[id(tool)] = (tool, ArgumentValidator(tool.name, tool.output_schema))
    problem = entry[1].problem(dict(structured))
    return problem.removeprefix("invalid arguments: ") if problem is not None else None


_BINARY = (ImageContent, AudioContent)


class _Unsendable(Exception):
    """What in a result no transport can carry (a bug of its tool)."""


def _content_bytes(result: ToolResult, limit: int | None) -> int:
    """The bytes `result` carries: a bound (4 bytes a character) when that is within `limit`,
    else the exact count (0 without a limit). Raises `_Unsendable` when a block is not one
    the wire carries."""
    binary = chars = 0
    try:
        for block in result.content:
            if isinstance(block, TextContent) and isinstance(block.text, str):
                chars += len(block.text)
            elif isinstance(block, _BINARY) and isinstance(block.data, bytes):
                binary += len(block.data)
            elif isinstance(block, EmbeddedResource) and isinstance(block.text, str):
                chars += len(block.text)
            elif isinstance(block, EmbeddedResource) and isinstance(block.blob, bytes):
                binary += len(block.blob)
            elif not (isinstance(block, ResourceLink) and isinstance(block.uri, str)):
                raise _Unsendable(_content_problem(result.content))
    except TypeError as exc:  # content that is no sequence
        raise _Unsendable(_content_problem(result.content)) from exc
    structured = result.structured
    if structured is not None and not isinstance(structured, Mapping):
        raise _Unsendable(f"structured is {_described(structured)}, not a mapping")
    if limit is None:
        return 0
    size = binary + 4 * chars
    if structured is not None and size <= limit:
        size += _json_bytes(structured)
    if size > limit:
        # The bound is over: count exactly (a result of text and its structured copy, such as
        # fs_read's, crossed it at a quarter of what it carries).
        texts = [t for t in (getattr(b, "text", None) for b in result.content) if t is not None]
        size = binary + sum(len(t.encode(errors="replace")) for t in texts)
        if structured is not None and size <= limit:
            size += _json_bytes(structured)
    return size


def _json_bytes(structured: Mapping[str, Any]) -> int:
    try:
        return len(orjson.dumps(dict(structured)))
    except TypeError as exc:  # orjson.JSONEncodeError
        raise _Unsendable(f"structured is not JSON: {exc}") from exc


_PAYLOADS: dict[type, tuple[tuple[str, type], ...]] = {
    TextContent: (("text", str),),
    ImageContent: (("data", bytes),),
    AudioContent: (("data", bytes),),
    ResourceLink: (("uri", str),),
    EmbeddedResource: (("text", str), ("blob", bytes)),
}
"""What each content block carries: (field, type); an embedded resource, one of the two."""


def _content_problem(content: object) -> str:
    """What is wrong with a result's `content` (the slow path of `_content_bytes`)."""
    if isinstance(content, str | bytes) or not isinstance(content, Sequence):
        return f"content is {_described(content)}, not a tuple of content blocks"
    for index, block in enumerate(content):
        payloads = _PAYLOADS.get(type(block))
        if payloads is None:
            kinds = ", ".join(kind.__name__ for kind in _PAYLOADS)
            return f"content[{index}] is {_described(block)}, not a content block ({kinds})"
        if not any(isinstance(getattr(block, name), kind) for name, kind in payloads):
            name, kind = next(((n, k) for n, k in payloads if getattr(block, n) is not None), payloads[0])
            value = getattr(block, name)
            return (
                f"content[{index}] is {type(block).__name__}({name}={_described(value)}): "
                f"its {name} must be {kind.__name__}"
            )
    return f"content is {_described(content)}"


def _described(value: object) -> str:
    """A value's type and a short form of it, for its author (never a long repr)."""
    return "None" if value is None else f"{type(value).__name__} {reprlib.repr(value)}"


def _wrong_result(call: ToolCall, problem: str) -> ToolResult:
    """The error result of a tool whose handler returned what no caller can receive (`problem`),
    and the log line its pack's author needs."""
    from .shown import shown  # on this path only: the names in `problem` may be a sandbox's

    name = call.tool.name if call.tool is not None else call.name
    logger.error("tool %s (%s) %s: fix its handler", shown(name), shown(call.source or "?"), shown(problem))
    return ToolResult.error(f"{name} failed: it {problem} (a bug in the tool)")


def _json_type(value: object) -> str:
    """The JSON name of a decoded value's type: callers write JSON, in any language."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else type(value).__name__

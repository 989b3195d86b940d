"""The dispatch pipeline in process: stage order, refusals, validation and the tool boundary."""

from __future__ import annotations

import asyncio
import logging

import pytest

from mcp_local import (
    Authenticate,
    Authorize,
    DeadlineExceeded,
    InvalidArgument,
    OpenAccess,
    PermissionDenied,
    Pipeline,
    Principal,
    ResolveTool,
    Tool,
    ToolCall,
    ToolError,
    ToolNotFound,
    ToolRegistry,
    ToolResult,
    Unauthenticated,
    ValidateArguments,
)
from mcp_local.pipeline import Next
from mcp_remote.auth import TokenAuthenticator
from tests.packs.faulty import WRONG

pytestmark = pytest.mark.anyio

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}, "required": ["n"]}


async def double(call: ToolCall) -> str:
    return str(call.arguments["n"] * 2)


async def slow(call: ToolCall) -> str:
    await asyncio.sleep(10)
    return "late"


async def fails(call: ToolCall) -> str:
    raise ToolError("no such file: a.txt")


async def crashes(call: ToolCall) -> str:
    raise KeyError("x")


def make(authenticator: object = None, extra: list[object] | None = None) -> tuple[Pipeline, ToolRegistry]:
    registry = ToolRegistry()
    registry.set_source(
        "test",
        [
            Tool("double", "d", SCHEMA, double),
            Tool("slow", "s", {"type": "object"}, slow),
            Tool("bounded", "b", {"type": "object"}, slow, timeout_s=0.05),
            Tool("fails", "f", {"type": "object"}, fails),
            Tool("crashes", "c", {"type": "object"}, crashes),
        ],
    )
    auth = authenticator or OpenAccess(Principal("p", ("double", "slow", "bounded", "fails", "crashes")))
    stages = [
        Authenticate(auth),
        ResolveTool(registry),
        Authorize(),
        *(extra or []),
        ValidateArguments(registry),
    ]
    return Pipeline(stages), registry  # type: ignore[arg-type]


async def test_a_valid_call_runs() -> None:
    pipeline, _ = make()
    assert await pipeline(ToolCall("double", b'{"n": 21}')) == ToolResult.text("42")


def test_the_stage_order_is_explicit() -> None:
    pipeline, _ = make()
    assert pipeline.stage_names == ["authenticate", "resolve", "authorize", "validate", "execute"]


async def test_schema_violations_are_tool_errors_naming_the_problem() -> None:
    pipeline, _ = make()
    result = await pipeline(ToolCall("double", b'{"n": -1}'))
    assert result.is_error and "-1 is less than the minimum of 0 (at n)" in result.content[0].text  # type: ignore[union-attr]


@pytest.mark.parametrize("raw", [b"{bad", b"[1, 2]", b'"s"'])
async def test_argument_bytes_that_are_no_object_are_invalid_argument(raw: bytes) -> None:
    pipeline, _ = make()
    with pytest.raises(InvalidArgument):
        await pipeline(ToolCall("double", raw))


async def test_unknown_tool_and_forbidden_tool() -> None:
    pipeline, registry = make()
    with pytest.raises(ToolNotFound):
        await pipeline(ToolCall("missing", b""))
    registry.set_source("other", [Tool("hidden", "h", {"type": "object"}, double)])
    with pytest.raises(PermissionDenied, match="'p' may not call tool 'hidden'"):
        await pipeline(ToolCall("hidden", b""))


async def test_tokens_name_principals() -> None:
    auth = TokenAuthenticator([("t" * 20, Principal("alice"))])
    pipeline, _ = make(auth)
    with pytest.raises(Unauthenticated, match="needs a bearer token"):
        await pipeline(ToolCall("double", b'{"n": 1}'))
    with pytest.raises(Unauthenticated, match="not one this hub knows"):
        await pipeline(ToolCall("double", b'{"n": 1}', authorization="Bearer " + "u" * 20))
    with pytest.raises(Unauthenticated, match="must be 'Bearer <token>'"):
        await pipeline(ToolCall("double", b'{"n": 1}', authorization="Basic dXNlcjpwYXNz"))
    call = ToolCall("double", b'{"n": 1}', authorization="Bearer " + "t" * 20)
    assert (await pipeline(call)).content[0].text == "2"  # type: ignore[union-attr]
    assert call.principal is not None and call.principal.name == "alice"
    assert call.authorization is None, "the token must not travel further than authentication"


async def test_caller_deadline_and_tool_timeout() -> None:
    pipeline, _ = make()
    loop = asyncio.get_running_loop()
    with pytest.raises(DeadlineExceeded):
        await pipeline(ToolCall("slow", b"", deadline=loop.time() + 0.05))
    with pytest.raises(DeadlineExceeded, match="'bounded' did not finish"):
        await pipeline(ToolCall("bounded", b""))


async def test_tool_failures_become_error_results() -> None:
    pipeline, _ = make()
    assert await pipeline(ToolCall("fails", b"")) == ToolResult.error("no such file: a.txt")
    crashed = await pipeline(ToolCall("crashes", b""))
    assert crashed.is_error and "crashes failed: KeyError" in crashed.content[0].text  # type: ignore[union-attr]


async def test_cancellation_reaches_the_handler() -> None:
    pipeline, _ = make()
    task = asyncio.ensure_future(pipeline(ToolCall("slow", b"")))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_stage_can_wrap_the_rest() -> None:
    seen: list[str] = []

    class Record:
        name = "record"

        async def __call__(self, call: ToolCall, call_next: Next) -> ToolResult:
            seen.append(f"before {call.name}")
            result = await call_next(call)
            seen.append(f"after error={result.is_error}")
            return result

    pipeline, _ = make(extra=[Record()])
    assert pipeline.stage_names[3] == "record"
    await pipeline(ToolCall("double", b'{"n": "x"}'))
    assert seen == ["before double", "after error=True"]


@pytest.mark.parametrize(
    ("raw", "wide"),
    [
        (b'{"n": 18446744073709551615}', False),  # uint64: orjson keeps it exact
        (b'{"n": -9223372036854775808}', False),
        (b'{"n": 18446744073709551616}', True),  # orjson would read 1.8446744073709552e+19
        (b'{"n": [{"m": -9223372036854775809}]}', True),
        (b'{"s": "123456789012345678901234567890"}', False),  # digits in a string are text
        (b'{"f": 1234567890123456789012.5}', False),
    ],
)
def test_integers_beyond_64_bits_are_found(raw: bytes, wide: bool) -> None:
    from mcp_local.pipeline import has_wide_integer

    assert has_wide_integer(raw) is wide


WRONG_RESULTS = {
    "wrong_int": "it returned int 42, not a ToolResult or a str",
    "wrong_dict": "it returned dict {'a': 1}, not a ToolResult or a str",
    "wrong_none": "it returned None, not a ToolResult or a str",
    "wrong_bytes": "it returned bytes b'bytes', not a ToolResult or a str",
    "wrong_plain": "it returned a ToolResult whose content[0] is str 'plain string', not a content block",
    "wrong_image": (
        "it returned a ToolResult whose content[0] is ImageContent(data=str 'aGk='): its data must be bytes"
    ),
}


@pytest.mark.parametrize("limit", [None, 1 << 20], ids=["in-process", "grpc"])
@pytest.mark.parametrize("name", sorted(WRONG_RESULTS))
async def test_a_result_no_caller_can_receive_is_the_tools_error(
    name: str, limit: int | None, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler returning the wrong type ended the call with INTERNAL "internal error in the
    hub", naming no tool, and its audit record said the call went well (or was unrecordable)."""
    registry = ToolRegistry()
    registry.set_source("pack:faulty", WRONG)
    pipeline = Pipeline([Authenticate(OpenAccess()), ResolveTool(registry), ValidateArguments(registry)])
    with caplog.at_level(logging.ERROR, logger="mcp_local.pipeline"):
        call = ToolCall(name, b"{}", result_limit=limit)
        result = await pipeline(call)
    assert result.is_error
    assert result.content[0].text.startswith(f"{name} failed: {WRONG_RESULTS[name]}")  # type: ignore[union-attr]
    assert f"tool {name} (pack:faulty) {WRONG_RESULTS[name].removeprefix('it ')}" in caplog.text

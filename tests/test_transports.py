"""The same test bodies over gRPC, Streamable HTTP (2026-07-28, 2025-11-25) and stdio, against real hubs."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import grpc
import httpx2
import orjson
import pytest

from mcphub_proto.v1 import toolhub_pb2 as pb
from mcphub_proto.v1 import toolhub_pb2_grpc as pb_grpc
from tests.conftest import TOKENS
from tests.mcp_remote.test_audit import all_records
from tests.support.clients import TRANSPORTS, ProtocolFailure, ToolClient, answer_while_stopping, connect
from tests.support.hub import PROBE_PACK, RunningHub, start_hub
from tests.support.waiting import file_appears

pytestmark = pytest.mark.anyio


@pytest.fixture(params=TRANSPORTS)
async def client(request: pytest.FixtureRequest, open_hub: RunningHub) -> AsyncIterator[ToolClient]:
    async with connect(request.param, open_hub.grpc, open_hub.mcp_url, None) as c:
        yield c


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_lists_diagnostics_tools_with_annotations(client: ToolClient) -> None:
    tools = {t["name"]: t for t in await client.list_tools()}
    assert {"echo", "sleep", "whoami", "test_simple_text"} <= tools.keys()
    echo = tools["echo"]
    assert echo["inputSchema"]["required"] == ["text"]
    assert echo["annotations"]["readOnlyHint"] is True
    assert echo["annotations"]["destructiveHint"] is False


async def test_echo_returns_the_text(client: ToolClient) -> None:
    outcome = await client.call("echo", {"text": "héllo ✓"})
    assert not outcome.is_error
    assert outcome.text == "héllo ✓"


async def test_wrong_argument_type_is_a_readable_tool_error(client: ToolClient) -> None:
    outcome = await client.call("echo", {"text": 42})
    assert outcome.is_error
    assert "42 is not of type 'string'" in outcome.text and "text" in outcome.text


async def test_argument_errors_quote_values_as_json(client: ToolClient) -> None:
    """Callers write JSON, in any language: jsonschema's Python reprs (None, True) said otherwise."""
    outcome = await client.call("echo", {"text": None})
    assert outcome.is_error and "null is not of type 'string' (at text)" in outcome.text, outcome.text
    outcome = await client.call("echo", {"text": {"a": [1, None, False]}})
    assert '{"a":[1,null,false]} is not of type' in outcome.text, outcome.text


async def test_missing_argument_is_a_readable_tool_error(client: ToolClient) -> None:
    outcome = await client.call("echo", {})
    assert outcome.is_error
    assert "'text' is a required property" in outcome.text


async def test_unknown_tool_is_a_protocol_error(client: ToolClient) -> None:
    with pytest.raises(ProtocolFailure) as info:
        await client.call("no_such_tool", {})
    assert info.value.code == -32602
    assert "unknown tool 'no_such_tool'" in info.value.message


async def test_a_failing_tool_returns_is_error_and_the_hub_keeps_serving(client: ToolClient) -> None:
    outcome = await client.call("boom", {})
    assert outcome.is_error
    assert "the probe tool failed on purpose" in outcome.text
    assert (await client.call("echo", {"text": "still here"})).text == "still here"


async def test_large_integers_survive_exactly(client: ToolClient) -> None:
    value = {"id": 2**63 - 1, "small": 3, "nested": [2**53 + 1]}
    outcome = await client.call("echo_json", {"value": value})
    assert outcome.structured == {"value": value}


async def test_progress_is_relayed_in_order(client: ToolClient) -> None:
    seen: list[tuple[float, float | None, str | None]] = []
    last = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))
        if progress >= 0.4:
            last.set()

    outcome = await client.call("sleep", {"seconds": 0.4}, progress=on_progress)
    assert outcome.text == "slept 0.4s"
    # The SDK's client runs each progress callback in a task of its own: on a busy machine the
    # result can be in before the last callback has run (all were sent before the result).
    with anyio.fail_after(10):
        await last.wait()
    # The first and the last at least; a loop stalled for the whole 0.4 s sends nothing between.
    assert len(seen) >= 2, seen
    values = [p for p, _, _ in seen]
    assert values == sorted(values) and values[0] == 0.0 and values[-1] == pytest.approx(0.4, abs=0.01), seen
    assert all(total == 0.4 for _, total, _ in seen)


async def test_cancelling_the_call_stops_the_tool(client: ToolClient, open_hub: RunningHub) -> None:
    marker = f"cancel-{client.transport}-{time.monotonic_ns() % 10**9}"
    markers = open_hub.state_dir / "markers"
    ticks = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if progress >= 2:
            ticks.set()

    async with anyio.create_task_group() as tg:

        async def run() -> None:
            await client.call("wait_for_cancel", {"marker": marker}, progress=on_progress)

        tg.start_soon(run)
        with anyio.fail_after(20):
            await ticks.wait()
        cancelled_at = time.monotonic()
        tg.cancel_scope.cancel()
    assert (markers / f"{marker}.started").exists()
    assert await file_appears(markers / marker, 10), "the tool was not cancelled on the hub"
    assert time.monotonic() - cancelled_at < 10


async def test_a_cancelled_plain_call_stops_the_tool_and_the_client_goes_on(
    client: ToolClient, open_hub: RunningHub
) -> None:
    """Without a progress token the bridge makes a unary gRPC call; cancelling it once ended
    the whole stdio session (and a gRPC caller's cancel scope did not catch its own cancel)."""
    marker = f"plain-cancel-{client.transport}-{time.monotonic_ns() % 10**9}"
    markers = open_hub.state_dir / "markers"
    with anyio.move_on_after(20) as waited:
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                await client.call("wait_for_cancel", {"marker": marker})

            tg.start_soon(run)
            assert await file_appears(markers / f"{marker}.started", 20)
            tg.cancel_scope.cancel()
    assert not waited.cancelled_caught
    assert await file_appears(markers / marker, 10), "the tool was not cancelled on the hub"
    with anyio.fail_after(20):
        assert (await client.call("echo", {"text": "still here"})).text == "still here"
        assert "echo" in {t["name"] for t in await client.list_tools()}


async def test_bad_token_is_refused_precisely(transport: str, secured_hub: RunningHub) -> None:
    with pytest.raises(ProtocolFailure) as info:
        async with connect(transport, secured_hub.grpc, secured_hub.mcp_url, "not-a-known-token") as c:
            await c.call("echo", {"text": "x"})
    assert info.value.code == -32030
    assert "not one this hub knows" in info.value.message


async def test_missing_token_is_refused_on_a_hub_with_principals(
    transport: str, secured_hub: RunningHub
) -> None:
    with pytest.raises(ProtocolFailure) as info:
        async with connect(transport, secured_hub.grpc, secured_hub.mcp_url, None) as c:
            await c.list_tools()
    assert info.value.code == -32030
    assert "needs a bearer token" in info.value.message


async def test_the_callers_token_is_its_identity(transport: str, secured_hub: RunningHub) -> None:
    async with connect(transport, secured_hub.grpc, secured_hub.mcp_url, TOKENS["agent-b"]) as c:
        assert (await c.call("whoami", {})).text == "agent-b"
    async with connect(transport, secured_hub.grpc, secured_hub.mcp_url, TOKENS["agent-a"]) as c:
        assert (await c.call("whoami", {})).text == "agent-a"


async def test_a_principal_sees_and_calls_only_its_allowed_tools(
    transport: str, secured_hub: RunningHub
) -> None:
    async with connect(transport, secured_hub.grpc, secured_hub.mcp_url, TOKENS["agent-b"]) as c:
        assert sorted(t["name"] for t in await c.list_tools()) == ["echo", "whoami"]
        with pytest.raises(ProtocolFailure) as info:
            await c.call("sleep", {"seconds": 0})
        assert info.value.code == -32031
        assert "'agent-b' may not call tool 'sleep'" in info.value.message


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_stopping_hub_tells_running_calls_why(transport: str, tmp_path: Path) -> None:
    """SIGTERM with a call running: the call is given the grace period, then stopped, and its
    caller gets an error saying why (not a dropped connection); the hub exits cleanly and
    the audit log has the call's end."""
    hub = start_hub(tmp_path, packs=[PROBE_PACK], config={"shutdown_grace_s": 0.3})
    marker = f"stop-{transport}"
    markers = hub.state_dir / "markers"
    try:
        async with connect(transport, hub.grpc, hub.mcp_url, None) as client:
            answer = await answer_while_stopping(
                client, hub.process, markers / f"{marker}.started", "wait_for_cancel", {"marker": marker}
            )
        assert hub.process.wait(30) == 0
    finally:
        hub.stop()
    assert answer.is_error and "the hub is shutting down" in answer.text, answer.text
    assert (markers / marker).read_text() == "cancelled", "the tool itself was stopped"
    log = hub.log()
    assert "Traceback" not in log and " ERROR " not in log, log
    assert "waiting up to 0.3s for 1 running call(s)" in log
    finished = [
        r for r in await all_records(hub.state_dir) if r.kind == "finished" and r.tool == "wait_for_cancel"
    ]
    [body] = [orjson.loads(r.body) for r in finished]
    assert body["status"] == "cancelled" and "the hub is shutting down" in body["error"]


async def test_two_credentials_in_one_request_are_refused_and_audited(secured_hub: RunningHub) -> None:
    """Which of two tokens named the caller depended on their order (the first won), which a
    proxy that adds its own header can change."""

    both = [
        ("authorization", f"Bearer {TOKENS['agent-b']}"),
        ("authorization", f"Bearer {TOKENS['agent-a']}"),
    ]
    async with grpc.aio.insecure_channel(secured_hub.grpc) as channel:
        hub = pb_grpc.ToolHubStub(channel)
        request = pb.CallToolRequest(name="sleep", arguments_json=b'{"seconds": 0}')
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await hub.CallTool(request, metadata=both)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert info.value.details() == "more than one authorization value was sent; send one 'Bearer <token>'"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await hub.ListTools(pb.ListToolsRequest(), metadata=both)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "sleep", "arguments": {"seconds": 0}, "_meta": meta},
    }
    headers = [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "sleep"),
        *both,
    ]
    async with httpx2.AsyncClient(base_url=secured_hub.http_base, timeout=30) as http:
        opening = {"jsonrpc": "2.0", "id": 2, "method": "initialize", "params": {}}
        for body, sent in ((call, headers), (opening, [*headers[:2], *both])):
            answer = await http.post("/mcp", json=body, headers=sent)
            assert answer.status_code == 401, answer.text
            assert "more than one authorization value" in answer.json()["error"]["message"]
    records = await all_records(secured_hub.state_dir)
    refusals = [
        r.body_json()["error"]
        for r in records
        if r.kind == "finished" and "more than one authorization value" in r.body_json().get("error", "")
    ]
    assert len(refusals) >= 2  # the gRPC call and the bridge's call, each audited


@pytest.mark.parametrize(
    ("arguments", "named"), [(b"[1]", "an array"), (b"null", "null"), (b'"hi"', "a string")]
)
async def test_arguments_that_are_not_an_object_are_named_in_json_terms(
    open_hub: RunningHub, arguments: bytes, named: str
) -> None:
    async with grpc.aio.insecure_channel(open_hub.grpc) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb_grpc.ToolHubStub(channel).CallTool(
                pb.CallToolRequest(name="echo", arguments_json=arguments)
            )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == f"arguments must be a JSON object, not {named}"


@pytest.mark.parametrize(
    "transport", ["grpc", "stdio", "mcp-2026"]
)  # the SDK's 2025 client reads 1 MiB SSE events
async def test_a_result_larger_than_a_grpc_message_is_a_tool_error_the_log_records(
    transport: str, open_hub: RunningHub
) -> None:
    """gRPC failed to send it after the tool ran (RESOURCE_EXHAUSTED from the server's send),
    while the audit log called it delivered; the in-process bridge has no such limit."""
    async with connect(transport, open_hub.grpc, open_hub.mcp_url, None) as client:
        outcome = await client.call("emit_bytes", {"n": 17_000_000})
    if transport.startswith("mcp-"):
        assert not outcome.is_error and len(outcome.text) == 17_000_000
        return
    assert outcome.is_error
    assert outcome.text.startswith("emit_bytes returned 17,000,000 bytes, more than the 16,711,680 one gRPC")
    records = await all_records(open_hub.state_dir)
    assert any(
        r.kind == "finished" and r.body_json().get("error", "").startswith("emit_bytes returned 17,000,000")
        for r in records
    )


SHAPED_PACK = """
from mcp_local import StaticPack, Tool, ToolAnnotations, ToolResult
from mcp_local.content import TextContent

OUT = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


async def shaped(call):
    n = call.arguments["n"]
    return ToolResult(content=(TextContent(str(n)),), structured={"n": n})


def create_pack(options, env):
    schema = {"type": "object", "properties": {"n": {}}, "required": ["n"]}
    return StaticPack("shaped", [Tool("shaped", "Shaped.", schema, shaped, output_schema=OUT,
                                      annotations=ToolAnnotations(read_only=True))])
"""


@pytest.mark.parametrize("transport", ["grpc", "mcp-2026", "mcp-2025"])
async def test_structured_content_its_output_schema_refuses_is_the_tools_error(
    transport: str, tmp_path: Path
) -> None:
    """A tool's structured content that does not match its own output schema reached MCP
    clients, whose SDK refuses it naming neither the tool nor the field."""
    pack = tmp_path / "shaped.py"
    pack.write_text(SHAPED_PACK)
    hub = start_hub(tmp_path / "hub", packs=[str(pack)])
    try:
        async with connect(transport, hub.grpc, hub.mcp_url, None) as client:
            good = await client.call("shaped", {"n": 3})
            assert not good.is_error and good.structured == {"n": 3}
            bad = await client.call("shaped", {"n": "three"})
            assert bad.is_error, bad
            assert "shaped failed: it returned structured content its output schema refuses" in bad.text
            assert "(at n)" in bad.text
    finally:
        assert hub.stop() == 0

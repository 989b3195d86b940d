"""The express lane answers exactly as the SDK does, and hands the SDK everything else.

Two bridges in this process forward to the same real hub over gRPC: one with the lane,
one without (every request through the SDK). Each request goes to both; the answers
must be equal (status, media type, JSON), and the lane's counter says which requests
it served, so a lane that declined everything could not pass.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import orjson
import pytest

from bridge import BridgeOptions, build_asgi_app, build_mcp_server, default_policy
from bridge.express import ExpressLane
from bridge.http import HttpServer
from bridge.hubclient import HubClient
from tests.conftest import TOKENS
from tests.support.hub import RunningHub
from tests.support.waiting import file_appears

pytestmark = pytest.mark.anyio

MODERN = "2026-07-28"
PV = "io.modelcontextprotocol/protocolVersion"
CAPS = "io.modelcontextprotocol/clientCapabilities"
MAX_BODY = 64 * 1024


@dataclass
class Bridges:
    express: str
    sdk: str
    slow_keepalive: str
    broken_schema: str
    lane: ExpressLane
    broken_lane: ExpressLane
    markers: Path


async def _serve(hub: HubClient, options: BridgeOptions, servers: list[HttpServer]) -> tuple[str, Any]:
    app = build_asgi_app(build_mcp_server(hub, options), default_policy("127.0.0.1", [], []), options, hub)
    server = HttpServer(app, "127.0.0.1", 0)
    port = await server.start()
    servers.append(server)
    return f"http://127.0.0.1:{port}/mcp", app


@pytest.fixture(scope="module")
async def bridges(secured_hub: RunningHub) -> AsyncIterator[Bridges]:
    hub = HubClient(secured_hub.grpc)
    tools = await hub.all_tools(TOKENS["agent-a"])
    schemas = {
        t.name: orjson.loads(t.input_schema_json) for t in tools if b"x-mcp-header" in t.input_schema_json
    }
    assert "routed" in schemas

    def schema(name: str, token: str | None) -> Any:
        return schemas.get(name)

    servers: list[HttpServer] = []
    base = BridgeOptions(tool_input_schema=schema, max_body_bytes=MAX_BODY)
    try:
        express, app = await _serve(hub, base, servers)
        sdk, _ = await _serve(
            hub, BridgeOptions(tool_input_schema=schema, max_body_bytes=MAX_BODY, express=False), servers
        )
        slow, _ = await _serve(
            hub, BridgeOptions(tool_input_schema=schema, max_body_bytes=MAX_BODY, keepalive_s=0.2), servers
        )

        def schema_lookup_fails(name: str, token: str | None) -> Any:
            raise RuntimeError("the registry is gone")

        broken, broken_app = await _serve(
            hub, BridgeOptions(tool_input_schema=schema_lookup_fails, max_body_bytes=MAX_BODY), servers
        )
        lane, broken_lane = await app.load(), await broken_app.load()
        assert isinstance(lane, ExpressLane) and isinstance(broken_lane, ExpressLane)
        yield Bridges(express, sdk, slow, broken, lane, broken_lane, secured_hub.state_dir / "markers")
    finally:
        for server in servers:
            await server.stop()
        await hub.close()


def _call(
    name: str, arguments: Any = None, *, rpc_id: Any = 1, meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "_meta": {PV: MODERN, CAPS: {}, **(meta or {})}}
    if arguments is not None:
        params["arguments"] = arguments
    return {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call", "params": params}


def _headers(name: str, token: str | None = TOKENS["agent-a"], **extra: str) -> dict[str, str]:
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": MODERN,
        "mcp-method": "tools/call",
        "mcp-name": name,
    }
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    headers.update({k.replace("_", "-"): v for k, v in extra.items()})
    return headers


@dataclass(frozen=True)
class Case:
    id: str
    body: Any
    headers: dict[str, str]
    lane: bool
    """Whether the express lane serves it (else the SDK does, on both bridges)."""


CASES = [
    Case("echo", _call("echo", {"text": "héllo ✓"}), _headers("echo"), True),
    Case("string id", _call("echo", {"text": "x"}, rpc_id="call-7"), _headers("echo"), True),
    Case("id beyond 2^53", _call("echo", {"text": "x"}, rpc_id=2**53 + 1), _headers("echo"), True),
    Case("no arguments", _call("whoami"), _headers("whoami"), True),
    Case("empty arguments", _call("whoami", {}), _headers("whoami"), True),
    Case("tool error", _call("echo", {"text": 42}), _headers("echo"), True),
    Case("tool raises", _call("boom", {}), _headers("boom"), True),
    Case(
        "structured", _call("echo_json", {"value": {"a": [1, 2.5, None, "é"]}}), _headers("echo_json"), True
    ),
    Case("unknown tool", _call("nope", {}), _headers("nope"), True),
    Case("bad token", _call("echo", {"text": "x"}), _headers("echo", token="wrong-token"), True),
    Case("no token", _call("echo", {"text": "x"}), _headers("echo", token=None), True),
    Case(
        "not a bearer",
        _call("echo", {"text": "x"}),
        _headers("echo", token=None, authorization="Basic eA=="),
        True,
    ),
    Case("not allowed", _call("boom", {}), _headers("boom", token=TOKENS["agent-b"]), True),
    Case("param header", _call("routed", {"region": "eu"}), _headers("routed", mcp_param_region="eu"), True),
    Case("capabilities", _call("whoami", {}, meta={CAPS: {"elicitation": {}}}), _headers("whoami"), True),
    Case(
        "unknown approval",
        _call("echo", {"text": "x"}, meta={"dev.mcphub/approvalId": "nope"}),
        _headers("echo"),
        True,
    ),
    # Everything below is not the lane's: the SDK answers it on both bridges.
    Case(
        "param header mismatch",
        _call("routed", {"region": "eu"}),
        _headers("routed", mcp_param_region="us"),
        False,
    ),
    Case("param header missing", _call("routed", {"region": "eu"}), _headers("routed"), False),
    Case("arguments not an object", _call("echo", "text"), _headers("echo"), False),
    Case("name mismatch", _call("echo", {"text": "x"}), _headers("whoami"), False),
    Case(
        "method header mismatch",
        _call("echo", {"text": "x"}),
        _headers("echo", mcp_method="tools/list"),
        False,
    ),
    Case("version mismatch", _call("echo", {"text": "x"}, meta={PV: "2099-01-01"}), _headers("echo"), False),
    Case(
        "no capabilities",
        {**_call("echo", {}), "params": {"name": "echo", "_meta": {PV: MODERN}}},
        _headers("echo"),
        False,
    ),
    Case("bad capabilities", _call("echo", {"text": "x"}, meta={CAPS: []}), _headers("echo"), False),
    Case("progress token", _call("echo", {"text": "x"}, meta={"progressToken": 5}), _headers("echo"), False),
    # Found in review: the lane served a null token (the SDK refuses it: -32602), and both paths
    # served true (the SDK's model reads it as 1; a progress token is a string or an integer).
    Case(
        "null progress token",
        _call("echo", {"text": "x"}, meta={"progressToken": None}),
        _headers("echo"),
        False,
    ),
    Case(
        "true progress token",
        _call("echo", {"text": "x"}, meta={"progressToken": True}),
        _headers("echo"),
        False,
    ),
    Case(
        "extra params key",
        {**_call("echo"), "params": {**_call("echo")["params"], "task": {}}},
        _headers("echo"),
        False,
    ),
    Case("boolean id", _call("echo", {"text": "x"}, rpc_id=True), _headers("echo"), False),
    Case("null id", _call("echo", {"text": "x"}, rpc_id=None), _headers("echo"), False),
    Case("float id", _call("echo", {"text": "x"}, rpc_id=1.5), _headers("echo"), False),
    Case("json only", _call("echo", {"text": "x"}), _headers("echo", accept="application/json"), False),
    Case("text/plain", _call("echo", {"text": "x"}), _headers("echo", content_type="text/plain"), False),
    Case("parse error", b'{"jsonrpc": "2.0", "id": 1, "method": ', _headers("echo"), False),
    Case("batch", [_call("echo", {"text": "x"})], _headers("echo"), False),
    Case("notification", {"jsonrpc": "2.0", "method": "tools/call", "params": {}}, _headers("echo"), False),
    Case(
        "list",
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {PV: MODERN, CAPS: {}}}},
        _headers("echo", mcp_method="tools/list"),
        False,
    ),
    Case("too big", _call("echo", {"text": "x" * MAX_BODY}), _headers("echo"), False),
]


def _content(body: Any) -> bytes:
    return body if isinstance(body, bytes) else orjson.dumps(body)


def _answer(response: httpx2.Response) -> tuple[int, str, Any]:
    media = response.headers.get("content-type", "").split(";")[0]
    try:
        parsed = response.json() if response.content else None
    except ValueError:
        parsed = response.text
    return response.status_code, media, parsed


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_the_lane_answers_as_the_sdk_does(bridges: Bridges, case: Case) -> None:
    async with httpx2.AsyncClient(timeout=30) as http:
        before = bridges.lane.served
        fast = await http.post(bridges.express, content=_content(case.body), headers=case.headers)
        served = bridges.lane.served - before
        reference = await http.post(bridges.sdk, content=_content(case.body), headers=case.headers)
    assert served == (1 if case.lane else 0), (
        "the lane took a request that is not its own, or declined its own"
    )
    assert _answer(fast) == _answer(reference)
    assert fast.status_code < 500


@pytest.mark.parametrize("token", [None, True, False])
async def test_a_progress_token_neither_string_nor_integer_is_refused(bridges: Bridges, token: Any) -> None:
    """A progress token is a string or an integer: null, true and false are refused (-32602),
    whichever path the request would take. The lane served null; both paths served true."""
    body = _call("echo", {"text": "x"}, meta={"progressToken": token})
    async with httpx2.AsyncClient(timeout=30) as http:
        for url in (bridges.express, bridges.sdk):
            response = await http.post(url, content=_content(body), headers=_headers("echo"))
            assert response.status_code == 400, (url, response.text)
            error = response.json()["error"]
            assert error["code"] == -32602, error


async def test_the_lane_stamps_the_result_as_the_sdk_does(bridges: Bridges) -> None:
    async with httpx2.AsyncClient(timeout=30) as http:
        answer = (
            await http.post(bridges.express, content=_content(CASES[0].body), headers=CASES[0].headers)
        ).json()
    result = answer["result"]
    assert result["content"] == [{"type": "text", "text": "héllo ✓"}]
    assert result["resultType"] == "complete"
    assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "mcphub"


async def test_a_client_that_goes_away_cancels_the_call(
    bridges: Bridges, caplog: pytest.LogCaptureFixture
) -> None:
    marker = f"express-{time.monotonic_ns() % 10**9}"
    before = bridges.lane.served
    async with httpx2.AsyncClient(timeout=30) as http:
        request = http.build_request(
            "POST",
            bridges.express,
            content=_content(_call("wait_for_cancel", {"marker": marker})),
            headers=_headers("wait_for_cancel"),
        )
        response_task: list[httpx2.Response] = []

        async with anyio.create_task_group() as tg:

            async def send() -> None:
                response_task.append(await http.send(request))

            tg.start_soon(send)
            assert await file_appears(bridges.markers / f"{marker}.started", 20)
            tg.cancel_scope.cancel()  # the client gives up: its connection closes
    assert bridges.lane.served == before + 1
    assert await file_appears(bridges.markers / marker, 10), "the tool was not cancelled on the hub"
    assert not response_task
    assert "Exception in ASGI application" not in caplog.text


async def test_a_client_that_goes_away_with_a_request_queued_cancels_the_call(
    bridges: Bridges, caplog: pytest.LogCaptureFixture
) -> None:
    """Found in review: with a second request pipelined behind it, the call was not cancelled
    (it ran its full minute for nobody) and its answer hit the closed transport: an ERROR."""
    marker = f"express-queued-{time.monotonic_ns() % 10**9}"
    host, port = bridges.slow_keepalive.removeprefix("http://").removesuffix("/mcp").split(":")

    def request(name: str, arguments: Any) -> bytes:
        body = _content(_call(name, arguments))
        head = "".join(f"{k}: {v}\r\n" for k, v in _headers(name).items())
        head += f"host: {host}\r\ncontent-length: {len(body)}\r\n"
        return f"POST /mcp HTTP/1.1\r\n{head}\r\n".encode() + body

    async with await anyio.connect_tcp(host, int(port)) as connection:
        await connection.send(request("wait_for_cancel", {"marker": marker}) + request("echo", {"text": "x"}))
        assert await file_appears(bridges.markers / f"{marker}.started", 20)
    assert await file_appears(bridges.markers / marker, 10), "the tool was not cancelled on the hub"
    assert "Exception in ASGI application" not in caplog.text


async def test_a_long_silent_call_is_kept_alive_with_sse(bridges: Bridges) -> None:
    async with httpx2.AsyncClient(timeout=30) as http:
        response = await http.post(
            bridges.slow_keepalive,
            content=_content(_call("sleep", {"seconds": 0.8})),
            headers=_headers("sleep"),
        )
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    text = response.text
    assert text.startswith(": ping\r\n\r\n")
    event = text.rsplit("event: message\r\ndata: ", 1)[1]
    answer = orjson.loads(event.strip())
    assert answer["id"] == 1
    assert not answer["result"].get("isError"), answer
    assert answer["result"]["resultType"] == "complete"


async def test_a_quick_call_is_plain_json_even_with_a_short_keepalive(bridges: Bridges) -> None:
    async with httpx2.AsyncClient(timeout=30) as http:
        response = await http.post(
            bridges.slow_keepalive, content=_content(_call("echo", {"text": "x"})), headers=_headers("echo")
        )
    assert response.headers["content-type"] == "application/json"
    assert response.json()["result"]["content"] == [{"type": "text", "text": "x"}]


async def test_a_failure_inside_the_lane_leaves_the_request_to_the_sdk(
    bridges: Bridges, caplog: pytest.LogCaptureFixture
) -> None:
    case = next(c for c in CASES if c.id == "param header")
    async with httpx2.AsyncClient(timeout=30) as http:
        response = await http.post(bridges.broken_schema, content=_content(case.body), headers=case.headers)
    assert response.status_code == 200, response.text
    assert response.json()["result"]["content"] == [{"type": "text", "text": "eu"}]
    assert bridges.broken_lane.served == 0
    assert "the express lane failed to read a request; the SDK answers it" in caplog.text

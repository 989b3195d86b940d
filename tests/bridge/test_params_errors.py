"""Bad `tools/call` and `tools/list` params get an error naming the field and the problem, and a
request before `initialize` is told to send it first, on every transport (the SDK answered all
of them "Invalid request parameters" with empty data)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx2
import orjson
import pytest

from tests.bridge.test_stdio import INITIALIZE, _line, _send
from tests.support.hub import REPO, RunningHub

MODERN = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "params-test", "version": "1"},
}
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}

CASES: list[tuple[str, dict[str, Any], str]] = [
    ("tools/call", {"name": "echo", "arguments": "str"}, "params.arguments must be an object"),
    ("tools/call", {"name": 5, "arguments": {}}, "params.name must be a string"),
    ("tools/call", {"arguments": {}}, "params.name is required"),
    (
        "tools/call",
        {"name": "echo", "arguments": {"text": "a"}, "_meta": {"progressToken": 1.5}},
        "params._meta.progressToken must be a string or an integer",
    ),
    ("tools/list", {"cursor": 5}, "params.cursor must be a string"),
]
IDS = ["arguments-str", "name-int", "name-missing", "progress-token-float", "cursor-int"]


def _sse_message(text: str) -> dict[str, Any]:
    data = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    assert data, text
    answer: dict[str, Any] = orjson.loads(data[-1])
    return answer


@pytest.fixture(scope="module")
def session(open_hub: RunningHub) -> Iterator[tuple[httpx2.Client, dict[str, str]]]:
    with httpx2.Client(base_url=open_hub.http_base, timeout=30) as client:
        response = client.post("/mcp", json=INITIALIZE, headers=HEADERS)
        assert response.status_code == 200, response.text
        headers = HEADERS | {
            "mcp-session-id": response.headers["mcp-session-id"],
            "mcp-protocol-version": INITIALIZE["params"]["protocolVersion"],  # type: ignore[index]
        }
        initialized = client.post(
            "/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers
        )
        assert initialized.status_code == 202, initialized.text
        yield client, headers


@pytest.mark.parametrize(("method", "params", "problem"), CASES, ids=IDS)
def test_a_handshake_session_names_the_field(
    session: tuple[httpx2.Client, dict[str, str]], method: str, params: dict[str, Any], problem: str
) -> None:
    client, headers = session
    response = client.post(
        "/mcp", json={"jsonrpc": "2.0", "id": 2, "method": method, "params": params}, headers=headers
    )
    error = _sse_message(response.text)["error"]
    assert error["code"] == -32602, error
    assert error["message"] == f"Invalid params for {method}: {problem}", error


# A name that is no string cannot match its `Mcp-Name` header, which the SDK checks first (-32020).
STATELESS = [(case, id_) for case, id_ in zip(CASES, IDS, strict=True) if id_ != "name-int"]


@pytest.mark.parametrize(
    ("method", "params", "problem"), [c for c, _ in STATELESS], ids=[i for _, i in STATELESS]
)
def test_the_stateless_wire_names_the_field(
    open_hub: RunningHub, method: str, params: dict[str, Any], problem: str
) -> None:
    params = {**params, "_meta": {**META, **params.get("_meta", {})}}
    headers = HEADERS | {"mcp-protocol-version": MODERN, "mcp-method": method}
    if "name" in params:
        headers["mcp-name"] = str(params["name"])
    with httpx2.Client(base_url=open_hub.http_base, timeout=30) as client:
        body = {"jsonrpc": "2.0", "id": 2, "method": method, "params": params}
        response = client.post("/mcp", json=body, headers=headers)
    answer = response.json() if response.headers["content-type"].startswith("application/json") else None
    error = (answer or _sse_message(response.text))["error"]
    assert error["code"] == -32602, error
    assert error["message"] == f"Invalid params for {method}: {problem}", error


def test_stdio_names_the_field_and_asks_for_initialize_first(open_hub: RunningHub) -> None:
    command = [sys.executable, "-m", "mcp_remote.cli", "bridge", "--stdio", "--hub", open_hub.grpc]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    with subprocess.Popen(command, cwd=REPO, bufsize=0, **pipes) as bridge:  # type: ignore[call-overload]
        try:
            _send(bridge, {"jsonrpc": "2.0", "id": 0, "method": "tools/list"})
            early = orjson.loads(_line(bridge.stdout))
            _send(bridge, INITIALIZE, {"jsonrpc": "2.0", "method": "notifications/initialized"})
            assert orjson.loads(_line(bridge.stdout))["id"] == 1
            answers = []
            for number, (method, params, _) in enumerate(CASES, start=10):
                _send(bridge, {"jsonrpc": "2.0", "id": number, "method": method, "params": params})
                answers.append(orjson.loads(_line(bridge.stdout)))
            bridge.stdin.close()
            assert bridge.wait(20) == 0
        finally:
            if bridge.poll() is None:
                bridge.kill()
    assert early["id"] == 0 and early["error"]["code"] == -32600, early
    assert early["error"]["message"].startswith("Invalid Request: send initialize first: tools/list"), early
    for answer, (method, _, problem) in zip(answers, CASES, strict=True):
        assert answer["error"] == {"code": -32602, "message": f"Invalid params for {method}: {problem}"}, (
            answer
        )

"""A client's `notifications/cancelled` is on record as the client cancelling the call, with its
reason (redacted), not as "the caller went away", which stays for a client that disconnected.
The bridge told the hub nothing: it cancelled the gRPC call and the reason was dropped."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import anyio
import httpx2
import orjson
import pytest

from tests.bridge.test_stdio import INITIALIZE, _line, _send
from tests.support.hub import REPO, RunningHub, hub_command

SECRET = "ghp_" + "a" * 36  # a credential shape: redacted wherever it is recorded
REASON = f"user pressed esc {SECRET}"
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


def _finished(hub: RunningHub, request_id: str) -> dict[str, Any]:
    """The body of the `finished` record of the call the client sent with `request_id`."""
    deadline = time.monotonic() + 20
    while True:
        query = ("audit", "query", "--json", "--tool", "wait_for_cancel", "--limit", "100000")
        out = subprocess.run(
            hub_command(*query, "--state-dir", str(hub.state_dir)), capture_output=True, text=True, timeout=60
        )
        records = [orjson.loads(line) for line in out.stdout.splitlines()]
        requested = [r for r in records if r["kind"] == "requested"]
        calls = {r["call_id"] for r in requested if r["body"].get("request_id") == request_id}
        done = [r["body"] for r in records if r["kind"] == "finished" and r["call_id"] in calls]
        if done:
            return done[0]
        assert time.monotonic() < deadline, f"no finished record for {request_id}"
        time.sleep(0.2)


def _wait_started(hub: RunningHub, marker: str) -> None:
    started = hub.state_dir / "markers" / f"{marker}.started"
    deadline = time.monotonic() + 20
    while not started.exists():
        assert time.monotonic() < deadline, "the tool did not start"
        time.sleep(0.02)


def _call(request_id: str, marker: str) -> dict[str, Any]:
    params = {"name": "wait_for_cancel", "arguments": {"marker": marker}}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def _cancel(request_id: str, reason: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {"requestId": request_id}
    if reason is not None:
        params["reason"] = reason
    return {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params}


@pytest.mark.parametrize("reason", [REASON, None], ids=["reason", "no-reason"])
def test_stdio_a_cancel_is_recorded_with_its_reason(open_hub: RunningHub, reason: str | None) -> None:
    marker = f"cr-stdio-{time.monotonic_ns() % 10**9}"
    command = [sys.executable, "-m", "mcp_remote.cli", "bridge", "--stdio", "--hub", open_hub.grpc]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    with subprocess.Popen(command, cwd=REPO, bufsize=0, **pipes) as bridge:  # type: ignore[call-overload]
        try:
            _send(bridge, INITIALIZE, {"jsonrpc": "2.0", "method": "notifications/initialized"})
            assert orjson.loads(_line(bridge.stdout))["id"] == 1
            _send(bridge, _call(marker, marker))
            _wait_started(open_hub, marker)
            _send(bridge, _cancel(marker, reason), {"jsonrpc": "2.0", "id": 3, "method": "ping"})
            assert orjson.loads(_line(bridge.stdout))["id"] == 3
            bridge.stdin.close()
            assert bridge.wait(20) == 0
        finally:
            if bridge.poll() is None:
                bridge.kill()
    body = _finished(open_hub, marker)
    assert body["status"] == "cancelled", body
    expected = (
        "the client cancelled the call: user pressed esc [REDACTED]"
        if reason
        else "the client cancelled the call"
    )
    assert body["error"] == expected, body
    assert SECRET not in orjson.dumps(body).decode()


async def _session(client: httpx2.AsyncClient) -> dict[str, str]:
    response = await client.post("/mcp", json=INITIALIZE, headers=HEADERS)
    assert response.status_code == 200, response.text
    headers = HEADERS | {
        "mcp-session-id": response.headers["mcp-session-id"],
        "mcp-protocol-version": INITIALIZE["params"]["protocolVersion"],  # type: ignore[index]
    }
    await client.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    return headers


@pytest.mark.parametrize("how", ["cancelled", "disconnected"])
async def test_a_session_cancel_is_told_from_a_disconnect(open_hub: RunningHub, how: str) -> None:
    marker = f"cr-{how}-{time.monotonic_ns() % 10**9}"
    async with httpx2.AsyncClient(base_url=open_hub.http_base, timeout=30) as client:
        headers = await _session(client)
        async with anyio.create_task_group() as tg:

            async def call() -> None:
                await client.post("/mcp", json=_call(marker, marker), headers=headers)

            tg.start_soon(call)
            await anyio.to_thread.run_sync(_wait_started, open_hub, marker)
            if how == "cancelled":
                sent = await client.post("/mcp", json=_cancel(marker, REASON), headers=headers)
                assert sent.status_code == 202, sent.text
            else:
                tg.cancel_scope.cancel()  # the POST closes before its answer
    body = await anyio.to_thread.run_sync(_finished, open_hub, marker)
    assert body["status"] == "cancelled", body
    if how == "cancelled":
        assert body["error"] == "the client cancelled the call: user pressed esc [REDACTED]", body
    else:
        assert body["error"] == "the caller went away", body

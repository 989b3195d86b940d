"""A hub's stop and restart as a supervisor sees them: bounded by one grace period whatever its
clients do, recorded before anything slow, and leaving nothing behind that a restart confuses
(approvals nobody waits for, revisions that repeat, sandboxes' tools said to be unknown)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx2
import pytest

from bridge.hubclient import HubClient
from mcphub_proto.v1 import toolhub_pb2 as pb
from tests.mcp_remote.test_audit import all_records
from tests.mcp_remote.test_federation import TOKENS, hub_config, sandbox_manifest, tool_names, wait_for
from tests.mcp_remote.test_gate import CONFIG as GATED
from tests.mcp_remote.test_gate import RISKY_PACK, records_of
from tests.mcp_remote.test_gate import TOKENS as GATED_TOKENS
from tests.mcp_remote.test_health import until
from tests.support.approvals import listing, start_call, text_of
from tests.support.clients import ProtocolFailure, connect
from tests.support.hub import PROBE_PACK, start_hub
from tests.support.sidecar import RunningSidecar, start_sidecar

pytestmark = pytest.mark.anyio


@pytest.fixture
def frozen() -> Iterator[list[RunningSidecar]]:
    """Sidecars a test froze (SIGSTOP): thawed and stopped after it, whatever it did."""
    sidecars: list[RunningSidecar] = []
    yield sidecars
    for sidecar in sidecars:
        if sidecar.alive():
            os.kill(sidecar.process.pid, signal.SIGCONT)
        sidecar.stop()


async def test_a_frozen_sidecar_does_not_hold_the_stop_past_its_grace(
    tmp_path: Path, frozen: list[RunningSidecar]
) -> None:
    """Found by an SRE: a paused sidecar (`docker pause`) kept its connection open after the hub
    had ended its stream, and gRPC's stop waited a second full grace for it, so a supervisor's
    SIGKILL came before the `stopped` record. Here the grace is long and the supervisor's
    timeout half of it: the stop must be over (and recorded) well before either."""
    grace = 30.0
    config = hub_config() | {"shutdown_grace_s": grace}
    hub = start_hub(tmp_path / "hub", config=config, http=False)
    try:
        sidecar = start_sidecar(
            tmp_path / "sbx", sandbox_manifest(tmp_path / "sbx"), hub=hub.grpc, token=TOKENS["sbx-42"]
        )
        frozen.append(sidecar)

        async def present() -> bool:
            return "sbx-42__files_read" in await tool_names(hub, TOKENS["ops"])

        await wait_for(present, what="the sidecar to register")
        os.kill(sidecar.process.pid, signal.SIGSTOP)
        started = time.monotonic()
        hub.stop(timeout=grace / 2)  # SIGTERM, then SIGKILL after that long, as systemd does
        took = time.monotonic() - started
    finally:
        hub.stop()
    assert hub.process.returncode == 0, (took, hub.log())
    assert took < grace / 2, took
    events = [r.body_json().get("event") for r in await all_records(hub.state_dir) if r.kind == "hub"]
    assert events[-1] == "stopped", events
    assert not (hub.state_dir / "hub.json").exists()  # the next start finds a clean stop


async def test_a_call_the_stop_ended_while_it_waited_for_approval_leaves_it_expired(tmp_path: Path) -> None:
    """Found by an SRE: after three SIGTERM restarts, three approvals stayed pending that no call
    waited for (the stop's cancellation looked like a caller giving up), counting against the
    principal's `max_pending_per_principal`. A kill -9 left them expired at the next start."""
    config = GATED | {"shutdown_grace_s": 0.5}
    hub = start_hub(tmp_path, config=config, packs=[PROBE_PACK, RISKY_PACK])
    client = HubClient(hub.grpc)
    try:
        call = start_call(client, GATED_TOKENS["agent-a"], "delete_thing", {"name": "during-stop"})
        approval_id = await call.approval_id()
        hub.process.send_signal(signal.SIGTERM)
        stopped = text_of(await call.result())
        assert "the hub is shutting down: the call was stopped before it finished" in stopped, stopped
        assert hub.stop() == 0, hub.log()
    finally:
        await client.close()
    again = start_hub(tmp_path, config=config, packs=[PROBE_PACK, RISKY_PACK])
    try:
        assert approval_id not in [a.id for a in await listing(again.grpc, GATED_TOKENS["alice"], "pending")]
        mine = next(
            a for a in await listing(again.grpc, GATED_TOKENS["alice"], "expired") if a.id == approval_id
        )
        assert mine.decision_reason == "the hub stopped while the call was waiting"
        states = [b.get("state") for kind, b in await records_of(again, mine.call_id) if kind == "approval"]
        assert states == ["pending", "expired"], states
        # Expired by the stop itself, so the start had nothing to fail.
        assert "were waiting for approval when the hub stopped" not in again.log()
    finally:
        again.stop()


async def test_the_tools_revision_does_not_repeat_across_a_restart(tmp_path: Path) -> None:
    """Found by an SRE: ListTools said revision 6 before and after a restart with other tools, so
    a client that kept the revision took the new list for the one it had."""
    revisions: dict[str, tuple[int, set[str]]] = {}
    for pack in ("diagnostics", PROBE_PACK):  # one pack each: as many changes in both runs
        hub = start_hub(tmp_path, config={"packs": [pack]}, http=False)
        client = HubClient(hub.grpc)
        try:
            listed = await client.list_tools(None, "", 0)
            revisions[pack] = (listed.revision, {t.name for t in listed.tools})
        finally:
            await client.close()
            hub.stop()
    (first, first_tools), (second, second_tools) = revisions.values()
    assert first_tools != second_tools
    assert second > first, revisions


async def test_a_known_sandboxs_tool_is_unavailable_until_its_sidecar_registers_again(tmp_path: Path) -> None:
    """Found by an SRE: for seconds after a restart, calls of a sandbox's tools were told "unknown
    tool ... list the tools to see what exists" until its sidecar had redialled. A tool the hub
    has pinned for a sandbox that is not connected is UNAVAILABLE, to call again later."""
    hub = start_hub(tmp_path / "hub", config=hub_config(), http=False)
    sidecar = start_sidecar(
        tmp_path / "sbx", sandbox_manifest(tmp_path / "sbx"), hub=hub.grpc, token=TOKENS["sbx-42"]
    )
    try:

        async def present() -> bool:
            return "sbx-42__files_read" in await tool_names(hub, TOKENS["ops"])

        await wait_for(present, what="the sidecar to register")
    finally:
        sidecar.stop()
        hub.stop()
    again = start_hub(tmp_path / "hub", config=hub_config(), http=False)
    try:
        async with connect("grpc", again.grpc, None, TOKENS["agent-42"]) as client:
            with pytest.raises(ProtocolFailure) as unavailable:
                await client.call("sbx-42__files_read", {"path": "hello.txt"})
            assert unavailable.value.data == grpc.StatusCode.UNAVAILABLE, unavailable.value
            assert "sandbox 'sbx-42' is not connected to the hub" in str(unavailable.value)
            # A name the sandbox never offered is unknown, as before.
            with pytest.raises(ProtocolFailure) as unknown:
                await client.call("sbx-42__no_such_tool", {})
            assert unknown.value.data == grpc.StatusCode.NOT_FOUND, unknown.value
        # A caller that may not call the sandbox's tools learns nothing more than "unknown".
        async with connect("grpc", again.grpc, None, TOKENS["sbx-43"]) as client:
            with pytest.raises(ProtocolFailure) as hidden:
                await client.call("sbx-42__files_read", {"path": "hello.txt"})
            assert hidden.value.data == grpc.StatusCode.NOT_FOUND, hidden.value
    finally:
        again.stop()
    # Review: once its principal is gone from the config, nothing can register it again, and
    # "call again later" would have a client retry for ever: it is an unknown tool.
    config = hub_config()
    config["principals"] = [p for p in config["principals"] if p["name"] != "sbx-42"]
    removed = start_hub(tmp_path / "hub", config=config, http=False)
    try:
        async with connect("grpc", removed.grpc, None, TOKENS["agent-42"]) as client:
            with pytest.raises(ProtocolFailure) as gone:
                await client.call("sbx-42__files_read", {"path": "hello.txt"})
            assert gone.value.data == grpc.StatusCode.NOT_FOUND, gone.value
    finally:
        removed.stop()


async def test_a_draining_hub_refuses_a_new_mcp_session_as_it_refuses_calls(tmp_path: Path) -> None:
    """Found by an SRE: while the hub drained (/healthz 503) a 2025-06-18 `initialize` still got
    200 and a session, whose every call would then be refused; it gets the calls' answer now."""
    token = "drain-agent-token-0123456789"
    config = {"shutdown_grace_s": 30, "principals": [{"name": "agent-7", "token": token}]}
    hub = start_hub(tmp_path, config=config)
    client = HubClient(hub.grpc)
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "late", "version": "1"},
        },
    }
    headers = {"authorization": f"Bearer {token}", "accept": "application/json, text/event-stream"}
    try:
        running = asyncio.ensure_future(
            client.call_tool(token, pb.CallToolRequest(name="sleep", arguments_json=b'{"seconds": 3}'))
        )
        async with httpx2.AsyncClient(base_url=hub.http_base) as http:
            opened = await http.post("/mcp", json=initialize, headers=headers)
            assert opened.status_code == 200 and opened.headers.get("mcp-session-id"), opened.text
            await asyncio.sleep(0.3)  # the call runs
            hub.process.send_signal(signal.SIGTERM)
            code, _, _ = await until(hub, 503, timeout=5)
            assert code == 503
            refused = await http.post("/mcp", json=initialize, headers=headers)
        assert refused.status_code == 503, refused.text
        assert "mcp-session-id" not in refused.headers
        assert refused.json()["error"] == {
            "code": -32033,
            "message": "the hub is shutting down; call again later (another replica, or this one once it "
            "is back)",
        }
        assert (await running).content[0].text.text == "slept 3s"  # the drain went on meanwhile
    finally:
        await client.close()
        assert hub.stop() == 0


async def test_the_stopped_record_is_the_last_though_callers_keep_calling(tmp_path: Path) -> None:
    """Review: `stopped` was written before the servers closed, and callers that went on calling
    (refused: `requested` and `finished unavailable` each) wrote hundreds of records after it;
    hub.json was removed as soon as it was durable, so a crash or a lost record after it passed
    for a clean stop at the next start."""
    hub = start_hub(tmp_path, http=False)
    client = HubClient(hub.grpc)
    request = pb.CallToolRequest(name="echo", arguments_json=b'{"text": "again"}')
    stop_calling = asyncio.Event()

    async def keep_calling() -> None:
        while not stop_calling.is_set():
            try:
                await client.call_tool(None, request, timeout=2)
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.001)

    callers = [asyncio.create_task(keep_calling()) for _ in range(4)]
    try:
        await asyncio.sleep(0.5)
        hub.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(hub.process.wait, 30) == 0
    finally:
        stop_calling.set()
        await asyncio.gather(*callers)
        await client.close()
        hub.stop()
    last = (await all_records(hub.state_dir))[-1]
    assert last.kind == "hub" and b'"stopped"' in last.body, last
    assert not (hub.state_dir / "hub.json").exists()

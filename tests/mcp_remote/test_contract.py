"""The hub does what proto/ says, for a client written from proto/ alone: keepalive pings it
permits, how watches end at a shutdown, what it logs for results a client cannot take."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mcp_local.servicer import CLIENT_PING_INTERVAL_MS
from mcphub_proto.metadata import ERROR_FROM, FROM_HUB
from mcphub_proto.v1 import approvals_pb2 as apb
from mcphub_proto.v1 import approvals_pb2_grpc as apb_grpc
from mcphub_proto.v1 import toolhub_pb2 as pb
from mcphub_proto.v1 import toolhub_pb2_grpc as pb_grpc
from tests.support.hub import PROBE_PACK, start_hub

pytestmark = pytest.mark.anyio


async def test_a_client_pinging_at_the_permitted_interval_keeps_a_silent_call(tmp_path: Path) -> None:
    """gRPC's default let a client ping every 5 minutes at most: one pinging every few seconds
    lost a call silent for four of its pings to GOAWAY `too_many_pings` (UNAVAILABLE, which
    retry policies retry). At the interval toolhub.proto permits, the call lasts until its
    deadline. The test takes about 20 s: six and a half pings of the 3 s interval (the old
    limit ended the call at the fourth or fifth)."""
    hub = start_hub(tmp_path, packs=[PROBE_PACK], http=False)
    options = [
        ("grpc.keepalive_time_ms", CLIENT_PING_INTERVAL_MS),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    try:
        async with grpc.aio.insecure_channel(hub.grpc, options=options) as channel:
            tools = pb_grpc.ToolHubStub(channel)
            # wait_for_cancel runs a minute; CallTool sends nothing until it ends.
            request = pb.CallToolRequest(
                name="wait_for_cancel", arguments_json=orjson.dumps({"marker": "ka"})
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await tools.CallTool(request, timeout=CLIENT_PING_INTERVAL_MS * 6.5 / 1000)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, caught.value.details()
    finally:
        hub.stop()
    assert "too_many_pings" not in hub.log()


TOKENS = {"agent": "contract-agent-token-0123456789", "alice": "contract-alice-token-0123456789"}
PRINCIPALS = [
    {"name": "agent", "token": TOKENS["agent"]},
    {"name": "alice", "token": TOKENS["alice"], "roles": ["approver"]},
]


def _auth(name: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {TOKENS[name]}"),)


async def test_a_stop_ends_open_watches_first_with_a_status_from_the_hub(tmp_path: Path) -> None:
    """Open WatchTools, WatchApprovals and Health.Watch streams held a stop for its whole grace
    (a minute here) and then ended with gRPC's `Cancelling all calls`, without the
    `mcphub-error-from: hub` toolhub.proto promises; now they end first, so the stop is quick."""
    ask = {"extends": "default", "rules": [{"name": "ask echo", "tools": ["echo"], "decision": "ask"}]}
    config = {"principals": PRINCIPALS, "policy": ask, "shutdown_grace_s": 60}
    hub = start_hub(tmp_path, config=config, http=False)
    try:
        async with grpc.aio.insecure_channel(hub.grpc) as channel:
            watches = [
                pb_grpc.ToolHubStub(channel).WatchTools(pb.WatchToolsRequest(), metadata=_auth("agent")),
                apb_grpc.ApprovalsStub(channel).WatchApprovals(
                    apb.WatchApprovalsRequest(), metadata=_auth("alice")
                ),
                health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest()),
            ]
            await asyncio.wait_for(watches[0].read(), 10)  # the current revision
            await asyncio.wait_for(watches[2].read(), 10)  # SERVING
            # A call waiting for approval, so that WatchApprovals has something to say.
            waiting = pb_grpc.ToolHubStub(channel).StreamCallTool(
                pb.CallToolRequest(name="echo", arguments_json=b'{"text": "hi"}'), metadata=_auth("agent")
            )
            await asyncio.wait_for(waiting.read(), 10)
            await asyncio.wait_for(watches[1].read(), 10)
            hub.process.send_signal(signal.SIGTERM)
            for watch in watches:
                with pytest.raises(grpc.aio.AioRpcError) as ended:
                    while True:
                        message = await asyncio.wait_for(watch.read(), 30)
                        assert message is not grpc.aio.EOF
                assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value.details()
                assert ended.value.details() == "the hub is shutting down"
                assert (ERROR_FROM, FROM_HUB) in tuple(ended.value.trailing_metadata() or ())
        assert hub.stop(timeout=20) == 0  # within the grace: not killed
    finally:
        hub.stop()


async def test_health_list_answers_the_statuses_without_a_traceback(tmp_path: Path) -> None:
    hub = start_hub(tmp_path, http=False)
    try:
        async with grpc.aio.insecure_channel(hub.grpc) as channel:
            listed = await health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest())
        statuses = {name: answer.status for name, answer in listed.statuses.items()}
        serving = health_pb2.HealthCheckResponse.SERVING
        for name in ("", "mcphub.v1.ToolHub", "mcphub.v1.Approvals"):
            assert statuses.get(name) == serving, statuses
    finally:
        hub.stop()
    assert "Traceback" not in hub.log()


async def test_list_approvals_takes_states_in_any_case(tmp_path: Path) -> None:
    """Clients written from the enum's names sent "PENDING", which was INVALID_ARGUMENT."""
    hub = start_hub(tmp_path, config={"principals": PRINCIPALS}, http=False)
    try:
        async with grpc.aio.insecure_channel(hub.grpc) as channel:
            approvals = apb_grpc.ApprovalsStub(channel)
            listed = await approvals.ListApprovals(
                apb.ListApprovalsRequest(states=["PENDING", "Used"]), metadata=_auth("alice")
            )
            assert list(listed.approvals) == []
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await approvals.ListApprovals(
                    apb.ListApprovalsRequest(states=["gone"]), metadata=_auth("alice")
                )
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        hub.stop()

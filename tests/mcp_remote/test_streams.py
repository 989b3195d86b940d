"""Watch streams are bounded per principal (`max_streams_per_principal`): thousands of
WatchTools streams from one token held tens of megabytes of the hub's memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from mcphub_proto.v1 import approvals_pb2 as apb
from mcphub_proto.v1 import approvals_pb2_grpc as apb_grpc
from mcphub_proto.v1 import toolhub_pb2 as pb
from mcphub_proto.v1 import toolhub_pb2_grpc as pb_grpc
from tests.support.hub import start_hub

pytestmark = pytest.mark.anyio

TOKENS = {"agent": "streams-agent-token-0123456789", "alice": "streams-alice-token-0123456789"}
CONFIG: dict[str, Any] = {
    "principals": [
        {"name": "agent", "token": TOKENS["agent"]},
        {"name": "alice", "token": TOKENS["alice"], "roles": ["approver"]},
    ],
    "policy": {"extends": "default", "rules": [{"name": "ask echo", "tools": ["echo"], "decision": "ask"}]},
    "max_sessions_per_principal": 1,
    "max_streams_per_principal": 2,
}


def _auth(name: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {TOKENS[name]}"),)


async def _opened(stream: Any) -> Any:
    """The stream once its first message came (so the hub counts it), or its refusal raised."""
    iterator: AsyncIterator[Any] = stream.__aiter__()
    await asyncio.wait_for(iterator.__anext__(), 10)
    return stream


async def test_a_principal_holds_at_most_its_watch_streams_and_a_closed_one_frees_a_place(
    tmp_path: Path,
) -> None:
    hub = start_hub(tmp_path, config=CONFIG, http=False)
    try:
        async with grpc.aio.insecure_channel(hub.grpc) as channel:
            tools = pb_grpc.ToolHubStub(channel)
            approvals = apb_grpc.ApprovalsStub(channel)
            first = await _opened(tools.WatchTools(pb.WatchToolsRequest(), metadata=_auth("agent")))
            await _opened(tools.WatchTools(pb.WatchToolsRequest(), metadata=_auth("agent")))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _opened(tools.WatchTools(pb.WatchToolsRequest(), metadata=_auth("agent")))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "principal 'agent' already holds 2 watch streams open" in (refused.value.details() or "")
            assert "max_streams_per_principal" in (refused.value.details() or "")

            # Another principal has its own allowance, WatchApprovals counting with WatchTools.
            await _opened(tools.WatchTools(pb.WatchToolsRequest(), metadata=_auth("alice")))
            # A call waiting for approval, so that alice's watch has something to send at once.
            asking = tools.CallTool(
                pb.CallToolRequest(name="echo", arguments_json=b'{"text": "x"}'), metadata=_auth("agent")
            )
            watch = await _opened(
                approvals.WatchApprovals(apb.WatchApprovalsRequest(), metadata=_auth("alice"))
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _opened(approvals.WatchApprovals(apb.WatchApprovalsRequest(), metadata=_auth("alice")))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            watch.cancel()
            asking.cancel()

            # A stream the client closes gives its place back.
            first.cancel()
            for _ in range(50):
                try:
                    await _opened(tools.WatchTools(pb.WatchToolsRequest(), metadata=_auth("agent")))
                    break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("a cancelled WatchTools still counted against its principal")
    finally:
        assert hub.stop() == 0


def test_streams_per_principal_may_not_be_below_sessions(tmp_path: Path) -> None:
    from tests.support.hub import serve_refused

    out = serve_refused(tmp_path, {"max_sessions_per_principal": 100, "max_streams_per_principal": 10})
    assert (
        out.returncode == 2
        and "max_streams_per_principal (10) is below max_sessions_per_principal (100)" in (out.stderr)
    ), out.stderr


def test_an_unset_stream_limit_follows_the_sessions_set_above_its_default(tmp_path: Path) -> None:
    """A config valid before the stream limit came in (`max_sessions_per_principal: 500` alone)
    was refused for a default it never set: "max_streams_per_principal (256) is below
    max_sessions_per_principal (500)", exit 2."""
    from mcp_remote.config import load_config

    path = tmp_path / "hub.yaml"
    path.write_text("max_sessions_per_principal: 500\n")
    assert load_config(path, {}).max_streams_per_principal == 500
    path.write_text("max_sessions_per_principal: 50\n")
    assert load_config(path, {}).max_streams_per_principal == 256
    hub = start_hub(tmp_path / "hub", config={"max_sessions_per_principal": 500}, http=False)
    assert hub.stop() == 0


async def test_a_watch_given_up_while_a_shared_store_hangs_frees_its_place(tmp_path: Path) -> None:
    """Found in review: a WatchApprovals whose caller left while the hub waited for the shared
    store's listening connection kept its place for good; enough of them and the approver could
    not watch until the hub restarted."""
    from tests.support.postgres import running_postgres

    with running_postgres() as pg:
        env = {"AUDIT_DSN": pg.create_database("mcphub_streams")}
        config = {**CONFIG, "audit": {"store": "postgres", "dsn_env": "AUDIT_DSN"}}
        hub = start_hub(tmp_path, config=config, env=env, http=False)
        try:
            async with grpc.aio.insecure_channel(hub.grpc) as channel:
                approvals = apb_grpc.ApprovalsStub(channel)
                with pg.hung():
                    for _ in range(3):  # more than the two places alice has
                        watch = approvals.WatchApprovals(
                            apb.WatchApprovalsRequest(), metadata=_auth("alice"), timeout=1.0
                        )
                        with pytest.raises(grpc.aio.AioRpcError) as left:
                            await watch.read()
                        assert left.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                # The store answers again: alice may watch (a pending call gives her something).
                asking = pb_grpc.ToolHubStub(channel).CallTool(
                    pb.CallToolRequest(name="echo", arguments_json=b'{"text": "x"}'), metadata=_auth("agent")
                )
                watch = await _opened(
                    approvals.WatchApprovals(apb.WatchApprovalsRequest(), metadata=_auth("alice"))
                )
                watch.cancel()
                asking.cancel()
        finally:
            hub.stop()

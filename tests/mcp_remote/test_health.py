"""Health checks say when the hub refuses every call: a load balancer polling `/healthz` or gRPC
health checking sends callers to another replica while this hub's audit log cannot be written
(a full disk) or while it drains for a shutdown, and back once it takes calls again."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx2
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bridge.hubclient import HubClient
from mcp_remote.audit.postgres import PostgresStore
from mcphub_proto.v1 import toolhub_pb2 as pb
from tests.mcp_remote.test_audit import all_records
from tests.support.approvals import decide, start_call, text_of
from tests.support.hub import RunningHub, start_hub
from tests.support.postgres import running_postgres

pytestmark = pytest.mark.anyio

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@contextlib.contextmanager
def small_disk(path: Path, size: str = "4m") -> Iterator[Path]:
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    # The close too: a write the disk took only part of leaves the rest buffered for it to flush.
    with contextlib.suppress(OSError), filler.open("wb") as f:
        while True:
            f.write(b"\0" * 65536)
    return filler


async def states(hub: RunningHub) -> tuple[int, object, int]:
    """`/healthz`'s status and body, and gRPC health checking's status for the whole server."""
    async with httpx2.AsyncClient(base_url=hub.http_base, timeout=10) as http:
        answer = await http.get("/healthz")
    async with grpc.aio.insecure_channel(hub.grpc) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        checked = await stub.Check(health_pb2.HealthCheckRequest(service="mcphub.v1.ToolHub"))
    return answer.status_code, answer.json(), checked.status


async def until(hub: RunningHub, status: int, timeout: float = 20) -> tuple[int, object, int]:
    """The states once `/healthz` answers `status` and gRPC agrees (it follows within a second)."""
    deadline = time.monotonic() + timeout
    agrees = SERVING if status == 200 else NOT_SERVING
    while True:
        seen = await states(hub)
        if (seen[0], seen[2]) == (status, agrees) or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.1)


async def echo(client: HubClient, text: str) -> pb.CallToolResult:
    return await client.call_tool(
        None, pb.CallToolRequest(name="echo", arguments_json=orjson.dumps({"text": text}))
    )


async def test_health_follows_a_full_disk_and_its_recovery(tmp_path: Path) -> None:
    with small_disk(tmp_path / "state"):
        hub = start_hub(tmp_path)
        client = HubClient(hub.grpc)
        try:
            assert await states(hub) == (200, {"status": "ok"}, SERVING)
            filler = fill(tmp_path / "state")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                for i in range(200):  # until the journal's page has no room left
                    await echo(client, "x" * 2000 + str(i))
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            code, body, checked = await until(hub, 503, timeout=5)
            assert code == 503 and checked == NOT_SERVING, (code, body, checked)
            assert body == {
                "status": "unavailable",
                "reason": "the audit log cannot be written; calls are refused until it recovers",
            }
            filler.unlink()
            assert await until(hub, 200) == (200, {"status": "ok"}, SERVING)
            assert (await echo(client, "back")).content[0].text.text == "back"
        finally:
            await client.close()
            hub.stop()


async def test_health_follows_a_database_that_hangs_and_a_caller_that_left_is_recorded_undelivered(
    tmp_path: Path,
) -> None:
    """A PostgreSQL that hangs (stopped, not refusing) held every call without limit, health said
    ok throughout, and a caller that gave up meanwhile was recorded as `finished ... ok` alone."""
    with running_postgres() as pg:
        dsn = pg.create_database("hangs")
        hub = start_hub(
            tmp_path, config={"audit": {"store": "postgres", "dsn_env": "AUDIT_DSN"}}, env={"AUDIT_DSN": dsn}
        )
        client = HubClient(hub.grpc)
        try:
            await echo(client, "before")
            with pg.hung():
                with pytest.raises(grpc.aio.AioRpcError) as gave_up:
                    await client.call_tool(
                        None, pb.CallToolRequest(name="echo", arguments_json=b'{"text": "left"}'), timeout=2
                    )
                assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                code, body, checked = await until(hub, 503, timeout=30)
                assert (code, checked) == (503, NOT_SERVING), (code, body, checked)
                assert body == {
                    "status": "unavailable",
                    "reason": "the audit log cannot be written; calls are refused until it recovers",
                }
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await client.call_tool(
                        None,
                        pb.CallToolRequest(name="echo", arguments_json=b'{"text": "refused"}'),
                        timeout=10,
                    )
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
                assert "the audit store has not answered" in hub.log()
            assert await until(hub, 200, timeout=30) == (200, {"status": "ok"}, SERVING)
            assert (await echo(client, "after")).content[0].text.text == "after"
        finally:
            await client.close()
            assert hub.stop() == 0
        store = PostgresStore(dsn)
        await store.open()
        try:
            records = [r async for r in store.scan()]
        finally:
            await store.close()
    left = next(r.call_id for r in records if r.kind == "requested" and b'"left"' in r.body)
    of_left = [(r.kind, r.body_json().get("status")) for r in records if r.call_id == left]
    assert of_left[-2:] == [("finished", "ok"), ("undelivered", None)], of_left
    undelivered = next(r.body_json() for r in records if r.call_id == left and r.kind == "undelivered")
    assert "deadline" in undelivered["error"], undelivered
    unrecorded = [r.body_json() for r in records if r.kind == "unrecorded"]
    assert [u["calls"] for u in unrecorded] == [1] and unrecorded[0]["tools"] == {"echo": 1}, unrecorded
    assert "the audit store answered again" in hub.log()


async def test_an_idle_hub_s_health_follows_a_database_that_is_down_and_back(tmp_path: Path) -> None:
    """Replicas with no traffic said ok (/healthz 200, SERVING) with their PostgreSQL stopped:
    the first call then ran its tool and had its result withheld. An idle hub probes its store.
    The `unrecorded` record of the calls refused meanwhile names the replica that refused them."""
    with running_postgres() as pg:
        dsn = pg.create_database("idle")
        hub = start_hub(
            tmp_path,
            config={"audit": {"store": "postgres", "dsn_env": "AUDIT_DSN"}, "instance": "replica-idle"},
            env={"AUDIT_DSN": dsn},
        )
        client = HubClient(hub.grpc)
        try:
            await echo(client, "before")
            assert await states(hub) == (200, {"status": "ok"}, SERVING)
            await asyncio.to_thread(pg.pg_ctl, "stop")
            code, body, checked = await until(hub, 503, timeout=30)
            assert (code, checked) == (503, NOT_SERVING), (code, body, checked)
            assert body == {
                "status": "unavailable",
                "reason": "the audit log cannot be written; calls are refused until it recovers",
            }
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await echo(client, "refused before its tool runs")
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
            await asyncio.to_thread(pg.pg_ctl, "start")
            assert await until(hub, 200, timeout=30) == (200, {"status": "ok"}, SERVING)
            assert (await echo(client, "after")).content[0].text.text == "after"
        finally:
            await client.close()
            assert hub.stop() == 0
        assert "the audit store does not answer" in hub.log()
        store = PostgresStore(dsn)
        await store.open()
        try:
            records = [r async for r in store.scan()]
        finally:
            await store.close()
    texts = [r.body_json().get("arguments", {}).get("text") for r in records if r.kind == "requested"]
    assert texts == ["before", "after"], texts
    unrecorded = [r.body_json() for r in records if r.kind == "unrecorded"]
    assert [u["calls"] for u in unrecorded] == [1], unrecorded
    # Replicas sharing the log each write their own: it says whose (it did not).
    assert unrecorded[0].get("instance") == "replica-idle", unrecorded


async def test_health_says_not_serving_while_the_hub_drains(tmp_path: Path) -> None:
    """And a call refused meanwhile is recorded with who sent it (it was `-`: refused before
    authentication ran)."""
    token = "drain-agent-token-0123456789"
    config = {"shutdown_grace_s": 5, "principals": [{"name": "agent-7", "token": token}]}
    hub = start_hub(tmp_path, config=config)
    client = HubClient(hub.grpc)
    try:
        running = asyncio.ensure_future(
            # Holding the drain long enough for the checks below on a loaded machine.
            client.call_tool(token, pb.CallToolRequest(name="sleep", arguments_json=b'{"seconds": 4}'))
        )
        await asyncio.sleep(0.3)
        hub.process.send_signal(signal.SIGTERM)
        code, body, checked = await until(hub, 503, timeout=5)
        assert (code, body, checked) == (
            503,
            {"status": "unavailable", "reason": "the hub is shutting down"},
            NOT_SERVING,
        )
        for sender in (token, "not-a-token-of-this-hub-0123"):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.call_tool(
                    sender, pb.CallToolRequest(name="echo", arguments_json=b'{"text": "x"}')
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (await running).content[0].text.text == "slept 4s"
    finally:
        await client.close()
        assert hub.stop() == 0
    refusals = [
        r.principal
        for r in await all_records(hub.state_dir)
        if r.kind == "finished" and r.tool == "echo" and r.body_json().get("status") == "unavailable"
    ]
    assert refusals == ["agent-7", "-"]


async def test_a_decision_the_store_cannot_take_is_unavailable_and_can_be_made_again(tmp_path: Path) -> None:
    """Deciding an approval on a full disk answered INTERNAL with a traceback in the log."""
    ask = {
        "policy": {
            "extends": "default",
            "rules": [{"name": "ask echo", "tools": ["echo"], "decision": "ask"}],
        }
    }
    with small_disk(tmp_path / "state"):
        hub = start_hub(tmp_path, config=ask)
        client = HubClient(hub.grpc)
        operator = (hub.state_dir / "operator.token").read_text().strip()
        try:
            call = start_call(client, "", "echo", {"text": "held"})
            approval_id = await call.approval_id()
            filler = fill(tmp_path / "state")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await decide(hub.grpc, operator, approval_id, True)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
            assert "could not be stored" in (refused.value.details() or "")
            filler.unlink()
            await until(hub, 200)
            assert (await decide(hub.grpc, operator, approval_id, True)).state == "approved"
            assert text_of(await call.result()) == "held"
            log = hub.log_path.read_text()
            # One line, as the other writes a full disk refuses are logged, not a traceback.
            assert (
                f"could not record the decision on approval {approval_id}: OperationalError: database or "
                "disk is full" in log
            ), log
            assert "Traceback" not in log, log
        finally:
            await client.close()
            hub.stop()


@pytest.mark.parametrize("then", ["stop", "recover"])
async def test_one_call_refused_on_a_full_disk_is_counted_in_words_that_agree(
    then: str, tmp_path: Path
) -> None:
    """It logged "1 calls refused while the audit store could not be written are not counted"
    at a stop, and "1 calls were refused ..." at the recovery."""
    with small_disk(tmp_path / "state"):
        hub = start_hub(tmp_path)
        client = HubClient(hub.grpc)
        try:
            filler = fill(tmp_path / "state")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                for i in range(200):  # until the journal's page has no room left
                    await echo(client, "x" * 2000 + str(i))
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            await until(hub, 503, timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as refused:  # refused before it runs: unrecorded
                await echo(client, "one more")
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            if then == "recover":
                filler.unlink()
                await until(hub, 200)
        finally:
            await client.close()
            status = hub.stop()
        log = hub.log_path.read_text()
        if then == "stop":
            assert status == 3  # what the full disk kept out of the log is lost
            words = "1 call refused while the audit store could not be written is not counted in the log"
        else:
            words = "1 call was refused while the audit store could not be written; one `unrecorded`"
        assert words in log, log

"""Approvals one agent cannot use to lock approvers out: huge arguments are kept as an excerpt,
listings come in pages that gRPC carries, one principal's pending approvals are capped, and the
approvals table drops what can no longer change (on a real hub, SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest

from bridge.hubclient import HubClient
from mcp_local.content import REFUSED_META
from mcp_local.errors import ResourceExhausted
from mcp_local.principals import Principal
from mcp_remote.approvals import Approval, ApprovalBook
from mcp_remote.audit import RecordQuery
from mcp_remote.audit.postgres import PostgresStore
from mcp_remote.audit.sqlite import SQLiteStore
from mcphub_proto.v1 import approvals_pb2 as apb
from mcphub_proto.v1 import approvals_pb2_grpc as apb_grpc
from tests.support.approvals import WatchedCall, decide, listing, start_call, text_of
from tests.support.hub import RunningHub, hub_command, start_hub
from tests.support.postgres import Postgres, running_postgres

pytestmark = pytest.mark.anyio

AGENTS = ("agent-a", "agent-b", "agent-c", "agent-d", "agent-e", "agent-f", "agent-g", "agent-h")
TOKENS = {name: f"limits-token-{name}-0123456789" for name in AGENTS} | {
    "alice": "limits-token-alice-approver-01"
}
CONFIG: dict[str, Any] = {
    "principals": [
        *({"name": name, "token": TOKENS[name]} for name in AGENTS),
        {"name": "alice", "token": TOKENS["alice"], "roles": ["approver"]},
    ],
    "policy": {"extends": "default", "rules": [{"name": "ask echo", "tools": ["echo"], "decision": "ask"}]},
}
SHOWN = 64 * 1024
"""How much of a call's arguments an approval keeps (`approvals.ARGUMENTS_SHOWN_BYTES`)."""
ALL_STATES = ("pending", "approved", "denied", "expired", "used")
GRPC_DEFAULT_RECEIVE = 4 * 1024 * 1024
"""What a gRPC client takes in one message unless told otherwise (the `mcphub` CLI among them)."""


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    running = start_hub(tmp_path_factory.mktemp("limits"), config=CONFIG, http=False)
    yield running
    running.stop()


@pytest.fixture
async def client(hub: RunningHub) -> AsyncIterator[HubClient]:
    hub_client = HubClient(hub.grpc)
    yield hub_client
    await hub_client.close()


async def asked_or_refused(call: WatchedCall) -> tuple[str, Any]:
    """("pending", approval id) once the call waits for a person, or ("result", its result)."""
    event = asyncio.ensure_future(call.approval_id())
    done, _ = await asyncio.wait({event, call.task}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if event in done:
        return "pending", event.result()
    event.cancel()
    assert call.task in done, "the call neither waited for approval nor ended"
    return "result", call.task.result()


async def abandoned(client: HubClient, agent: str, text: str) -> str:
    """A call that waits for approval, whose caller then gives up: its approval stays pending."""
    call = start_call(client, TOKENS[agent], "echo", {"text": text})
    kind, value = await asked_or_refused(call)
    assert kind == "pending", value
    call.task.cancel()
    return str(value)


def cli(hub: RunningHub, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        hub_command("approvals", *args, "--hub", hub.grpc, "--token", TOKENS["alice"]),
        capture_output=True,
        text=True,
        timeout=60,
        env=hub.env,
    )


async def page(hub: RunningHub, token: str = "", size: int = 0, *states: str) -> apb.ListApprovalsResponse:
    """One ListApprovals, received as any gRPC client does (default 4 MiB message limit)."""
    async with grpc.aio.insecure_channel(hub.grpc) as channel:
        stub = apb_grpc.ApprovalsStub(channel)
        request = apb.ListApprovalsRequest(states=list(states), page_size=size, page_token=token)
        response: apb.ListApprovalsResponse = await stub.ListApprovals(
            request, metadata=(("authorization", f"Bearer {TOKENS['alice']}"),)
        )
        return response


async def test_abandoned_calls_with_huge_arguments_leave_a_listing_every_approver_can_read(
    hub: RunningHub, client: HubClient
) -> None:
    """Six abandoned calls with 3 MB arguments made every listing 18 MB, past what gRPC sends:
    no approver could list anybody's approvals until they expired."""
    big = ["x" * (3 << 20) + str(i) for i in range(6)]
    mine = [await abandoned(client, "agent-a", text) for text in big]
    theirs = await abandoned(client, "agent-b", "small")

    listed = {a.id: a for a in await listing(hub.grpc, TOKENS["alice"])}
    assert set(mine) | {theirs} <= set(listed)
    for approval_id, text in zip(mine, big, strict=True):
        shown = listed[approval_id]
        whole = orjson.dumps({"text": text})
        assert len(shown.arguments_json.encode()) <= SHOWN
        assert whole.startswith(shown.arguments_json.encode())
        assert len(shown.arguments_json.encode()) + shown.arguments_bytes_left_out == len(whole)
    assert (
        listed[theirs].arguments_json == '{"text":"small"}' and listed[theirs].arguments_bytes_left_out == 0
    )

    shown_cli = cli(hub, "list")
    assert shown_cli.returncode == 0, shown_cli.stderr
    assert theirs in shown_cli.stdout and all(i in shown_cli.stdout for i in mine)
    assert f"{len(whole) - 300} more bytes" in shown_cli.stdout  # the last one's, whole = 3 MB
    as_json = cli(hub, "list", "--json")
    assert as_json.returncode == 0, as_json.stderr
    left_out = {a["id"]: a["arguments_bytes_left_out"] for a in json.loads(as_json.stdout)}
    assert left_out[theirs] == 0 and left_out[mine[0]] == listed[mine[0]].arguments_bytes_left_out

    # The approval still binds the whole arguments, not the excerpt an approver read.
    await decide(hub.grpc, TOKENS["alice"], mine[0], True)
    changed = start_call(client, TOKENS["agent-a"], "echo", {"text": big[0][:-1] + "9"}, approval_id=mine[0])
    refused = await changed.result()
    assert refused["isError"] is True and "the arguments changed" in text_of(refused)
    same = start_call(client, TOKENS["agent-a"], "echo", {"text": big[0]}, approval_id=mine[0])
    ran = await same.result()
    assert not ran.get("isError"), text_of(ran)


async def test_a_listing_larger_than_a_grpc_message_comes_in_pages(
    hub: RunningHub, client: HubClient
) -> None:
    """60 approvals of 75 KB arguments are 4.5 MB: one response would be past the 4 MiB a client
    takes. Each page stays under it, and following next_page_token gets every one, oldest first."""
    text = "y" * 75_000
    ours = set()
    for agent in ("agent-c", "agent-d", "agent-e"):
        ours |= set(await asyncio.gather(*(abandoned(client, agent, text) for _ in range(20))))

    seen: list[apb.Approval] = []
    token = ""
    pages = 0
    while True:
        response = await page(hub, token)
        assert response.ByteSize() < GRPC_DEFAULT_RECEIVE
        seen += response.approvals
        pages += 1
        token = response.next_page_token
        if not token:
            break
    assert pages >= 2
    ids = [a.id for a in seen]
    assert len(ids) == len(set(ids)) and ours <= set(ids)
    created = [a.created_at_unix_ms for a in seen]
    assert created == sorted(created), "oldest first, across pages"

    # A page size pages by count, and the pages join up the same way.
    small: list[str] = []
    token = ""
    while True:
        response = await page(hub, token, 7)
        assert len(response.approvals) <= 7
        small += [a.id for a in response.approvals]
        token = response.next_page_token
        if not token:
            break
    assert small == ids

    for forged in ("not-a-token", "99999999999999999999999:apr_x", "-1:apr_x"):  # the second was INTERNAL
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await page(hub, forged)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "next_page_token" in (
            bad.value.details() or ""
        )

    shown = cli(hub, "list")
    assert shown.returncode == 0, shown.stderr
    assert f"{len(ids)} approvals" in shown.stderr and all(i in shown.stdout for i in ours)


async def test_one_principal_may_have_20_approvals_pending_and_no_more(
    hub: RunningHub, client: HubClient
) -> None:
    """500 abandoned `rm -rf buildN` calls made 500 pending approvals in seconds. Past the cap a
    call is refused at once, and the refusal recorded; other principals are still asked."""
    calls = [start_call(client, TOKENS["agent-f"], "echo", {"text": f"build{i}"}) for i in range(25)]
    outcomes = await asyncio.gather(*(asked_or_refused(call) for call in calls))
    asked = [value for kind, value in outcomes if kind == "pending"]
    refused = [value for kind, value in outcomes if kind == "result"]
    assert len(asked) == 20, "the cap holds for calls arriving together"
    assert len(refused) == 5
    for result in refused:
        assert result["isError"] is True
        assert result["_meta"][REFUSED_META] == "approval"
        assert "too many calls of yours await approval" in text_of(result)

    other = start_call(client, TOKENS["agent-g"], "echo", {"text": "mine"})
    assert (await asked_or_refused(other))[0] == "pending"

    # A decision frees a place.
    await decide(hub.grpc, TOKENS["alice"], asked[0], False, "no")
    again = start_call(client, TOKENS["agent-f"], "echo", {"text": "again"})
    assert (await asked_or_refused(again))[0] == "pending"
    for call in (*calls, other, again):
        call.task.cancel()

    store = SQLiteStore(hub.state_dir / "audit" / "audit.db", read_only=True)
    await store.open()
    try:
        found = await store.query(RecordQuery(principal="agent-f", newest_first=False, limit=10_000))
    finally:
        await store.close()
    refusals = [
        r.body_json() for r in found if r.kind == "approval" and r.body_json().get("state") == "refused"
    ]
    assert len(refusals) == 5
    assert all("too many calls of yours await approval" in body["why"] for body in refusals)


async def test_a_decision_reason_is_bounded_and_a_longer_one_refused_leaving_the_approval_pending(
    hub: RunningHub, client: HubClient
) -> None:
    """A megabyte of reason was stored, recorded, sent to the caller and every watcher."""
    call = start_call(client, TOKENS["agent-h"], "echo", {"text": "why"})
    kind, approval_id = await asked_or_refused(call)
    assert kind == "pending", approval_id
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await decide(hub.grpc, TOKENS["alice"], approval_id, False, "x" * 4097)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the reason is 4097 characters; at most 4096" in (refused.value.details() or "")
    assert [a.id for a in await listing(hub.grpc, TOKENS["alice"]) if a.principal == "agent-h"] == [
        approval_id
    ]
    decided = await decide(hub.grpc, TOKENS["alice"], approval_id, False, "y" * 4096)
    assert decided.state == "denied" and decided.decision_reason == "y" * 4096
    result = await call.task
    assert result["isError"] is True and "y" * 100 in text_of(result)


def _legacy_row(approval_id: str, state: str, text: str, expires_ms: int) -> bytes:
    """An approval as a hub stored it before approvals kept an excerpt of the arguments."""
    return orjson.dumps(
        {
            "id": approval_id,
            "call_id": "c" + approval_id,
            "principal": "agent-a",
            "tool": "echo",
            "args_sha256": "0" * 64,
            "arguments_json": orjson.dumps({"text": text}).decode(),
            "reason": "",
            "rule": "ask echo",
            "approvers": [],
            "state": state,
            "created_ms": expires_ms - 300_000,
            "expires_ms": expires_ms,
            "instance": "old",
            "decided_by": "",
            "decided_ms": 0,
            "decision_reason": "",
            "used_ms": 0,
            "args_key": "",
            "waiting": False,
        }
    )


async def test_a_log_whose_old_approvals_hold_huge_arguments_can_be_listed_after_a_restart(
    tmp_path: Path,
) -> None:
    """`approvals list --all` stayed broken for good: the table kept every approval's whole
    arguments and was never pruned. A hub started on such a log cuts them to the excerpt, and
    drops settled approvals that expired more than `approvals.keep_days` ago."""
    db_path = tmp_path / "state" / "audit" / "audit.db"
    db_path.parent.mkdir(parents=True)
    now = int(time.time() * 1000)
    with sqlite3.connect(db_path) as db:  # the table as hubs made it before
        db.execute("CREATE TABLE approvals (id TEXT PRIMARY KEY, state TEXT NOT NULL, data BLOB NOT NULL)")
        for i in range(6):
            row = _legacy_row(f"apr_old{i}", "expired", "z" * (3 << 20), now - 3600_000)
            db.execute("INSERT INTO approvals VALUES (?, ?, ?)", (f"apr_old{i}", "expired", row))
        long_ago = _legacy_row("apr_ancient", "used", "old", now - 30 * 86400_000)
        db.execute("INSERT INTO approvals VALUES (?, ?, ?)", ("apr_ancient", "used", long_ago))
    hub = start_hub(tmp_path, config=CONFIG, http=False)
    try:
        shown = cli(hub, "list", "--all", "--json")
        assert shown.returncode == 0, shown.stderr
        listed = {a["id"]: a for a in json.loads(shown.stdout)}
        assert set(listed) == {f"apr_old{i}" for i in range(6)}, "the one settled 30 days ago is dropped"
        for approval in listed.values():
            assert len(approval["arguments_json"].encode()) == SHOWN
            assert approval["arguments_bytes_left_out"] == len(orjson.dumps({"text": "z" * (3 << 20)})) - (
                SHOWN
            )
    finally:
        hub.stop()
    with sqlite3.connect(db_path) as db:
        assert max(len(row[0]) for row in db.execute("SELECT data FROM approvals")) < 2 * SHOWN


async def _ask(book: ApprovalBook, principal: str, timeout_s: float = 300) -> Approval:
    return await book.create(
        call_id="c-" + principal,
        principal=principal,
        tool="echo",
        arguments={"text": "x"},
        arguments_json='{"text": "x"}',
        reason="asks",
        rule="r",
        approvers=(),
        timeout_s=timeout_s,
    )


async def _cap_pages_and_pruning(store: Any) -> None:
    """What a book on `store` counts, lists and drops (the same for SQLite and PostgreSQL)."""
    alice = Principal("alice", roles=frozenset({"approver"}))
    book = ApprovalBook(store, "hub-a", max_pending_per_principal=2, keep_s=0)
    try:
        first = await _ask(book, "p1")
        await _ask(book, "p1")
        with pytest.raises(ResourceExhausted, match="too many calls of yours await approval"):
            await _ask(book, "p1")
        denied = await book.decide(first.id, alice, False, "no")
        await _ask(book, "p1")  # a decision frees a place
        # A pending approval of a hub that is gone, past its expiry, holds no place.
        now = int(time.time() * 1000)
        stale = replace(
            first, id="apr_stale", principal="p2", instance="gone", created_ms=now - 2, expires_ms=now - 1
        )
        await store.put_approval(stale)
        assert await store.count_pending("p2", now) == 0
        assert await store.count_pending("p1", now) == 2
        expired = await book.expire((await _ask(book, "p3", timeout_s=0.001)).id, "test")
        assert expired.state == "expired"

        everything = await store.list_approvals(ALL_STATES)
        paged: list[Approval] = []
        while batch := await store.page_approvals(
            ALL_STATES, (paged[-1].created_ms, paged[-1].id) if paged else None, 2
        ):
            paged += batch
        assert [a.id for a in paged] == [a.id for a in everything]
        assert [(a.created_ms, a.id) for a in paged] == sorted((a.created_ms, a.id) for a in paged)

        await asyncio.sleep(0.01)
        assert await book.prune() == 1, "only the expired one: `denied` expires in 300 s, `stale` is pending"
        assert await store.get_approval(expired.id) is None
        assert await store.get_approval(denied.id) is not None
        assert await store.get_approval(stale.id) is not None
    finally:
        await book.close()


async def test_the_sqlite_store_counts_pages_and_prunes_approvals(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "audit.db")
    await store.open()
    try:
        await _cap_pages_and_pruning(store)
    finally:
        await store.close()


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    with running_postgres() as server:
        yield server


async def test_the_postgres_store_counts_pages_and_prunes_approvals_and_cuts_old_ones(pg: Postgres) -> None:
    dsn = pg.create_database("limits")
    now = int(time.time() * 1000)
    old = _legacy_row("apr_old", "pending", "z" * (3 << 20), now + 300_000)
    pg.psql(
        "-d",
        "limits",
        "-c",
        "CREATE TABLE mcphub_approvals (id TEXT PRIMARY KEY, state TEXT NOT NULL, data BYTEA NOT NULL)",
    )
    legacy = PostgresStore(dsn)
    await legacy.open()  # made the columns after `data`; now a row as an older hub writes it
    await legacy._exec("INSERT INTO mcphub_approvals VALUES (%s, %s, %s)", ("apr_old", "pending", old))
    await legacy.close()

    store = PostgresStore(dsn)
    await store.open()
    try:
        cut = await store.get_approval("apr_old")
        assert cut is not None and len(cut.arguments_json.encode()) == SHOWN
        assert cut.arguments_left_out == len(orjson.dumps({"text": "z" * (3 << 20)})) - SHOWN
        assert await store.count_pending("agent-a", now) == 1, "its columns were filled from its data"
        await _cap_pages_and_pruning(store)
    finally:
        await store.close()

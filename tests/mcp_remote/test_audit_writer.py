"""The audit writer on a real SQLite file: inline commits, and what happens when the store
cannot be written (a full disk): the call waiting for durability is refused, the hub reports
itself unhealthy, nothing queued is dropped, and the chain is whole once the store is back.

And the journal in front of SQLite: folded by the writer without anybody asking, read by
readers before it is folded, folded in by the next hub after a SIGKILL, a torn last write
ignored, an edited line caught by `verify` and refused by the next hub."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import httpx2
import orjson
import pytest

from bridge.errors import mcp_error_from_grpc
from bridge.hubclient import HubClient
from mcp_local.content import ToolResult
from mcp_local.errors import DeadlineExceeded, Unavailable
from mcp_local.redaction import Redactor
from mcp_local.tools import ToolCall
from mcp_remote.audit import log as audit_log
from mcp_remote.audit import sqlite as audit_sqlite
from mcp_remote.audit.checkpoints import load_public_keys
from mcp_remote.audit.log import AuditLog
from mcp_remote.audit.records import AuditRecord, ChainHead, PendingRecord
from mcp_remote.audit.sqlite import JournalError, SQLiteStore
from mcp_remote.audit.verify import VerifyReport, verify_log
from mcp_remote.config import load_config
from mcp_remote.gate import AuditTrail
from mcp_remote.hub import Hub
from mcphub_proto.v1 import toolhub_pb2 as pb
from tests.bench.wire import mcp_call
from tests.support.hub import REPO

pytestmark = pytest.mark.anyio

RISKY_PACK = str(REPO / "tests" / "packs" / "risky.py")


class FillableStore(SQLiteStore):
    """The real store, whose disk can be made full."""

    full = False

    def append_now(self, pending: Sequence[PendingRecord]) -> ChainHead:
        if self.full:
            raise sqlite3.OperationalError("database or disk is full")
        return super().append_now(pending)


def rows_in_sqlite(db: Path) -> int:
    connection = sqlite3.connect(db)
    try:
        return int(connection.execute("SELECT count(*) FROM records").fetchone()[0])
    finally:
        connection.close()


async def read_back(db: Path, *signing_keys: Path) -> tuple[list[AuditRecord], VerifyReport]:
    """Every record as `mcphub audit` reads it (SQLite, then the journal), and verify's report."""
    reread = SQLiteStore(db, read_only=True)
    await reread.open()
    try:
        return [r async for r in reread.scan()], await verify_log(
            reread, load_public_keys(list(signing_keys))
        )
    finally:
        await reread.close()


@pytest.fixture
async def full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[FillableStore, AuditLog]]:
    """A running audit log on a store whose disk can be made full (retries every 50 ms)."""
    monkeypatch.setattr(audit_log, "RETRY_DELAY_S", 0.05)
    store = FillableStore(tmp_path / "audit.db")
    log = AuditLog(store, Redactor(), None)
    await log.start()
    yield store, log
    await log.stop()


async def test_commits_inline_and_in_order(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "audit.db")
    log = AuditLog(store, Redactor(), None)
    await log.start()
    log.record("requested", "c1", "agent", "echo", {"arguments_json": b'{"text": "a"}'})
    assert log.commit("finished", "c1", "agent", "echo", {"status": "ok"}) is None
    assert (await store.head()).seq == 2  # durable before commit returned, no await needed
    await log.stop()
    records, report = await read_back(tmp_path / "audit.db")
    assert [r.kind for r in records] == ["requested", "finished"] and report.ok


async def test_a_full_disk_refuses_the_call_and_loses_no_record(
    tmp_path: Path, full_disk: tuple[FillableStore, AuditLog]
) -> None:
    store, log = full_disk
    assert log.commit("finished", "c1", "agent", "echo", {"status": "ok"}) is None

    store.full = True
    waiting = log.commit("finished", "c2", "agent", "echo", {"status": "ok"})
    assert waiting is not None, "a failed inline commit must hand over to the writer"
    with pytest.raises(Unavailable, match="cannot be written"):
        await asyncio.wait_for(asyncio.shield(waiting), 5)
    assert not log.healthy
    # While unhealthy, commits do not try inline: they wait for the writer's retries.
    later = log.commit("finished", "c3", "agent", "echo", {"status": "ok"})
    assert later is not None

    store.full = False
    await asyncio.wait_for(asyncio.shield(later), 5)
    assert log.healthy
    await log.stop()

    records, report = await read_back(tmp_path / "audit.db")
    calls = [r.call_id for r in records]
    assert calls == ["c1", "c2", "c3"], "the refused call's record is kept and written once the disk has room"
    assert report.ok, report.problem


async def test_a_call_refused_for_a_full_disk_is_recorded_as_undelivered(
    tmp_path: Path, full_disk: tuple[FillableStore, AuditLog]
) -> None:
    store, log = full_disk
    trail = AuditTrail(log)

    async def echo(call: ToolCall) -> ToolResult:
        return ToolResult.text("hello")

    store.full = True
    with pytest.raises(Unavailable):
        await trail(ToolCall("echo", b"{}"), echo)
    store.full = False
    await asyncio.wait_for(log.flush(), 5)
    served = await trail(ToolCall("echo", b"{}"), echo)
    assert served.content, "the next call is served once the disk has room"
    await log.stop()
    records, report = await read_back(tmp_path / "audit.db")
    assert report.ok, report.problem
    first = [r for r in records if r.call_id == records[0].call_id]
    assert [r.kind for r in first] == ["requested", "finished", "undelivered"]
    assert first[1].body_json()["status"] == "ok", "the tool did run"
    assert "never saw the result" in first[2].body_json()["error"]


async def test_calls_refused_while_the_disk_is_full_are_counted_in_one_bounded_record(
    tmp_path: Path, full_disk: tuple[FillableStore, AuditLog]
) -> None:
    """A call refused before anything was recorded (the gate's refusal while the log is down)
    left no trace at all: the log could not say that calls were refused, or how many."""
    store, log = full_disk
    store.full = True
    waiting = log.commit("finished", "c1", "agent", "echo", {"status": "ok"})
    assert waiting is not None
    with pytest.raises(Unavailable):
        await asyncio.wait_for(asyncio.shield(waiting), 5)
    key = "ghp_" + "A1b2C3d4E5" * 4  # across the cut: redacted before it, or a part of it would stay
    log.count_unrecorded("agent-0", "t" * 60 + key, "not_found")
    for i in range(30):
        log.count_unrecorded(f"agent-{i}", f"tool_{i}", "unavailable")
    store.full = False
    later = log.commit("finished", "c2", "agent", "echo", {"status": "ok"})
    assert later is not None
    await asyncio.wait_for(asyncio.shield(later), 5)
    await asyncio.wait_for(log.flush(), 5)
    await log.stop()
    records, report = await read_back(tmp_path / "audit.db")
    assert report.ok, report.problem
    assert [r.call_id for r in records if r.kind != "unrecorded"] == ["c1", "c2"]
    (summary,) = [r.body_json() for r in records if r.kind == "unrecorded"]
    assert summary["calls"] == 31 and summary["first_ms"] <= summary["last_ms"]
    assert summary["statuses"] == {"unavailable": 30, "not_found": 1}
    assert len(summary["principals"]) == audit_log.UNRECORDED_NAMES == 20
    assert summary["principals"]["agent-0"] == 2 and summary["other_principals"] == 10
    assert len(summary["tools"]) == 20 and summary["other_tools"] == 11, "named up to a bound, then counted"
    (unknown,) = [name for name in summary["tools"] if name.startswith("t" * 60)]
    assert "[REDACTED]" in unknown and len(unknown) <= audit_log.UNRECORDED_NAME_CHARS, unknown
    assert all(key[:8] not in r.body.decode() for r in records)


async def test_after_an_outage_the_caller_knows_whether_the_tool_ran_and_the_log_counts_the_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real hub in this process, its store failing as a journal made immutable does (EPERM).

    The call whose tool ran was told 'the call was refused'; through the bridge every refusal
    became 'is `mcphub serve` running?'; the calls the gate refused meanwhile left no record."""
    monkeypatch.setattr(audit_log, "RETRY_DELAY_S", 0.05)
    down = False
    append_now = SQLiteStore.append_now

    def failing_append_now(self: SQLiteStore, pending: Sequence[PendingRecord]) -> ChainHead:
        if down:
            raise PermissionError(1, "Operation not permitted", str(self.journal_path))
        return append_now(self, pending)

    monkeypatch.setattr(SQLiteStore, "append_now", failing_append_now)
    token = "writer-test-token-0123456789"
    (tmp_path / "hub.yaml").write_text(
        f"principals: [{{name: agent, token: {token}}}]\npacks: [diagnostics, {RISKY_PACK}]\n"
    )
    overrides = {"grpc": "127.0.0.1:0", "http": "127.0.0.1:0", "state_dir": tmp_path / "state"}
    hub = Hub(load_config(tmp_path / "hub.yaml", {"HOME": str(tmp_path)}, overrides), {})
    addresses = await hub.start()
    assert addresses.mcp_url is not None
    client = HubClient(addresses.grpc)

    async def echo(text: str, who: str = token) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.call_tool(
                who, pb.CallToolRequest(name="echo", arguments_json=orjson.dumps({"text": text}))
            )
        return info.value

    try:
        down = True
        ran = await echo("it ran")
        assert ran.code() == grpc.StatusCode.UNAVAILABLE
        assert (ran.details() or "").startswith("the tool ran, but its result is withheld"), ran.details()
        refused = await echo("refused")
        assert (refused.details() or "").startswith(
            "the audit log cannot be written, so the call was refused"
        )
        assert "did not run" in (refused.details() or "")
        assert mcp_error_from_grpc(refused).message == refused.details(), "the hub's words, over gRPC too"
        call = mcp_call(addresses.mcp_url, token)  # through the bridge in this process (LocalHub)
        async with httpx2.AsyncClient(timeout=30) as http:
            answer = (await http.post(call.url, content=call.body, headers=dict(call.headers))).json()
        assert answer["error"]["code"] == -32033
        assert answer["error"]["message"] == refused.details(), answer
        assert (await echo("who?", "not-a-token")).code() == grpc.StatusCode.UNAUTHENTICATED
        down = False
        async with asyncio.timeout(10):
            while not hub.audit.healthy:  # noqa: ASYNC110 - polling the writer's retries
                await asyncio.sleep(0.05)

        # A destructive tool's records are durable before it runs: refused then, truthfully.
        down = True
        request = pb.CallToolRequest(name="delete_thing", arguments_json=b'{"name": "x"}')
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.call_tool(token, request)
        assert (info.value.details() or "").startswith(
            "the audit log cannot be written, so the call was refused"
        )
    finally:
        down = False
        await client.close()
        await hub.stop()
    audit_dir = tmp_path / "state" / "audit"
    records, report = await read_back(audit_dir / "audit.db", audit_dir / "signing.pub")
    assert report.ok, report.problem
    calls: dict[str, list[AuditRecord]] = {}
    for r in records:
        calls.setdefault(r.call_id, []).append(r)
    echoed = next(rs for rs in calls.values() if b"it ran" in rs[0].body)
    assert [r.kind for r in echoed] == ["requested", "decided", "started", "finished", "undelivered"]
    assert echoed[3].body_json()["status"] == "ok"
    assert "told that the tool ran" in echoed[4].body_json()["error"]
    deleted = next(rs for rs in calls.values() if rs[0].tool == "delete_thing")
    assert [r.kind for r in deleted] == ["requested", "decided", "finished", "undelivered"], (
        "it never started"
    )
    assert "told the call was refused" in deleted[3].body_json()["error"]
    (summary,) = [r.body_json() for r in records if r.kind == "unrecorded"]
    assert summary["calls"] == 3, summary  # refused over gRPC, through the bridge, and unauthenticated
    assert summary["principals"] == {"agent": 2, "-": 1}
    assert summary["tools"] == {"echo": 3}
    assert summary["statuses"] == {"unavailable": 2, "unauthenticated": 1}


async def test_commits_batch_while_calls_overlap_and_go_inline_when_alone(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "audit.db")
    log = AuditLog(store, Redactor(), None)
    await log.start()
    assert log.commit("finished", "c0", "agent", "echo", {}) is None  # alone: inline

    # Four calls finish in one step while others are still inside the audit trail: one batch.
    log.active = 1
    waiting = [log.commit("finished", f"c{i}", "agent", "echo", {}) for i in range(1, 5)]
    log.active = 0
    assert all(w is not None for w in waiting)
    head_before = (await store.head()).seq
    await asyncio.gather(*(asyncio.shield(w) for w in waiting if w is not None))
    assert (await store.head()).seq == head_before + 4

    # Batches have been shared lately, so a lone commit now waits for the writer too...
    lone = log.commit("finished", "c5", "agent", "echo", {})
    assert lone is not None
    await asyncio.shield(lone)
    # ...until batches carry one commit again; then commits go inline, bar the probes.
    outcomes = []
    for i in range(6, 200):
        pending = log.commit("finished", f"c{i}", "agent", "echo", {})
        outcomes.append(pending is None)
        if pending is not None:
            await asyncio.shield(pending)
    assert outcomes[-50:].count(True) >= 45, outcomes[-50:]
    assert outcomes[-50:].count(False) >= 1, "the probes keep measuring"
    await log.stop()
    records, report = await read_back(tmp_path / "audit.db")
    assert [r.call_id for r in records] == [f"c{i}" for i in range(200)] and report.ok


async def test_the_writer_folds_the_journal_into_sqlite_by_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_log, "FOLD_AFTER_S", 0.05)
    db = tmp_path / "audit.db"
    store = SQLiteStore(db)
    log = AuditLog(store, Redactor(), None)
    await log.start()
    for i in range(3):
        assert log.commit("finished", f"c{i}", "agent", "echo", {}) is None
    assert store.unfolded == 3 and rows_in_sqlite(db) == 0, "durable in the journal, not yet in SQLite"
    records, _ = await read_back(db)
    assert [r.call_id for r in records] == ["c0", "c1", "c2"], "readers see journaled records"
    await asyncio.sleep(0.3)
    assert store.unfolded == 0 and rows_in_sqlite(db) == 3, "folded after FOLD_AFTER_S"
    assert store.journal_path.stat().st_size == 0

    for i in range(3, 3 + audit_log.FOLD_AT):  # enough records to fold at once, timer or not
        pending = log.commit("finished", f"c{i}", "agent", "echo", {})
        if pending is not None:  # a probe of the batching rule goes through the writer
            await asyncio.shield(pending)
    for _ in range(5):
        await asyncio.sleep(0)
    assert store.unfolded == 0 and rows_in_sqlite(db) == 3 + audit_log.FOLD_AT
    await log.stop()
    records, report = await read_back(db)
    assert [r.call_id for r in records] == [f"c{i}" for i in range(3 + audit_log.FOLD_AT)] and report.ok


CRASHING_HUB = """
import asyncio, os, signal, sys
from pathlib import Path
from mcp_local.redaction import Redactor
from mcp_remote.audit.log import AuditLog
from mcp_remote.audit.sqlite import SQLiteStore

async def main() -> None:
    log = AuditLog(SQLiteStore(Path(sys.argv[1])), Redactor(), None)
    await log.start()
    for i in range(int(sys.argv[2])):
        log.record("requested", f"c{i}", "agent", "echo", {"arguments_json": b'{"text": "hi"}'})
        assert log.commit("finished", f"c{i}", "agent", "echo", {"status": "ok"}) is None
    os.kill(os.getpid(), signal.SIGKILL)  # after the calls were durable, before any fold

asyncio.run(main())
"""


def crash_after(db: Path, calls: int) -> None:
    """A hub process that commits `calls` calls' records and is killed before it folds them."""
    done = subprocess.run([sys.executable, "-c", CRASHING_HUB, str(db), str(calls)], timeout=60, check=False)
    assert done.returncode == -9


async def test_a_killed_hubs_journal_is_read_and_then_folded_in_by_the_next(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    crash_after(db, 5)
    assert rows_in_sqlite(db) == 0 and db.with_suffix(".journal").stat().st_size > 0
    records, report = await read_back(db)
    assert [r.call_id for r in records] == [f"c{i // 2}" for i in range(10)] and report.ok, report.problem

    with db.with_suffix(".journal").open("ab") as journal:
        journal.write(b'[11, 1700000000000, "c5", "requ')  # a write the process died in
    store = SQLiteStore(db)
    log = AuditLog(store, Redactor(), None)
    await log.start()
    assert rows_in_sqlite(db) == 10 and store.journal_path.stat().st_size == 0
    assert log.commit("finished", "c9", "agent", "echo", {}) is None
    await log.stop()
    records, report = await read_back(db)
    assert records[-1].call_id == "c9" and len(records) == 11 and report.ok, report.problem


async def test_an_edited_journal_is_caught_by_verify_and_refused_by_the_next_hub(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    crash_after(db, 3)
    journal = db.with_suffix(".journal")
    original = journal.read_bytes()
    journal.write_bytes(original.replace(b'{\\"text\\":\\"hi\\"}', b'{\\"text\\":\\"ho\\"}', 1))
    assert journal.read_bytes() != original
    _, report = await read_back(db)
    assert not report.ok and report.first_bad == 1 and "was edited" in (report.problem or "")
    with pytest.raises(JournalError, match="record 1 \\(line 1\\): its contents do not match its hash"):
        await SQLiteStore(db).open()
    assert rows_in_sqlite(db) == 0, "nothing folded in"

    lines = original.split(b"\n")
    journal.write_bytes(b"\n".join([lines[0], b"not a record", *lines[1:]]))
    records, report = await read_back(db)
    assert [r.call_id for r in records] == ["c0", ""] and "record 2" in (report.problem or ""), report.problem
    with pytest.raises(JournalError, match="line 2: not an audit record"):
        await SQLiteStore(db).open()


async def test_a_journal_that_does_not_continue_the_stored_chain_is_refused(tmp_path: Path) -> None:
    """Folding an edited journal in would chain and sign new records on top of the edit; the
    next hub refuses instead. A journal repeating records SQLite has (a hub killed between a
    fold's commit and emptying the journal) is fine while they are the stored ones."""
    db = tmp_path / "audit.db"
    crash_after(db, 3)
    journal = db.with_suffix(".journal")
    lines = journal.read_bytes().split(b"\n")[:-1]
    assert len(lines) == 6

    journal.write_bytes(b"\n".join([lines[0], *lines[2:]]) + b"\n")
    with pytest.raises(JournalError, match="record 3 \\(line 2\\): expected record 2 next"):
        await SQLiteStore(db).open()
    journal.write_bytes(b"\n".join([lines[1], lines[0], *lines[2:]]) + b"\n")
    with pytest.raises(JournalError, match="record 2 \\(line 1\\): expected record 1 next"):
        await SQLiteStore(db).open()
    assert rows_in_sqlite(db) == 0

    journal.write_bytes(b"\n".join(lines[:4]) + b"\n")  # folded, as if the hub died before emptying it
    store = SQLiteStore(db)
    await store.open()
    await store.close()
    assert rows_in_sqlite(db) == 4 and journal.stat().st_size == 0
    journal.write_bytes(b"\n".join(lines) + b"\n")
    store = SQLiteStore(db)
    await store.open()  # records 1-4 again, as SQLite has them, then 5 and 6
    await store.close()
    records, report = await read_back(db)
    assert [r.seq for r in records] == [1, 2, 3, 4, 5, 6] and report.ok, report.problem

    edited = lines[1].replace(b"finished", b"requested")
    assert edited != lines[1]
    journal.write_bytes(edited + b"\n")
    with pytest.raises(JournalError, match="record 2 \\(line 1\\) differs from the stored one"):
        await SQLiteStore(db).open()


async def test_the_write_ahead_log_is_checkpointed_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's own checkpoint would run inside a fold's COMMIT, on the loop, for milliseconds.
    The store turns it off and checkpoints from a thread every WAL_CHECKPOINT_EVERY records."""
    monkeypatch.setattr(audit_sqlite, "WAL_CHECKPOINT_EVERY", 200)
    db = tmp_path / "audit.db"
    store = SQLiteStore(db)
    await store.open()
    assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    loop_thread = threading.get_ident()
    threads: list[int] = []
    checkpoint = store._checkpoint_wal

    def checkpoint_and_note_the_thread() -> None:
        threads.append(threading.get_ident())
        checkpoint()

    monkeypatch.setattr(store, "_checkpoint_wal", checkpoint_and_note_the_thread)
    body = b'{"output": "' + b"x" * 2000 + b'"}'
    for batch in range(3):
        store.append_now(
            [PendingRecord(0, f"c{batch}-{i}", "finished", "agent", "echo", body) for i in range(50)]
        )
        store.fold()
    assert threads == [] and db.stat().st_size < 64 * 1024, "150 records: in the log, not yet in the database"
    store.append_now([PendingRecord(0, f"c3-{i}", "finished", "agent", "echo", body) for i in range(50)])
    store.fold()
    pending = store._wal_checkpoint
    assert pending is not None
    await pending
    assert threads and loop_thread not in threads, "checkpointed in a thread"
    assert db.stat().st_size > 200 * 2000, "the log's pages were copied into the database"
    await store.close()
    records, report = await read_back(db)
    assert len(records) == 200 and report.ok


async def test_a_full_disk_is_named_when_folding_fails(tmp_path: Path) -> None:
    """Found by a tester: on a full disk the fold's ROLLBACK failed too (SQLite had rolled back
    already) and hid the cause: "cannot rollback - no transaction is active". The records stay in
    the journal, and fold again once there is room."""
    from tests.mcp_remote.test_health import small_disk

    with small_disk(tmp_path / "disk", "2m") as disk:
        store = SQLiteStore(disk / "audit.db")
        await store.open()
        body = b'{"x": "' + b"y" * 4000 + b'"}'
        with pytest.raises(sqlite3.OperationalError) as full:
            for batch in range(1000):
                store.append_now(
                    [PendingRecord(0, f"c{batch}-{i}", "finished", "a", "echo", body) for i in range(20)]
                )
                store.fold()
        assert "database or disk is full" in str(full.value)
        assert store.unfolded == 20, "the batch that did not fit is still to be folded"
        with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
            await store.close()  # it folds first, and says so too


async def test_packs_filling_the_default_thread_pool_do_not_make_the_log_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: the log's own blocking work (a journal written with `sync: true`, the
    fsyncs of a checkpoint) waited for a thread of asyncio's default pool, which packs fill with
    their `to_thread` work; six slow tool calls made a write wait past HUNG_WRITE_S and the hub
    refused every call with the disk idle. The log has threads of its own."""
    import time

    monkeypatch.setattr(audit_log, "HUNG_WRITE_S", 1.0)
    monkeypatch.setattr(audit_log, "HUNG_CHECK_S", 0.1)
    store = SQLiteStore(tmp_path / "audit.db", sync=True)
    log = AuditLog(store, Redactor(), None)
    await log.start()
    loop = asyncio.get_running_loop()
    workers = getattr(loop, "_default_executor", None)
    size = workers._max_workers if workers is not None else min(32, (os.cpu_count() or 1) + 4)
    busy = [loop.run_in_executor(None, time.sleep, 3) for _ in range(size + 2)]
    try:
        for i in range(3):
            batch = log.commit("finished", f"c{i}", "agent", "echo", {"status": "ok"})
            if batch is not None:
                await asyncio.shield(batch)  # Unavailable when the log took the wait for a hang
            await asyncio.sleep(0.5)
        assert log.healthy
    finally:
        await asyncio.gather(*busy)
        await log.stop()


class SlowStore(SQLiteStore):
    """The real store, on a disk that takes `slow_s` per write once told to."""

    slow_s = 0.0

    def append_now(self, pending: Sequence[PendingRecord]) -> ChainHead:
        time.sleep(self.slow_s)
        return super().append_now(pending)


async def test_a_deadline_that_passes_while_the_finished_record_is_written_leaves_it_undelivered(
    tmp_path: Path,
) -> None:
    """Reported: the caller got DEADLINE_EXCEEDED, and the log said `finished` ok and nothing more,
    when the deadline passed while the `finished` record was being made durable (7 calls in 15
    with deadlines around a `sleep 0.3`). gRPC drops a result past its deadline; the log says so."""
    store = SlowStore(tmp_path / "audit.db")
    log = AuditLog(store, Redactor(), None)
    await log.start()
    trail = AuditTrail(log)

    async def tool(call: ToolCall) -> ToolResult:
        store.slow_s = 0.3  # its `finished` record takes longer than the deadline leaves
        return ToolResult.text("done")

    late = ToolCall("echo", b"{}", deadline=asyncio.get_running_loop().time() + 0.1)
    try:
        with pytest.raises(DeadlineExceeded, match="deadline passed before its result could be sent"):
            await trail(late, tool)
        store.slow_s = 0.0
        timely = ToolCall("echo", b"{}", deadline=asyncio.get_running_loop().time() + 30)
        assert (await trail(timely, tool)).content
    finally:
        store.slow_s = 0.0
        await log.stop()
    records, report = await read_back(tmp_path / "audit.db")
    assert report.ok, report.problem
    kinds = {call: [r.kind for r in records if r.call_id == call] for call in (late.call_id, timely.call_id)}
    assert kinds[late.call_id] == ["requested", "finished", "undelivered"], kinds
    assert kinds[timely.call_id] == ["requested", "finished"], kinds
    finished, undelivered = (
        r.body_json() for r in records if r.call_id == late.call_id and r.kind != "requested"
    )
    assert finished["status"] == "ok"
    assert "deadline passed while its audit records were being written" in undelivered["error"]

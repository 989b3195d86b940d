"""The PostgreSQL store when its connections are lost: a restarted server is connected to again
and calls recover, a commit whose answer was lost is neither lost nor appended twice, a hub told
to stop while the database is down stops, and approval watchers keep getting every change."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mcp_local.errors import Unavailable
from mcp_local.redaction import Redactor
from mcp_remote import approvals as approvals_module
from mcp_remote.approvals import Approval, ApprovalBook
from mcp_remote.audit import log as audit_log
from mcp_remote.audit.checkpoints import CheckpointSigner
from mcp_remote.audit.log import AuditLog
from mcp_remote.audit.postgres import SCHEMA_VERSION, PostgresStore
from mcp_remote.audit.records import PendingRecord
from mcp_remote.audit.store import AuditStoreUnreachable, RecordQuery
from mcp_remote.audit.verify import verify_log
from tests.support.postgres import Postgres, running_postgres

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    with running_postgres() as server:
        yield server


async def committed(log: AuditLog, call_id: str) -> None:
    """Commit one record, waiting for the writer (not inline: PostgreSQL never is)."""
    batch = log.commit("finished", call_id, "agent", "echo", {"status": "ok"})
    if batch is not None:
        await asyncio.shield(batch)


async def calls_in(store: PostgresStore) -> list[str]:
    return [r.call_id async for r in store.scan()]


async def test_a_restarted_database_is_written_again_and_calls_recover(
    pg: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_log, "RETRY_DELAY_S", 0.05)
    store = PostgresStore(pg.create_database("restarted"))
    log = AuditLog(store, Redactor(), None)
    await log.start()
    book = ApprovalBook(store, "replica-a")
    try:
        await committed(log, "before")
        approval = await book.create(
            call_id="before",
            principal="agent",
            tool="delete_thing",
            arguments={"name": "x"},
            arguments_json="{}",
            reason="risky",
            rule="r",
            approvers=(),
            timeout_s=60,
        )
        await asyncio.to_thread(pg.pg_ctl, "restart")

        # The first write after the restart finds its idle connection gone and writes on a new
        # one: no call is refused once the database is back (review of 92a4229: the first calls
        # after every restart or idle_session_timeout were).
        async with asyncio.timeout(20):
            await committed(log, "during")
            await committed(log, "after")
        assert log.healthy
        # The approvals side connects again too, reads and writes alike.
        assert (await store.get_approval(approval.id)) is not None
        await asyncio.to_thread(pg.pg_ctl, "restart")
        assert await book.expire(approval.id, "test") is not None
        assert [a.state for a in await store.list_approvals(("expired",))] == ["expired"]
    finally:
        await book.close()
        async with asyncio.timeout(30):
            await log.stop()
    reread = PostgresStore(pg.dsn("restarted"))
    await reread.open()
    try:
        assert await calls_in(reread) == ["before", "during", "after"]
        assert (await verify_log(reread, {})).ok
    finally:
        await reread.close()


class CommitCutter:
    """A TCP proxy to the server that, when told, passes a COMMIT on and drops the server's answer
    with the connection: the commit is done, and the client cannot know it."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.cut_next_commit = False

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:  # the server is down: so is this connection
            client_w.close()
            return
        cut = asyncio.Event()

        async def up() -> None:
            while data := await client_r.read(65536):
                if self.cut_next_commit and b"COMMIT" in data:
                    self.cut_next_commit = False
                    cut.set()
                server_w.write(data)
                await server_w.drain()

        async def down() -> None:
            while data := await server_r.read(65536):
                if cut.is_set():
                    break  # the answer to COMMIT: never delivered
                client_w.write(data)
                await client_w.drain()
            client_w.close()
            server_w.close()

        await asyncio.gather(up(), down(), return_exceptions=True)

    async def close(self) -> None:
        self._server.close()


def records(*call_ids: str) -> list[PendingRecord]:
    return [PendingRecord(1, call_id, "finished", "agent", "echo", b"{}") for call_id in call_ids]


async def test_a_batch_whose_commit_answer_was_lost_is_appended_exactly_once(pg: Postgres) -> None:
    pg.create_database("cut")
    proxy = CommitCutter(pg.port)
    port = await proxy.start()
    store = PostgresStore(f"host=127.0.0.1 port={port} user=postgres dbname=cut connect_timeout=10")
    await store.open()
    try:
        await store.append(records("a"))
        proxy.cut_next_commit = True
        with pytest.raises(Unavailable, match="cannot be reached"):
            await store.append(records("b", "c"))
        # The writer sends the batch again, with what was queued since.
        head = await store.append(records("b", "c", "d"))
        assert head.seq == 4
        assert await calls_in(store) == ["a", "b", "c", "d"]
        assert (await verify_log(store, {})).ok

        # A batch whose commit did not happen (the server went away first) is written when sent again.
        await asyncio.to_thread(pg.pg_ctl, "stop")
        with pytest.raises(Unavailable):
            await store.append(records("e"))
        await asyncio.to_thread(pg.pg_ctl, "start")
        assert (await store.append(records("e", "f"))).seq == 6
        assert await calls_in(store) == ["a", "b", "c", "d", "e", "f"]
    finally:
        await store.close()
        await proxy.close()


async def test_a_log_told_to_stop_while_the_database_is_down_stops_and_says_what_is_lost(
    pg: Postgres, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(audit_log, "RETRY_DELAY_S", 0.05)
    store = PostgresStore(pg.create_database("stopping"))
    log = AuditLog(store, Redactor(), None)
    await log.start()
    await committed(log, "before")
    await asyncio.to_thread(pg.pg_ctl, "stop")
    try:
        with pytest.raises(Unavailable):
            await committed(log, "refused")
        log.record("hub", "-", "-", "-", {"event": "stopped"})
        with caplog.at_level(logging.ERROR, logger="mcp_remote.audit.log"):
            async with asyncio.timeout(15):  # the grace (5 s), and the writer's current wait
                await log.stop()
        assert "2 audit records are not in the log" in caplog.text
    finally:
        await asyncio.to_thread(pg.pg_ctl, "start")


async def test_an_approval_watch_outlives_its_lost_connection_and_misses_no_change(
    pg: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        approvals_module, "LISTEN_RETRY_S", 0.05, raising=False
    )  # absent before it reconnected
    dsn = pg.create_database("watched")
    watching, deciding = PostgresStore(dsn), PostgresStore(dsn)
    await watching.open()
    await deciding.open()
    here, there = ApprovalBook(watching, "replica-a"), ApprovalBook(deciding, "replica-b")

    async def create(name: str) -> Approval:
        return await there.create(
            call_id=name,
            principal="agent",
            tool="delete_thing",
            arguments={"name": name},
            arguments_json="{}",
            reason="risky",
            rule="r",
            approvers=(),
            timeout_s=60,
        )

    async def until_seen(queue: asyncio.Queue[Approval], *expected: tuple[str, str]) -> None:
        missing = set(expected)
        async with asyncio.timeout(20):
            while missing:
                seen = await queue.get()
                missing.discard((seen.id, seen.state))

    queue = await here.watch()
    try:
        first = await create("first")
        await until_seen(queue, (first.id, "pending"))
        assert await asyncio.to_thread(pg.terminate, "LISTEN%") == 1
        # Changed while nobody listens, or just after: the watcher sees both.
        second = await create("second")
        await there.expire(first.id, "test")
        await until_seen(queue, (second.id, "pending"), (first.id, "expired"))
        third = await create("third")
        await until_seen(queue, (third.id, "pending"))
    finally:
        here.unwatch(queue)
        await here.close()
        await there.close()
        await watching.close()
        await deciding.close()


async def test_a_write_the_database_does_not_answer_counts_as_failing_until_it_is_done(
    pg: Postgres, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that hangs (stopped, not refusing) held every commit without limit, and the log
    stayed healthy: now its waiters are told, calls are refused, and the write, once the server
    answers, is in the log once."""
    monkeypatch.setattr(audit_log, "HUNG_WRITE_S", 1.0)
    monkeypatch.setattr(audit_log, "HUNG_CHECK_S", 0.1, raising=False)  # absent before it was checked
    store = PostgresStore(pg.create_database("hanging"))
    log = AuditLog(store, Redactor(), None)
    await log.start()
    try:
        await committed(log, "before")
        with caplog.at_level(logging.WARNING, logger="mcp_remote.audit.log"), pg.hung():
            async with asyncio.timeout(10):
                with pytest.raises(Unavailable):
                    await committed(log, "held")
                assert not log.healthy
                # A commit queued while the write still hangs is not held either.
                with pytest.raises(Unavailable):
                    await committed(log, "queued")
            assert "the audit store has not answered a write" in caplog.text
        async with asyncio.timeout(20):
            await committed(log, "after")
        assert log.healthy
        assert "the audit store answered again" in caplog.text
    finally:
        async with asyncio.timeout(30):
            await log.stop()
    reread = PostgresStore(pg.dsn("hanging"))
    await reread.open()
    try:
        assert await calls_in(reread) == ["before", "held", "queued", "after"]
        assert (await verify_log(reread, {})).ok
    finally:
        await reread.close()


async def test_a_log_told_to_stop_while_the_database_hangs_stops(
    pg: Postgres, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(audit_log, "HUNG_WRITE_S", 1.0)
    monkeypatch.setattr(audit_log, "HUNG_CHECK_S", 0.1, raising=False)  # absent before it was checked
    store = PostgresStore(pg.create_database("hung_stop"))
    log = AuditLog(store, Redactor(), None)
    await log.start()
    await committed(log, "before")
    with pg.hung():
        with pytest.raises(Unavailable):
            async with asyncio.timeout(10):
                await committed(log, "held")
        with caplog.at_level(logging.ERROR, logger="mcp_remote.audit.log"):
            async with asyncio.timeout(30):  # the grace, and psycopg's own bound on cancelling
                await log.stop(grace=1.0)
    assert "1 audit records are not in the log" in caplog.text


async def test_a_checkpoint_the_database_does_not_answer_counts_as_failing_too(
    pg: Postgres, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The writer signs checkpoints between batches: one that hangs holds every commit after it."""
    monkeypatch.setattr(audit_log, "HUNG_WRITE_S", 1.0)
    monkeypatch.setattr(audit_log, "HUNG_CHECK_S", 0.1, raising=False)  # absent before it was checked
    store = PostgresStore(pg.create_database("hanging_checkpoint"))
    log = AuditLog(
        store,
        Redactor(),
        CheckpointSigner(tmp_path),
        checkpoint_every=10**6,
        checkpoint_interval_s=0.3,
        checkpoint_file=tmp_path / store.checkpoint_file_name,
    )
    await log.start()
    try:
        await committed(log, "before")
        with pg.hung():
            async with asyncio.timeout(10):
                while log.healthy:  # noqa: ASYNC110 - the next tick's checkpoint waits for the server
                    await asyncio.sleep(0.05)
                with pytest.raises(Unavailable):
                    await committed(log, "held")
        async with asyncio.timeout(20):
            await committed(log, "after")
        assert log.healthy
    finally:
        async with asyncio.timeout(30):
            await log.stop()
    reread = PostgresStore(pg.dsn("hanging_checkpoint"))
    await reread.open()
    try:
        assert await calls_in(reread) == ["before", "held", "after"]
        assert [c.seq for c in await reread.checkpoints()][:1] == [1]
    finally:
        await reread.close()


async def test_records_after_a_sequence_number_come_a_page_at_a_time_oldest_first(pg: Postgres) -> None:
    """`audit tail -f` and `audit query --after` read by sequence number: the store answers the
    records past it, oldest first, as many as asked, and nothing is skipped between pages."""
    store = PostgresStore(pg.create_database("after"))
    await store.open()
    try:
        await store.append(records(*"abcdefg"))
        page = await store.query(RecordQuery(after_seq=2, limit=3, newest_first=False))
        assert [(r.seq, r.call_id) for r in page] == [(3, "c"), (4, "d"), (5, "e")]
        rest = await store.query(RecordQuery(after_seq=page[-1].seq, limit=3, newest_first=False))
        assert [r.call_id for r in rest] == ["f", "g"]
        assert await store.query(RecordQuery(after_seq=7, limit=3, newest_first=False)) == []
    finally:
        await store.close()


async def test_tail_follow_waits_out_a_database_restart(pg: Postgres, tmp_path: Path) -> None:
    """`audit tail -f` reopened the store every half second (running the schema's statements each
    time) and quit with exit 2 on the first look that found the database down: a log shipper
    following the log lost it at every PostgreSQL restart. Now it keeps its store, says that it
    waits, and goes on from the record it had reached."""
    dsn = pg.create_database("following")
    store = PostgresStore(dsn)
    await store.open()
    config = tmp_path / "hub.yaml"
    config.write_text(yaml.safe_dump({"audit": {"store": "postgres", "dsn_env": "FOLLOW_DSN"}}))
    command = [sys.executable, "-m", "mcp_remote.cli", "audit", "tail", "-f", "-n", "0", "--json"]
    follower = subprocess.Popen(  # noqa: ASYNC220 - started once; read from a thread below
        [*command, "--config", str(config), "--state-dir", str(tmp_path / "state")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "FOLLOW_DSN": dsn},
        text=True,
    )
    try:
        await store.append(records("a", "b"))
        await asyncio.sleep(1.5)  # the follower is past its first look
        await asyncio.to_thread(pg.pg_ctl, "stop")
        await asyncio.sleep(3)  # looks that find the database down
        assert follower.poll() is None, follower.communicate()
        await asyncio.to_thread(pg.pg_ctl, "start")
        await store.append(records("c", "d"))
        seen: list[str] = []
        deadline = time.monotonic() + 30
        assert follower.stdout is not None
        while len(seen) < 2 and time.monotonic() < deadline:
            line = await asyncio.wait_for(asyncio.to_thread(follower.stdout.readline), 30)
            seen.append(json.loads(line)["call_id"])
        assert seen == ["c", "d"]
        assert follower.poll() is None
    finally:
        follower.terminate()
        _, err = follower.communicate(timeout=30)
        await store.close()
    assert "trying again every 2s" in err and "answers again" in err, err


async def test_opening_the_store_waits_for_no_lock_a_reader_s_long_transaction_holds(pg: Postgres) -> None:
    """Every open ran the whole schema (ALTER TABLE, CREATE INDEX) in one transaction: behind a
    reader's long transaction on the approvals it queued for its locks, and every replica's
    writes queued behind it (calls refused, health 503). A hub starting on a current schema, and
    `mcphub audit`, now run no DDL: with a lock timeout, they would fail if they waited."""
    import psycopg

    dsn = pg.create_database("long_reader")
    log = AuditLog(PostgresStore(dsn), Redactor(), None)
    await log.start()
    reader = await psycopg.AsyncConnection.connect(dsn)
    try:
        await reader.execute("SELECT count(*) FROM mcphub_approvals")  # its transaction stays open
        impatient = f"{dsn} options='-c lock_timeout=3000'"
        for read_only in (False, True):
            store = PostgresStore(impatient, read_only=read_only)
            await store.open()
            await store.close()
        async with asyncio.timeout(20):
            await committed(log, "meanwhile")
    finally:
        await reader.close()
        async with asyncio.timeout(30):
            await log.stop()
    assert pg.psql("-d", "long_reader", "-At", "-c", "SELECT version FROM mcphub_schema").strip() == str(
        SCHEMA_VERSION
    )


async def test_hubs_starting_together_make_the_schema_once_and_an_unversioned_one_is_upgraded(
    pg: Postgres,
) -> None:
    for name, hubs in (("together_2", 2), ("together_3", 3)):
        dsn = pg.create_database(name)
        stores = [PostgresStore(dsn) for _ in range(hubs)]
        await asyncio.gather(*(store.open() for store in stores))
        try:
            for i, store in enumerate(stores):
                assert (await store.append(records(f"{name}-{i}"))).seq == i + 1
            assert (await verify_log(stores[0], {})).ok
        finally:
            for store in stores:
                await store.close()

    # Tables made before the schema recorded its version (by an older hub): made current once.
    pg.psql("-d", "together_2", "-c", "DROP TABLE mcphub_schema")
    store = PostgresStore(pg.dsn("together_2"))
    await store.open()
    try:
        assert await calls_in(store) == ["together_2-0", "together_2-1"]
    finally:
        await store.close()
    assert pg.psql("-d", "together_2", "-At", "-c", "SELECT version FROM mcphub_schema").strip() == str(
        SCHEMA_VERSION
    )


async def test_a_reader_s_open_makes_no_tables_and_says_the_database_holds_no_log(pg: Postgres) -> None:
    """`mcphub audit verify` on a mistyped database made the tables and said "audit log OK: 0
    records"."""
    dsn = pg.create_database("mistyped")
    store = PostgresStore(dsn, read_only=True)
    with pytest.raises(
        AuditStoreUnreachable, match=r"^no mcphub audit log in database 127\.0\.0\.1:\d+/mistyped"
    ):
        await store.open()
    assert (
        pg.psql(
            "-d", "mistyped", "-At", "-c", "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'mcphub%'"
        ).strip()
        == "0"
    )


async def test_an_idle_log_probes_its_store_and_a_probe_that_hangs_counts_as_failing(
    pg: Postgres, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An idle log stayed healthy whatever became of its store: health said ok, and the first
    call ran its tool and had its result withheld."""
    monkeypatch.setattr(audit_log, "IDLE_PROBE_S", 0.2, raising=False)  # absent before it probed
    monkeypatch.setattr(audit_log, "HUNG_WRITE_S", 1.0)
    monkeypatch.setattr(audit_log, "HUNG_CHECK_S", 0.1)
    log = AuditLog(PostgresStore(pg.create_database("idle_hung")), Redactor(), None)
    await log.start()
    try:
        await committed(log, "before")
        with caplog.at_level(logging.WARNING, logger="mcp_remote.audit.log"):
            with pg.hung():
                async with asyncio.timeout(10):
                    while log.healthy:  # noqa: ASYNC110 - the probe waits for the server
                        await asyncio.sleep(0.05)
            async with asyncio.timeout(20):
                while not log.healthy:  # noqa: ASYNC110 - the probe's answer comes back
                    await asyncio.sleep(0.05)
            assert "the audit store has not answered a write" in caplog.text
            assert "the audit store answered again" in caplog.text
            await asyncio.to_thread(pg.pg_ctl, "stop")
            try:
                async with asyncio.timeout(10):
                    while log.healthy:  # noqa: ASYNC110 - the next probe finds it down
                        await asyncio.sleep(0.05)
            finally:
                await asyncio.to_thread(pg.pg_ctl, "start")
            async with asyncio.timeout(20):
                while not log.healthy:  # noqa: ASYNC110 - a probe finds it back
                    await asyncio.sleep(0.05)
            assert "the audit store does not answer" in caplog.text
            assert "the audit store answers again" in caplog.text
        await committed(log, "after")
    finally:
        async with asyncio.timeout(30):
            await log.stop()


async def test_the_idle_probe_answers_after_a_database_restart(pg: Postgres) -> None:
    """After a routine restart, the idle probe's (`AuditLog._probe`) first use of the connection the
    server ended failed, and every replica refused calls (health 503) until the next probe, about
    5 s, with "the audit store does not answer" while it did. It tries a new connection once."""
    store = PostgresStore(pg.create_database("idle_restart"))
    await store.open()
    try:
        await store.ping()  # the writer's connection, made
        await asyncio.to_thread(pg.pg_ctl, "restart")
        await store.ping()  # that connection is gone; the server is up
    finally:
        await store.close()


async def test_calls_waiting_through_an_outage_warn_once_a_minute_on_one_line_each(
    pg: Postgres, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The poller of waiting calls warned at each tick (every 0.5 s) for as long as the store was
    down, and the approval watch's warnings spanned several lines (psycopg's message)."""
    monkeypatch.setattr(approvals_module, "POLL_INTERVAL_S", 0.02)
    monkeypatch.setattr(approvals_module, "LISTEN_RETRY_S", 0.05)
    monkeypatch.setattr(approvals_module, "LISTEN_RETRY_MAX_S", 0.1)
    store = PostgresStore(pg.create_database("outage_noise"))
    await store.open()
    book = ApprovalBook(store, "replica-a")
    queue = await book.watch()
    waits = []
    try:
        for name in ("one", "two", "three"):
            approval = await book.create(
                call_id=name,
                principal="agent",
                tool="delete_thing",
                arguments={"name": name},
                arguments_json="{}",
                reason="risky",
                rule="r",
                approvers=(),
                timeout_s=120,
            )
            waits.append(asyncio.ensure_future(book.wait(approval)))
        with caplog.at_level(logging.INFO, logger="mcp_remote.approvals"):
            await asyncio.to_thread(pg.pg_ctl, "stop")
            try:
                await asyncio.sleep(1.5)  # dozens of the poller's ticks, and of the watch's retries
            finally:
                await asyncio.to_thread(pg.pg_ctl, "start")
            async with asyncio.timeout(20):
                while True:
                    with contextlib.suppress(Unavailable):
                        await store.get_approval(approval.id)
                        break
                    await asyncio.sleep(0.05)
                # The watch has caught up (closed while it reads what it missed, it would leave
                # its new connection open).
                while "approval watch: listening again" not in caplog.text:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        unread = [r.getMessage() for r in caplog.records if "cannot read approval" in r.getMessage()]
        assert len(unread) == 1, unread
        assert "trying again every 0.02 s: the PostgreSQL store" in unread[0], unread
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert any("approval watch: lost the store's notices" in w for w in warnings), warnings
        assert any("approval watch: cannot listen to the store" in w for w in warnings), warnings
        assert all("\n" not in w for w in warnings), warnings
    finally:
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)  # their callers gone: the book notes it
        book.unwatch(queue)
        await book.close()
        await store.close()

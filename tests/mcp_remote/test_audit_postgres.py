"""The PostgreSQL store when its connections are lost: a restarted server is connected to again
and calls recover, a commit whose answer was lost is neither lost nor appended twice, a hub told
to stop while the database is down stops, and approval watchers keep getting every change."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from mcp_local.errors import Unavailable
from mcp_local.redaction import Redactor
from mcp_remote import approvals as approvals_module
from mcp_remote.approvals import Approval, ApprovalBook
from mcp_remote.audit import log as audit_log
from mcp_remote.audit.log import AuditLog
from mcp_remote.audit.postgres import PostgresStore
from mcp_remote.audit.records import PendingRecord
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

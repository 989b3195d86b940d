"""The audit writer on a real SQLite file: inline commits, and what happens when the store
cannot be written (a full disk): the call waiting for durability is refused, the hub reports
itself unhealthy, nothing queued is dropped, and the chain is whole once the store is back."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from mcp_local.errors import Unavailable
from mcp_local.redaction import Redactor
from mcp_remote.audit import log as audit_log
from mcp_remote.audit.log import AuditLog
from mcp_remote.audit.records import ChainHead, PendingRecord
from mcp_remote.audit.sqlite import SQLiteStore
from mcp_remote.audit.verify import verify_log

pytestmark = pytest.mark.anyio


class FillableStore(SQLiteStore):
    """The real store, whose disk can be made full."""

    full = False

    def append_now(self, pending: Sequence[PendingRecord]) -> ChainHead:
        if self.full:
            raise sqlite3.OperationalError("database or disk is full")
        return super().append_now(pending)


async def test_commits_inline_and_in_order(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "audit.db")
    log = AuditLog(store, Redactor(), None)
    await log.start()
    log.record("requested", "c1", "agent", "echo", {"arguments_json": b'{"text": "a"}'})
    assert log.commit("finished", "c1", "agent", "echo", {"status": "ok"}) is None
    assert (await store.head()).seq == 2  # durable before commit returned, no await needed
    await log.stop()
    reread = SQLiteStore(tmp_path / "audit.db", read_only=True)
    await reread.open()
    kinds = [r.kind async for r in reread.scan()]
    assert kinds == ["requested", "finished"]
    assert (await verify_log(reread, {})).ok
    await reread.close()


async def test_a_full_disk_refuses_the_call_and_loses_no_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_log, "RETRY_DELAY_S", 0.05)
    store = FillableStore(tmp_path / "audit.db")
    log = AuditLog(store, Redactor(), None)
    await log.start()
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

    reread = SQLiteStore(tmp_path / "audit.db", read_only=True)
    await reread.open()
    calls = [r.call_id async for r in reread.scan()]
    report = await verify_log(reread, {})
    await reread.close()
    assert calls == ["c1", "c2", "c3"], "the refused call's record is kept and written once the disk has room"
    assert report.ok, report.problem


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
    reread = SQLiteStore(tmp_path / "audit.db", read_only=True)
    await reread.open()
    calls = [r.call_id async for r in reread.scan()]
    await reread.close()
    assert calls == [f"c{i}" for i in range(200)]

"""The approval book in process, on the hub's SQLite store: what a decision that lands just
before the deadline leaves, whichever replica made it, and the records of refused decisions."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mcp_local.errors import Conflict, PermissionDenied, Unavailable
from mcp_local.principals import Principal
from mcp_remote import approvals
from mcp_remote.approvals import Approval, ApprovalBook
from mcp_remote.audit.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio


async def _ask(book: ApprovalBook, *, timeout_s: float) -> Approval:
    """An approval for agent's call c1 of echo, as the gate creates one."""
    return await book.create(
        call_id="c1",
        principal="agent",
        tool="echo",
        arguments={"text": "x"},
        arguments_json='{"text": "x"}',
        reason="asks",
        rule="r",
        approvers=(),
        timeout_s=timeout_s,
    )


async def test_a_decision_another_replica_made_just_in_time_is_not_expired_by_the_wait(
    tmp_path: Path,
) -> None:
    """The wait timed out before it saw an approval another hub had just decided, expired it
    ('no decision') and refused the call the approver had been told was approved."""
    store = SQLiteStore(tmp_path / "audit.db")
    await store.open()
    events: list[tuple[str, str]] = []
    book = ApprovalBook(
        store, "hub-a", on_event=lambda kind, approval, **_: events.append((kind, approval.state))
    )
    try:
        approval = await _ask(book, timeout_s=0.3)
        waiting = asyncio.ensure_future(book.wait(approval))
        await asyncio.sleep(0.05)
        # Decided elsewhere: in the shared store, without this replica's waiter being woken.
        decided = replace(approval, state="approved", decided_by="alice", decided_ms=approval.created_ms + 1)
        assert await store.swap_approval("pending", decided)
        outcome = await waiting
        assert outcome.state == "approved" and outcome.decided_by == "alice"
        used, why = await book.use(approval.id, "agent", "echo", {"text": "x"}, "c1")
        assert used is not None, why
        assert ("expired", "expired") not in events
    finally:
        await book.close()
        await store.close()


class _DownFor:
    """The SQLite store, whose approvals cannot be read while `down` (a database restart)."""

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store
        self.down = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def get_approval(self, approval_id: str) -> Any:
        if self.down:
            raise Unavailable("the store cannot be reached")
        return await self._store.get_approval(approval_id)


async def test_a_waiting_call_sees_a_decision_made_elsewhere_after_the_store_was_down(tmp_path: Path) -> None:
    """The poll that brings other replicas' decisions to waiting calls ended, silently, at the
    first read that failed: after a database restart a call waited out its whole timeout."""
    sqlite = SQLiteStore(tmp_path / "audit.db")
    await sqlite.open()
    store = _DownFor(sqlite)
    book = ApprovalBook(store, "hub-a")
    try:
        approval = await _ask(book, timeout_s=20)
        waiting = asyncio.ensure_future(book.wait(approval))
        store.down = True
        await asyncio.sleep(1.2)  # two polls fail
        store.down = False
        decided = replace(approval, state="approved", decided_by="alice", decided_ms=approval.created_ms + 1)
        assert await sqlite.swap_approval("pending", decided)
        outcome = await asyncio.wait_for(waiting, 5)  # not the 20 s timeout
        assert outcome.state == "approved"
    finally:
        await book.close()
        await sqlite.close()


APPROVER = Principal("alice", roles=frozenset({"approver"}))
NOBODY = Principal("mallory")


async def test_a_refused_decision_on_a_spent_approval_is_recorded_and_repeats_are_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deciding an approval already expired or used was refused unrecorded; and a refusal
    repeated 500 times left one record, as if it had been tried once."""
    monkeypatch.setattr(approvals, "REPEATS_RECORDED_AFTER_S", 0.3)
    store = SQLiteStore(tmp_path / "audit.db")
    await store.open()
    refused: list[dict[str, Any]] = []

    def on_event(kind: str, approval: Approval, **extra: Any) -> None:
        if kind == "refused":
            refused.append({"id": approval.id, **extra})

    book = ApprovalBook(store, "hub-a", on_event=on_event)
    try:
        expired = await _ask(book, timeout_s=0.05)
        await asyncio.sleep(0.1)
        with pytest.raises(Conflict, match="already expired"):
            await book.decide(expired.id, APPROVER, True, "")
        assert [(r["id"], r["by"], r["attempts"]) for r in refused] == [(expired.id, "alice", 1)]
        assert refused[0]["why"] == f"approval {expired.id} is already expired"

        used = await _ask(book, timeout_s=20)
        await book.decide(used.id, APPROVER, True, "")
        assert (await book.use(used.id, "agent", "echo", {"text": "x"}, "c1"))[0] is not None
        with pytest.raises(Conflict, match="already used"):
            await book.decide(used.id, APPROVER, False, "")
        assert refused[-1]["id"] == used.id and "already used" in refused[-1]["why"]

        refused.clear()
        for _ in range(500):
            with pytest.raises(PermissionDenied):
                await book.decide(used.id, NOBODY, True, "")
        assert [r["attempts"] for r in refused] == [1], "the first at once, its repeats counted"
        await asyncio.sleep(0.5)
        assert [r["attempts"] for r in refused] == [1, 499], "the repeats' count, recorded after a while"
        with pytest.raises(PermissionDenied):
            await book.decide(used.id, NOBODY, True, "")
    finally:
        await book.close()
        await store.close()
    assert [r["attempts"] for r in refused] == [1, 499, 1], "a count not yet recorded is when the book closes"
    assert sum(r["attempts"] for r in refused) == 501

"""The default audit store: SQLite in WAL mode in the hub's state directory.

`synchronous=NORMAL` in WAL mode makes each commit durable against the hub process dying
(SIGKILL included): the WAL is written before the commit returns; only a power loss could
lose the last commits. Calls are short and run on the event loop's thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from ..approvals import Approval, ApprovalState
from .checkpoints import Checkpoint
from .records import GENESIS, AuditRecord, ChainHead, PendingRecord, chain
from .store import RecordQuery

__all__ = ["SQLiteStore"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, call_id TEXT NOT NULL, kind TEXT NOT NULL,
    principal TEXT NOT NULL, tool TEXT NOT NULL, body BLOB NOT NULL, prev TEXT NOT NULL, hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_call ON records (call_id);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER NOT NULL, hash TEXT NOT NULL, ts_ms INTEGER NOT NULL,
    key_id TEXT NOT NULL, signature TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS approvals (id TEXT PRIMARY KEY, state TEXT NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS approvals_state ON approvals (state);
"""


def _record(row: tuple[Any, ...]) -> AuditRecord:
    """A row as a record, whatever an editor left in its columns (verify must report, not crash)."""
    seq, ts_ms, call_id, kind, principal, tool, body, prev, hash_ = row
    data = bytes(body) if isinstance(body, bytes | memoryview) else str(body).encode()
    return AuditRecord(
        seq, ts_ms, str(call_id), str(kind), str(principal), str(tool), data, str(prev), str(hash_)
    )


def _approval_from(data: bytes) -> Approval:
    raw = orjson.loads(data)
    raw["approvers"] = tuple(raw["approvers"])
    return Approval(**raw)


def _approval_data(approval: Approval) -> bytes:
    from dataclasses import asdict

    return orjson.dumps(asdict(approval))


class SQLiteStore:
    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self._db: sqlite3.Connection | None = None
        self._head = ChainHead(0, GENESIS)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the audit store is not open")
        return self._db

    async def open(self) -> None:
        if self.read_only:
            if not self.path.exists():
                raise FileNotFoundError(f"no audit log at {self.path}")
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.path.chmod(0o600)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        row = self.db.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        self._head = ChainHead(row[0], row[1]) if row else ChainHead(0, GENESIS)

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def append(self, pending: Sequence[PendingRecord]) -> ChainHead:
        return self.append_now(pending)

    def append_now(self, pending: Sequence[PendingRecord]) -> ChainHead:
        """Append and commit without yielding to the event loop (see `AuditLog.commit`)."""
        records = chain(self._head, pending)
        db = self.db
        db.execute("BEGIN")
        try:
            db.executemany(
                "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (r.seq, r.ts_ms, r.call_id, r.kind, r.principal, r.tool, r.body, r.prev, r.hash)
                    for r in records
                ],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if records:
            self._head = ChainHead(records[-1].seq, records[-1].hash)
        return self._head

    async def head(self) -> ChainHead:
        return self._head

    async def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        self.db.execute(
            "INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?)",
            (checkpoint.seq, checkpoint.hash, checkpoint.ts_ms, checkpoint.key_id, checkpoint.signature),
        )

    async def checkpoints(self) -> list[Checkpoint]:
        rows = self.db.execute(
            "SELECT seq, hash, ts_ms, key_id, signature FROM checkpoints ORDER BY seq"
        ).fetchall()
        return [Checkpoint(*row) for row in rows]

    async def scan(self) -> AsyncIterator[AuditRecord]:
        cursor = self.db.execute("SELECT * FROM records ORDER BY seq")
        while rows := cursor.fetchmany(1000):
            for row in rows:
                yield _record(row)

    async def query(self, query: RecordQuery) -> list[AuditRecord]:
        rows = self.db.execute(*query.select("records", "?")).fetchall()
        return [_record(row) for row in rows]

    async def put_approval(self, approval: Approval) -> None:
        self.db.execute(
            "INSERT INTO approvals VALUES (?, ?, ?)", (approval.id, approval.state, _approval_data(approval))
        )

    async def get_approval(self, approval_id: str) -> Approval | None:
        row = self.db.execute("SELECT data FROM approvals WHERE id = ?", (approval_id,)).fetchone()
        return _approval_from(row[0]) if row else None

    async def swap_approval(self, expected: ApprovalState, approval: Approval) -> bool:
        cursor = self.db.execute(
            "UPDATE approvals SET state = ?, data = ? WHERE id = ? AND state = ?",
            (approval.state, _approval_data(approval), approval.id, expected),
        )
        return cursor.rowcount == 1

    async def list_approvals(self, states: tuple[ApprovalState, ...]) -> list[Approval]:
        marks = ",".join("?" * len(states))
        rows = self.db.execute(
            f"SELECT data FROM approvals WHERE state IN ({marks})",  # noqa: S608 - placeholders only
            states,
        ).fetchall()
        return sorted((_approval_from(r[0]) for r in rows), key=lambda a: a.created_ms)

"""The `AuditStore` interface: where audit records, checkpoints and approvals are kept.

Two implementations share it: `SQLiteStore` (the default, one hub, WAL, in the state
directory) and `PostgresStore` (several hubs sharing one log). Both append a batch of
records as one transaction that also extends the hash chain, so the chain stays whole
even with several writers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..approvals import ApprovalStore
from .checkpoints import Checkpoint
from .records import AuditRecord, ChainHead, PendingRecord

__all__ = ["AuditStore", "AuditStoreRefused", "AuditStoreUnreachable", "RecordQuery"]


class AuditStoreRefused(RuntimeError):
    """The audit log will not be written: the hub must not start (its message says why)."""


class AuditStoreUnreachable(AuditStoreRefused):
    """The store cannot be opened: its connection string is wrong, or its server refuses or cannot
    be reached. A problem of configuration (exit code 2); the message never holds a password."""


@dataclass(frozen=True, slots=True)
class RecordQuery:
    tool: str | None = None
    principal: str | None = None
    since_ms: int | None = None
    call_id: str | None = None
    after_seq: int | None = None
    """Only records past this sequence number: a reader's cursor (`audit tail -f`, `query --after`)."""
    limit: int = 100
    newest_first: bool = True

    def select(self, table: str, mark: str) -> tuple[str, tuple[object, ...]]:
        """The SELECT for this query on `table`, with `mark` as the driver's placeholder."""
        clauses: list[str] = []
        params: list[object] = []
        for column, value in (
            ("tool", self.tool),
            ("principal", self.principal),
            ("call_id", self.call_id),
        ):
            if value is not None:
                clauses.append(f"{column} = {mark}")
                params.append(value)
        if self.since_ms is not None:
            clauses.append(f"ts_ms >= {mark}")
            params.append(self.since_ms)
        if self.after_seq is not None:
            clauses.append(f"seq > {mark}")
            params.append(self.after_seq)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        order = "DESC" if self.newest_first else "ASC"
        sql = f"SELECT * FROM {table} {where} ORDER BY seq {order} LIMIT {mark}"  # noqa: S608 - fixed names
        return sql, (*params, self.limit)

    def matches(self, record: AuditRecord) -> bool:
        """The same filter as `select`, for records not (yet) in a table."""
        return (
            (self.tool is None or record.tool == self.tool)
            and (self.principal is None or record.principal == self.principal)
            and (self.call_id is None or record.call_id == self.call_id)
            and (self.since_ms is None or record.ts_ms >= self.since_ms)
            and (self.after_seq is None or record.seq > self.after_seq)
        )


class AuditStore(ApprovalStore, Protocol):
    @property
    def checkpoint_file_name(self) -> str:
        """The name of this log's copy of its signed checkpoints in the state directory."""
        ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def append(self, pending: Sequence[PendingRecord]) -> ChainHead:
        """Chain and store `pending` durably in one transaction; returns the new head."""
        ...

    async def head(self) -> ChainHead: ...

    async def add_checkpoint(self, checkpoint: Checkpoint) -> None: ...

    async def checkpoints(self) -> list[Checkpoint]: ...

    def scan(self) -> AsyncIterator[AuditRecord]:
        """Every record in sequence order (for verify)."""
        ...

    async def query(self, query: RecordQuery) -> list[AuditRecord]: ...

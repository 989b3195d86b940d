"""The shared audit store: PostgreSQL, for several hubs writing one log.

Each batch of records is one transaction that locks the chain head row, so hubs take
turns extending the one hash chain. Commits are durable (PostgreSQL's default
`synchronous_commit`). Approvals live here too, so any hub can decide or use them; each change
to one is announced (NOTIFY, in the statement that makes it) to every hub watching approvals.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, replace
from typing import Any

import orjson

from mcp_local.redaction import without_dsn

from ..approvals import Approval, ApprovalState
from .checkpoints import Checkpoint
from .records import GENESIS, AuditRecord, ChainHead, PendingRecord, chain
from .store import AuditStoreUnreachable, RecordQuery

__all__ = ["PostgresStore"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS mcphub_records (
    seq BIGINT PRIMARY KEY, ts_ms BIGINT NOT NULL, call_id TEXT NOT NULL, kind TEXT NOT NULL,
    principal TEXT NOT NULL, tool TEXT NOT NULL, body BYTEA NOT NULL, prev TEXT NOT NULL, hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS mcphub_records_tool ON mcphub_records (tool, seq);
CREATE INDEX IF NOT EXISTS mcphub_records_principal ON mcphub_records (principal, seq);
CREATE INDEX IF NOT EXISTS mcphub_records_call ON mcphub_records (call_id);
CREATE TABLE IF NOT EXISTS mcphub_chain_head (
    id INT PRIMARY KEY CHECK (id = 1), seq BIGINT NOT NULL, hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS mcphub_checkpoints (
    seq BIGINT NOT NULL, hash TEXT NOT NULL, ts_ms BIGINT NOT NULL,
    key_id TEXT NOT NULL, signature TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS mcphub_approvals (id TEXT PRIMARY KEY, state TEXT NOT NULL, data BYTEA NOT NULL);
"""
_SCHEMA_LOCK = 0x6D6370687562  # "mcphub": hubs starting together create the schema one at a time


_APPROVALS_CHANNEL = "mcphub_approvals"
_NOTICE_MAX = 7900  # bytes; PostgreSQL refuses a payload of 8000 or more


def _approval_from(data: bytes) -> Approval:
    raw = orjson.loads(data)
    raw["approvers"] = tuple(raw["approvers"])
    return Approval(**raw)


def _notice(approval: Approval) -> str:
    """The approval as it is now, without its key; only its id when too long for a notice (the
    listener then reads the row, which may have changed again by then)."""
    data = orjson.dumps(asdict(replace(approval, args_key="")))
    return data.decode() if len(data) <= _NOTICE_MAX else approval.id


class _ApprovalNotices:
    """The changes to approvals other sessions announce, on a connection of its own."""

    def __init__(self, conn: Any, store: PostgresStore) -> None:
        self._conn = conn
        self._store = store

    async def __aiter__(self) -> AsyncIterator[Approval]:
        async for notice in self._conn.notifies():
            payload: str = notice.payload
            if payload.startswith("{"):
                yield _approval_from(payload.encode())
            else:
                approval = await self._store.get_approval(payload)
                if approval is not None:
                    yield replace(approval, args_key="")

    async def aclose(self) -> None:
        await self._conn.close()


class PostgresStore:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._writer: Any = None
        self._reader: Any = None
        self._lock = asyncio.Lock()

    @property
    def checkpoint_file_name(self) -> str:
        """The state directory's copy of this log's signed checkpoints (`audit/<name>`): one per
        database, named by its host, port and name (not the password), so that a hub moved to
        another log does not hold the old log's checkpoints against it."""
        import hashlib

        from psycopg.conninfo import conninfo_to_dict

        try:
            info = conninfo_to_dict(self._dsn)
        except Exception:  # an unparsable DSN fails at open(), with psycopg's own message
            info = {"dsn": self._dsn}
        where = "|".join(str(info.get(k, "")) for k in ("host", "port", "dbname", "dsn"))
        return f"checkpoints-postgres-{hashlib.sha256(where.encode()).hexdigest()[:12]}.jsonl"

    async def open(self) -> None:
        """Connect and create the tables; raises `AuditStoreUnreachable` saying why it cannot."""
        import psycopg

        try:
            self._writer = await psycopg.AsyncConnection.connect(self._dsn)
            self._reader = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
            async with self._writer.transaction():
                await self._writer.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                await self._writer.execute(SCHEMA)
                await self._writer.execute(
                    "INSERT INTO mcphub_chain_head VALUES (1, 0, %s) ON CONFLICT (id) DO NOTHING", (GENESIS,)
                )
        except psycopg.Error as exc:
            await self.close()
            # psycopg's message may quote the DSN, password included (a DSN it cannot parse).
            lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
            why = without_dsn("; ".join(lines) or type(exc).__name__, self._dsn)
            raise AuditStoreUnreachable(
                f"the PostgreSQL audit store ({self._where()}) cannot be used: {why}"
            ) from None

    def _where(self) -> str:
        """Host, port and database of the DSN, for messages; never its password."""
        from psycopg.conninfo import conninfo_to_dict

        try:
            info = conninfo_to_dict(self._dsn)
        except Exception:  # psycopg's own parse error, which may quote the DSN: not shown
            return "a connection string that cannot be parsed"
        host = str(info.get("host") or info.get("hostaddr") or "local socket")
        port = f":{info['port']}" if info.get("port") else ""
        database = info.get("dbname")
        return f"{host}{port}/{database}" if database else f"{host}{port}"

    async def close(self) -> None:
        writer, reader, self._writer, self._reader = self._writer, self._reader, None, None
        for conn in (writer, reader):
            if conn is not None:
                await conn.close()

    async def append(self, pending: Sequence[PendingRecord]) -> ChainHead:
        conn = self._writer
        async with conn.transaction():
            cursor = await conn.execute("SELECT seq, hash FROM mcphub_chain_head WHERE id = 1 FOR UPDATE")
            seq, hash_ = await cursor.fetchone()
            records = chain(ChainHead(seq, hash_), pending)
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO mcphub_records VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [
                        (r.seq, r.ts_ms, r.call_id, r.kind, r.principal, r.tool, r.body, r.prev, r.hash)
                        for r in records
                    ],
                )
            head = ChainHead(records[-1].seq, records[-1].hash) if records else ChainHead(seq, hash_)
            await conn.execute(
                "UPDATE mcphub_chain_head SET seq = %s, hash = %s WHERE id = 1", (head.seq, head.hash)
            )
        return head

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        async with self._lock:
            cursor = await self._reader.execute(sql, params)
            rows: list[Any] = await cursor.fetchall()
            return rows

    async def _exec(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self._lock:
            cursor = await self._reader.execute(sql, params)
            count: int = cursor.rowcount
            return count

    async def head(self) -> ChainHead:
        rows = await self._fetch("SELECT seq, hash FROM mcphub_chain_head WHERE id = 1")
        return ChainHead(rows[0][0], rows[0][1]) if rows else ChainHead(0, GENESIS)

    async def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        await self._exec(
            "INSERT INTO mcphub_checkpoints VALUES (%s, %s, %s, %s, %s)",
            (checkpoint.seq, checkpoint.hash, checkpoint.ts_ms, checkpoint.key_id, checkpoint.signature),
        )

    async def checkpoints(self) -> list[Checkpoint]:
        rows = await self._fetch(
            "SELECT seq, hash, ts_ms, key_id, signature FROM mcphub_checkpoints ORDER BY seq"
        )
        return [Checkpoint(*row) for row in rows]

    async def scan(self) -> AsyncIterator[AuditRecord]:
        after = 0
        while True:
            rows = await self._fetch(
                "SELECT * FROM mcphub_records WHERE seq > %s ORDER BY seq LIMIT 1000", (after,)
            )
            if not rows:
                return
            for row in rows:
                yield AuditRecord(
                    row[0], row[1], row[2], row[3], row[4], row[5], bytes(row[6]), row[7], row[8]
                )
            after = rows[-1][0]

    async def query(self, query: RecordQuery) -> list[AuditRecord]:
        rows = await self._fetch(*query.select("mcphub_records", "%s"))
        return [AuditRecord(r[0], r[1], r[2], r[3], r[4], r[5], bytes(r[6]), r[7], r[8]) for r in rows]

    async def put_approval(self, approval: Approval) -> None:
        await self._exec(
            "WITH a AS (INSERT INTO mcphub_approvals VALUES (%s, %s, %s) RETURNING id) "
            "SELECT pg_notify(%s, %s) FROM a",
            (
                approval.id,
                approval.state,
                orjson.dumps(asdict(approval)),
                _APPROVALS_CHANNEL,
                _notice(approval),
            ),
        )

    async def get_approval(self, approval_id: str) -> Approval | None:
        rows = await self._fetch("SELECT data FROM mcphub_approvals WHERE id = %s", (approval_id,))
        return _approval_from(bytes(rows[0][0])) if rows else None

    async def swap_approval(self, expected: ApprovalState, approval: Approval) -> bool:
        # The notice goes out only if the row changed, when the statement commits.
        count = await self._exec(
            "WITH a AS (UPDATE mcphub_approvals SET state = %s, data = %s WHERE id = %s AND state = %s "
            "RETURNING id) SELECT pg_notify(%s, %s) FROM a",
            (
                approval.state,
                orjson.dumps(asdict(approval)),
                approval.id,
                expected,
                _APPROVALS_CHANNEL,
                _notice(approval),
            ),
        )
        return count == 1

    async def listen_approvals(self) -> _ApprovalNotices:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
        await conn.execute(f"LISTEN {_APPROVALS_CHANNEL}")
        return _ApprovalNotices(conn, self)

    async def list_approvals(self, states: tuple[ApprovalState, ...]) -> list[Approval]:
        rows = await self._fetch("SELECT data FROM mcphub_approvals WHERE state = ANY(%s)", (list(states),))
        return sorted((_approval_from(bytes(r[0])) for r in rows), key=lambda a: a.created_ms)

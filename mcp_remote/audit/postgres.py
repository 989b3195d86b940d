"""The shared audit store: PostgreSQL, for several hubs writing one log.

Each batch of records is one transaction that locks the chain head row, so hubs take
turns extending the one hash chain. Commits are durable (PostgreSQL's default
`synchronous_commit`). Approvals live here too, so any hub can decide or use them; each change
to one is announced (NOTIFY, in the statement that makes it) to every hub watching approvals.

A lost connection (the server restarted, a proxy cut it) is dropped and made again by the next
use: the writer's next batch, the next approval read. A batch whose commit was under way when
its connection was lost may or may not be in the log; before the next batch, the rows it would
have taken are read back, so a record is appended once whichever way that commit went. A write
to an approval whose outcome is unknown is not repeated: the caller gets UNAVAILABLE.

A server that hangs (stopped, its host's kernel still holding the connection open) is waited for
by the audit writer: only connecting has a timeout. A query cannot be given up without cancelling
it, which waits for the server too (psycopg bounds that at about 10 s, then drops the connection),
and a commit given up may be done all the same. So the writer (`log.py`, HUNG_WRITE_S) counts a
write that has not finished in time as the store failing, refusing calls, and lets it finish when
the server answers: its batch is then in the log once. An approval's read or write does not wait:
its caller (`approvals list`, a decision, a call asking for approval) is told after
APPROVAL_ANSWER_S that the store does not answer, and the query is given up in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, replace
from typing import Any, TypeVar

import orjson

from mcp_local.errors import Unavailable
from mcp_local.redaction import without_dsn

from ..approvals import (
    ARGUMENTS_SHOWN_BYTES,
    OLDER_FORM,
    Approval,
    ApprovalState,
    approval_from_json,
    arguments_excerpt,
)
from .checkpoints import Checkpoint
from .records import GENESIS, AuditRecord, ChainHead, PendingRecord, chain
from .store import AuditStoreUnreachable, RecordQuery

__all__ = ["PostgresStore"]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

APPROVAL_ANSWER_S = 10.0
"""How long an approval's read or write waits for a server that neither answers nor refuses
(SIGSTOP, a stuck disk) before its caller is told the store is unavailable: the writer's
HUNG_WRITE_S. Cancelling the query takes psycopg up to about 10 s more, off the caller's path."""

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
ALTER TABLE mcphub_approvals ADD COLUMN IF NOT EXISTS principal TEXT NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS created_ms BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS expires_ms BIGINT NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS mcphub_approvals_listed ON mcphub_approvals (state, created_ms, id);
CREATE INDEX IF NOT EXISTS mcphub_approvals_principal ON mcphub_approvals (principal, state);
CREATE TABLE IF NOT EXISTS mcphub_schema (id INT PRIMARY KEY CHECK (id = 1), version INT NOT NULL);
"""
SCHEMA_VERSION = 1
"""The version of SCHEMA, recorded in `mcphub_schema` once it is made: a hub runs SCHEMA only on a
database that records an older one (or none), so that starting a hub, or `mcphub audit`, takes no
lock that waits behind readers and holds every replica's writes behind it. Raised with each change
to SCHEMA (tables before it was recorded count as version 0)."""
_SCHEMA_LOCK = 0x6D6370687562  # "mcphub": hubs starting together create the schema one at a time
_TABLES = ("mcphub_records", "mcphub_chain_head", "mcphub_checkpoints")
"""The tables `mcphub audit` reads: a database without them holds no audit log."""


_APPROVALS_CHANNEL = "mcphub_approvals"
_NOTICE_MAX = 7900  # bytes; PostgreSQL refuses a payload of 8000 or more


_approval_from = approval_from_json
_LEGACY_ROWS = (
    "SELECT id FROM mcphub_approvals WHERE created_ms = 0 OR length(data) > %s OR position(%s in data) = 0"
)
"""Rows stored before the columns after `data` existed, or before approvals kept an excerpt of
the arguments, or by an older hub (`OLDER_FORM`; `_fill_approval_columns`)."""


def _approval_row(approval: Approval) -> tuple[Any, ...]:
    """The values of an approval's row after its id: state, data, principal, created_ms, expires_ms."""
    data = orjson.dumps(approval)  # as `asdict` would, without its deep copy
    return (approval.state, data, approval.principal, approval.created_ms, approval.expires_ms)


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


async def _schema_version(conn: Any) -> int:
    """The schema version the database records; 0 for none (no tables, or tables made before
    versions were recorded). Plain reads: they wait for no lock a reader holds."""
    cursor = await conn.execute("SELECT to_regclass('mcphub_schema') IS NOT NULL")
    if not (await cursor.fetchone())[0]:
        return 0
    cursor = await conn.execute("SELECT version FROM mcphub_schema WHERE id = 1")
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


def _why(exc: BaseException, dsn: str) -> str:
    """psycopg's message on one line, without the DSN (it may quote it, password included)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return without_dsn("; ".join(lines) or type(exc).__name__, dsn)


class PostgresStore:
    shared = True
    """Several hubs write this log: its last checkpoint may be another hub's, signed by its key."""

    def __init__(
        self,
        dsn: str,
        *,
        upgrade: Callable[[bytes], Approval | None] | None = None,
        read_only: bool = False,
    ) -> None:
        self._dsn = dsn
        self.upgrade = upgrade
        """Rewrites an approval row an older hub stored, as the hub opens the store (`ApprovalUpgrade`)."""
        self._read_only = read_only
        """For readers (`mcphub audit`): open makes no tables and needs SELECT only."""
        self._writer: Any = None
        self._reader: Any = None
        self._lock = asyncio.Lock()
        self._unsure: tuple[int, list[PendingRecord]] | None = None
        """The last batch sent, after the head it read (seq), until its commit is known to be done."""
        self._written: list[PendingRecord] = []
        """Records found in the log after a lost commit, that the writer, not knowing, sends again."""

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
        """Connect, and make or upgrade the tables if the database records an older schema than
        SCHEMA_VERSION (read-only: check that they are there); raises `AuditStoreUnreachable`
        saying why it cannot."""
        import psycopg

        try:
            self._reader = await self._connect(autocommit=True)
            if self._read_only:
                await self._check_tables()
                return
            self._writer = await self._connect(autocommit=False)
            # Read first, without DDL: ALTER TABLE and CREATE INDEX lock their tables (even when
            # they change nothing) and queue behind a reader's long transaction, and every other
            # replica's writes queue behind them.
            current = await _schema_version(self._reader) >= SCHEMA_VERSION
            async with self._writer.transaction():
                await self._writer.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                if not current and await _schema_version(self._writer) < SCHEMA_VERSION:
                    await self._writer.execute(SCHEMA)
                    await self._writer.execute(
                        "INSERT INTO mcphub_chain_head VALUES (1, 0, %s) ON CONFLICT (id) DO NOTHING",
                        (GENESIS,),
                    )
                    await self._writer.execute(
                        "INSERT INTO mcphub_schema VALUES (1, %s) ON CONFLICT (id) DO UPDATE "
                        "SET version = GREATEST(mcphub_schema.version, EXCLUDED.version)",
                        (SCHEMA_VERSION,),
                    )
                await self._fill_approval_columns(self._writer)
        except psycopg.Error as exc:
            await self.close()
            raise AuditStoreUnreachable(
                f"the PostgreSQL audit store ({self._where()}) cannot be used: {_why(exc, self._dsn)}"
            ) from None
        except AuditStoreUnreachable:
            await self.close()
            raise
        rewritten = getattr(self.upgrade, "rewritten", 0)
        if rewritten:
            logger.info(
                "the PostgreSQL audit store (%s): rewrote %d approvals an older mcphub stored in this "
                "version's form (approver groups as one entry per rule; reasons and arguments redacted "
                "as now)",
                self._where(),
                rewritten,
            )

    async def _check_tables(self) -> None:
        """A reader's open: the audit log's tables must be there (a mistyped database name is
        said so, not read as an empty log), and readable by this role."""
        cursor = await self._reader.execute(
            "SELECT current_user, "
            + ", ".join(
                "CASE WHEN to_regclass(%s) IS NULL THEN NULL ELSE has_table_privilege(%s, 'SELECT') END"
                for _ in _TABLES
            ),
            [name for table in _TABLES for name in (table, table)],
        )
        user, *readable = await cursor.fetchone()
        missing = [table for table, can in zip(_TABLES, readable, strict=True) if can is None]
        if missing:
            raise AuditStoreUnreachable(
                f"no mcphub audit log in database {self._where()}: it has no table {', '.join(missing)}; "
                "give the DSN of the database the hubs write (a hub makes the tables when it first starts)"
            )
        denied = [table for table, can in zip(_TABLES, readable, strict=True) if not can]
        if denied:
            raise AuditStoreUnreachable(
                f"the PostgreSQL audit store ({self._where()}) cannot be read by role {user}: it may not "
                f"SELECT from {', '.join(denied)} (GRANT SELECT ON ALL TABLES IN SCHEMA public TO {user}, "
                "or the schema the hubs write)"
            )

    async def _fill_approval_columns(self, conn: Any) -> None:
        """Fill the columns after `data` of rows stored before them (from the row's data), cut
        the arguments of rows stored before approvals kept an excerpt (six such rows made every
        listing larger than gRPC carries), and rewrite the rows an older hub stored in this
        version's form (`upgrade`, `ApprovalUpgrade`). Under the schema lock, in its transaction;
        each row's work between its queries is small (the queries leave the event loop free)."""
        cursor = await conn.execute(_LEGACY_ROWS, (ARGUMENTS_SHOWN_BYTES, OLDER_FORM))
        for (approval_id,) in await cursor.fetchall():
            cursor = await conn.execute("SELECT data FROM mcphub_approvals WHERE id = %s", (approval_id,))
            data = bytes((await cursor.fetchone())[0])
            try:
                approval = (self.upgrade(data) if self.upgrade is not None else None) or _approval_from(data)
            except (ValueError, TypeError, KeyError):  # no approval: as it is, nothing reads it
                continue
            shown, left_out = arguments_excerpt(approval.arguments_json)
            if left_out:
                approval = replace(
                    approval, arguments_json=shown, arguments_left_out=approval.arguments_left_out + left_out
                )
            await conn.execute(
                "UPDATE mcphub_approvals SET state = %s, data = %s, principal = %s, created_ms = %s, "
                "expires_ms = %s WHERE id = %s",
                (*_approval_row(approval), approval_id),
            )

    async def _connect(self, *, autocommit: bool) -> Any:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        # Without a connect timeout, a server that stopped answering (not refusing) would hold
        # the writer, and a hub told to stop, for as long as TCP gives up: minutes.
        extra: dict[str, Any] = {}
        with contextlib.suppress(Exception):  # an unparsable DSN fails in connect, with its message
            if "connect_timeout" not in conninfo_to_dict(self._dsn):
                extra["connect_timeout"] = 10
        return await psycopg.AsyncConnection.connect(self._dsn, autocommit=autocommit, **extra)

    def _lost(self, exc: BaseException) -> Unavailable:
        return Unavailable(
            f"the PostgreSQL store ({self._where()}) cannot be reached: {_why(exc, self._dsn)}"
        )

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
        import psycopg

        while True:
            fresh = self._writer is None or self._writer.closed
            sent = self._unsure
            try:
                if fresh:
                    self._writer = await self._connect(autocommit=False)
                head = await self._append(self._writer, pending)
                break
            except psycopg.OperationalError as exc:
                writer, self._writer = self._writer, None
                if writer is not None:
                    await writer.close()
                if fresh or self._unsure is not sent:
                    raise self._lost(exc) from exc
                # Lost before this batch was sent: an idle connection the server dropped (a
                # restart, idle_session_timeout), found dead only by using it. Once more on a new
                # one, before any call is refused.
        self._unsure, self._written = None, []
        return head

    async def ping(self) -> None:
        """One round trip on the writer's connection (made again if it was lost), for the audit
        writer when it has not written for a while (`log.py`, IDLE_PROBE_S): a store that is down
        is found, and health says so, without a call having to find it. Raises `Unavailable`.

        An idle connection the server ended (a restart, a failover, idle_session_timeout) is found
        dead only by this use: it is tried once more on a new connection, as `append` does, so a
        database that is back up is not reported down until the next probe."""
        import psycopg

        while True:
            fresh = self._writer is None or self._writer.closed
            try:
                if fresh:
                    self._writer = await self._connect(autocommit=False)
                await self._writer.execute("SELECT 1")
                await self._writer.rollback()
                return
            except psycopg.Error as exc:
                writer, self._writer = self._writer, None
                if writer is not None:
                    await writer.close()
                if fresh:
                    raise self._lost(exc) from exc

    async def _append(self, conn: Any, pending: Sequence[PendingRecord]) -> ChainHead:
        async with conn.transaction():
            cursor = await conn.execute("SELECT seq, hash FROM mcphub_chain_head WHERE id = 1 FOR UPDATE")
            seq, hash_ = await cursor.fetchone()
            if self._unsure is not None:
                await self._settle(conn, *self._unsure)
            written = len(self._written)
            if list(pending[:written]) != self._written:  # pragma: no cover - the writer resends in order
                raise RuntimeError("the audit writer did not send again the batch whose commit was lost")
            pending = pending[written:]
            self._unsure = (seq, list(pending))
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

    async def _settle(self, conn: Any, after: int, sent: list[PendingRecord]) -> None:
        """Was the batch whose commit was lost committed? Its rows would follow record `after`,
        as sent: no other batch holds the same call ids, times and bodies."""
        cursor = await conn.execute(
            "SELECT ts_ms, call_id, kind, principal, tool, body FROM mcphub_records "
            "WHERE seq > %s AND seq <= %s ORDER BY seq",
            (after, after + len(sent)),
        )
        rows = [PendingRecord(r[0], r[1], r[2], r[3], r[4], bytes(r[5])) for r in await cursor.fetchall()]
        if sent and rows == sent:
            self._written += sent
        self._unsure = None

    async def _reading(self) -> Any:
        if self._reader is None or self._reader.closed:
            self._reader = await self._connect(autocommit=True)
        return self._reader

    async def _drop_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.close()

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Rows of a read; a read cut off by a lost connection is tried once more on a new one."""
        import psycopg

        async with self._lock:
            for attempt in (1, 2):
                try:
                    cursor = await (await self._reading()).execute(sql, params)
                    rows: list[Any] = await cursor.fetchall()
                    return rows
                except psycopg.OperationalError as exc:
                    await self._drop_reader()
                    if attempt == 2:
                        raise self._lost(exc) from exc
            raise AssertionError("unreachable")  # pragma: no cover

    async def _exec(self, sql: str, params: Sequence[Any] = ()) -> int:
        """A write, sent once: one whose connection was lost may have been done, so its caller is
        told the store is unavailable. The connection is tried first (a round trip, at the pace
        of approvals), so one the server dropped while idle (a restart) is made again instead."""
        import psycopg

        await self._fetch("SELECT 1")
        async with self._lock:
            try:
                cursor = await (await self._reading()).execute(sql, params)
            except psycopg.OperationalError as exc:
                await self._drop_reader()
                raise self._lost(exc) from exc
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

    async def _approval_io(self, what: Awaitable[_T]) -> _T:
        """`what` (a `_fetch` or `_exec` of approvals), or Unavailable once it has not answered for
        APPROVAL_ANSWER_S. Not `asyncio.timeout`: its exit waits for psycopg's cancellation,
        which waits on the hung server too; the query is let go, and finishes in the background."""
        task = asyncio.ensure_future(what)
        done, _ = await asyncio.wait({task}, timeout=APPROVAL_ANSWER_S)
        if task in done:
            return task.result()
        task.cancel()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: not reported
        raise Unavailable(
            f"the PostgreSQL store ({self._where()}) has not answered an approval's read or write "
            f"for {APPROVAL_ANSWER_S:.0f} s (it hangs: neither answers nor refuses)"
        )

    async def put_approval(self, approval: Approval) -> None:
        await self._approval_io(
            self._exec(
                "WITH a AS (INSERT INTO mcphub_approvals "
                "(id, state, data, principal, created_ms, expires_ms) "
                "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id) SELECT pg_notify(%s, %s) FROM a",
                (approval.id, *_approval_row(approval), _APPROVALS_CHANNEL, _notice(approval)),
            )
        )

    async def get_approval(self, approval_id: str) -> Approval | None:
        rows = await self._approval_io(
            self._fetch("SELECT data FROM mcphub_approvals WHERE id = %s", (approval_id,))
        )
        return _approval_from(bytes(rows[0][0])) if rows else None

    async def swap_approval(self, expected: ApprovalState, approval: Approval) -> bool:
        # The notice goes out only if the row changed, when the statement commits.
        count = await self._approval_io(
            self._exec(
                "WITH a AS (UPDATE mcphub_approvals SET state = %s, data = %s, principal = %s, "
                "created_ms = %s, expires_ms = %s WHERE id = %s AND state = %s RETURNING id) "
                "SELECT pg_notify(%s, %s) FROM a",
                (*_approval_row(approval), approval.id, expected, _APPROVALS_CHANNEL, _notice(approval)),
            )
        )
        return count == 1

    async def listen_approvals(self) -> _ApprovalNotices:
        conn = await self._connect(autocommit=True)
        try:
            await conn.execute(f"LISTEN {_APPROVALS_CHANNEL}")
        except BaseException:
            await conn.close()
            raise
        return _ApprovalNotices(conn, self)

    async def list_approvals(self, states: tuple[ApprovalState, ...]) -> list[Approval]:
        rows = await self._approval_io(
            self._fetch(
                "SELECT data FROM mcphub_approvals WHERE state = ANY(%s) ORDER BY created_ms, id",
                (list(states),),
            )
        )
        return [_approval_from(bytes(r[0])) for r in rows]

    async def page_approvals(
        self, states: tuple[ApprovalState, ...], after: tuple[int, str] | None, limit: int
    ) -> list[Approval]:
        created, approval_id = after if after is not None else (-(2**63), "")
        rows = await self._approval_io(
            self._fetch(
                "SELECT data FROM mcphub_approvals WHERE state = ANY(%s) AND (created_ms, id) > (%s, %s) "
                "ORDER BY created_ms, id LIMIT %s",
                (list(states), created, approval_id, limit),
            )
        )
        return [_approval_from(bytes(r[0])) for r in rows]

    async def count_pending(self, principal: str, now_ms: int) -> int:
        rows = await self._approval_io(
            self._fetch(
                "SELECT count(*) FROM mcphub_approvals WHERE principal = %s AND state = 'pending' "
                "AND expires_ms > %s",
                (principal, now_ms),
            )
        )
        return int(rows[0][0])

    async def prune_approvals(self, states: tuple[ApprovalState, ...], expired_before_ms: int) -> int:
        return await self._approval_io(
            self._exec(
                "DELETE FROM mcphub_approvals WHERE state = ANY(%s) AND expires_ms < %s",
                (list(states), expired_before_ms),
            )
        )

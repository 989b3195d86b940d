"""The `sql` pack: queries against the sandbox's own SQLite files and PostgreSQL databases.

Options:

    databases:
      app:     {sqlite: data/app.db}                  # relative to the workspace
      main:    {postgres_env: DATABASE_URL}           # a DSN from the environment (or `postgres: DSN`)
      scratch: {sqlite: /tmp/scratch.db, writable: true}
    row_limit: 200        # most rows a result carries (the result says when it was cut)
    max_result_bytes: 1048576   # most bytes of row values a result carries (likewise)
    timeout_s: 30         # a statement running longer is cancelled

Tools: `sql_query` (read-only, every database), `sql_schema` (tables and columns),
and `sql_execute` only when some database is `writable: true` (annotated
destructive). Parameters are bound by the driver (`?` for SQLite, `%s` for
PostgreSQL), never formatted into the statement.

Read-only is enforced by the database, not by parsing SQL: SQLite files are
opened with `mode=ro` and `PRAGMA query_only`; PostgreSQL statements run in a
`READ ONLY` transaction over the extended query protocol (one statement per
call, so `COMMIT; ...` cannot leave it). For PostgreSQL a DSN of a role with
only SELECT rights is the stronger guarantee; a superuser, or a role that may run
programs or read or write the server's files, is refused unless the database says
`allow_superuser: true`; see docs/sidecar.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import re
import socket
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import orjson

from ..content import TextContent, ToolResult
from ..errors import ConfigError, ToolError
from ..redaction import Redactor, without_dsn
from ..tools import Tool, ToolAnnotations, ToolCall
from . import PackEnv, StaticPack
from .cancelling import uninterrupted
from .options import PackOptions

if TYPE_CHECKING:
    import sqlite3

__all__ = ["Database", "create_pack", "jsonable"]

MAX_ROW_LIMIT = 10_000
DEFAULT_MAX_RESULT_BYTES = 1024 * 1024
MAX_RESULT_BYTES = 4 * 1024 * 1024  # a result travels twice (text and structured) in 16 MB messages
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_INT64 = 2**63


@dataclass(frozen=True, slots=True)
class Database:
    name: str
    kind: str  # "sqlite" | "postgres"
    target: str = ""  # the SQLite file's absolute path, or the PostgreSQL DSN
    writable: bool = False
    allow_superuser: bool = False
    """PostgreSQL: run even when the role has server powers (see `_PG_OPENING`)."""

    def __repr__(self) -> str:  # never show a DSN (it may hold a password)
        return f"Database({self.name!r}, {self.kind!r}, writable={self.writable})"


@dataclass(frozen=True, slots=True)
class Rows:
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool
    affected: int = -1
    cut_at_bytes: int = 0  # > 0: rows stopped there, not at the row limit

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "columns": self.columns,
            "rows": self.rows,
            "row_count": len(self.rows),
            "truncated": self.truncated,
        }
        if self.affected >= 0:
            out["affected_rows"] = self.affected
        return out


def _loaded_instance(value: Any, module: str, name: str) -> bool:
    # A Decimal or UUID exists only once its module is loaded (psycopg loads both), and SQLite
    # never returns either: a sidecar with only SQLite databases need not carry those modules.
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(value, getattr(loaded, name))


def jsonable(value: Any) -> Any:
    """A database value as JSON: bytes as `\\x<hex>`, exact decimals and big integers as strings."""
    if value is None or isinstance(value, bool | str | float):
        return value
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if _loaded_instance(value, "uuid", "UUID") or _loaded_instance(value, "decimal", "Decimal"):
        return str(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return str(value)
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)


def _size(value: Any) -> int:
    """About how many bytes `value` takes as JSON, computed without building it."""
    if isinstance(value, str):
        return len(value) + 2
    if isinstance(value, bytes | bytearray | memoryview):
        return 2 * len(value) + 4
    if isinstance(value, list | tuple):
        return sum(_size(v) for v in value) + 2
    if isinstance(value, dict):
        return sum(len(str(k)) + _size(v) + 4 for k, v in value.items()) + 2
    return 24


class _Collector:
    """Rows as JSON values, until `limit` rows or `max_bytes` of values: a row is sized before it
    is converted, so one huge value (a 20 MB blob) costs the driver's copy and nothing more."""

    def __init__(self, limit: int, max_bytes: int) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self.rows: list[list[Any]] = []
        self.size = 0
        self.truncated = False
        self.cut_at_bytes = 0

    def add(self, row: Sequence[Any]) -> bool:
        """Keep `row`; False (and nothing kept) once the result is full."""
        if len(self.rows) >= self.limit:
            self.truncated = True
            return False
        size = sum(_size(v) for v in row) + 2
        if self.size + size > self.max_bytes:
            self.truncated = True
            self.cut_at_bytes = self.max_bytes
            return False
        self.size += size
        self.rows.append([jsonable(v) for v in row])
        return True

    def result(self, columns: list[str], affected: int = -1) -> Rows:
        return Rows(columns, self.rows, self.truncated, affected, self.cut_at_bytes)


# --- SQLite ------------------------------------------------------------------------------------


def _deny_attach(action: int, *args: Any) -> int:
    # ATTACH could open (and with a writable connection, create) any file the sidecar can reach.
    import sqlite3

    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def _sqlite_connect(db: Database, writable: bool) -> sqlite3.Connection:
    # Imported on the first SQLite call, as psycopg is on the first PostgreSQL one: the module
    # and libsqlite3 cost an idle sidecar about 1 MB it may never use.
    import sqlite3

    path = Path(db.target)
    if writable:
        conn = sqlite3.connect(path, check_same_thread=False, timeout=5, isolation_level=None)
    else:
        if not path.exists():
            raise ToolError(f"database {db.name!r}: the SQLite file {path} does not exist")
        uri = path.as_uri() + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=5, isolation_level=None)
        conn.execute("PRAGMA query_only = ON")
    conn.set_authorizer(_deny_attach)
    return conn


def _sqlite_rows(cursor: sqlite3.Cursor, limit: int, max_bytes: int) -> Rows:
    columns = [d[0] for d in cursor.description or ()]
    collector = _Collector(limit, max_bytes)
    if cursor.description:
        for row in cursor:  # one row at a time: the limits apply before rows pile up
            if not collector.add(row):
                break
    return collector.result(columns)


async def _in_thread(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], Rows]) -> Rows:
    """Run `work` in a worker thread; a cancelled call interrupts the statement, then closes."""
    task = asyncio.ensure_future(asyncio.to_thread(work, conn))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        conn.interrupt()
        with contextlib.suppress(Exception):
            await task
        raise
    finally:
        if task.done():
            conn.close()
        else:  # pragma: no cover - only when cancelled twice
            task.add_done_callback(lambda _: conn.close())


async def _sqlite(
    db: Database, sql: str, params: Sequence[Any], limit: int, max_bytes: int, write: bool
) -> Rows:
    conn = _sqlite_connect(db, write)

    def work(c: sqlite3.Connection) -> Rows:
        import sqlite3

        try:
            if not write:
                return _sqlite_rows(c.execute(sql, params), limit, max_bytes)
            c.execute("BEGIN")
            cursor = c.execute(sql, params)
            result = _sqlite_rows(cursor, limit, max_bytes)
            c.execute("COMMIT")
            return Rows(result.columns, result.rows, result.truncated, cursor.rowcount, result.cut_at_bytes)
        except sqlite3.Error as exc:
            if c.in_transaction:
                c.execute("ROLLBACK")
            if not write and "readonly" in str(exc).lower().replace("-", "").replace(" ", ""):
                raise ToolError(
                    f"database {db.name!r} is read-only for sql_query: {exc}"
                    + ("; use sql_execute to write" if db.writable else "")
                ) from exc
            raise ToolError(f"database {db.name!r}: {type(exc).__name__}: {exc}") from exc

    return await _in_thread(conn, work)


async def _sqlite_schema(db: Database, limit: int) -> Rows:
    sql = (
        'SELECT m.name, m.type, p.name, p.type, p."notnull", p.pk '
        "FROM sqlite_schema AS m JOIN pragma_table_info(m.name) AS p "
        "WHERE m.type IN ('table', 'view') AND m.name NOT LIKE 'sqlite_%' ORDER BY m.name, p.cid"
    )
    rows = await _sqlite(db, sql, (), limit, MAX_RESULT_BYTES, write=False)
    return Rows(["table", "kind", "column", "type", "not_null", "primary_key"], rows.rows, rows.truncated)


# --- PostgreSQL --------------------------------------------------------------------------------


async def _postgres(
    db: Database,
    sql: str,
    params: Sequence[Any],
    limit: int,
    max_bytes: int,
    write: bool,
    timeout_s: float,
) -> Rows:
    try:
        import psycopg  # in the `local` extra; imported on first use to keep an idle sidecar small
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ToolError("PostgreSQL needs psycopg: pip install 'mcphub[local]'") from exc
    try:
        conn = await psycopg.AsyncConnection.connect(db.target, connect_timeout=10, autocommit=False)
    except psycopg.Error as exc:
        # libpq quotes a DSN it cannot parse, password and all
        why = without_dsn(_pg_message(exc), db.target)
        raise ToolError(f"database {db.name!r}: cannot connect: {why}") from None
    # The statement runs in a task of its own that a cancelled call never cancels: psycopg
    # answers a cancelled wait by asking the server to cancel, and a second cancel of the
    # call (its deadline's timer, then the hub's cancel, a few milliseconds apart) used to
    # interrupt that request and close the connection without it, leaving the statement
    # running on the server. Here the call's cancel sends the server's cancel itself, and
    # lets nothing interrupt it (see `_cancel_statement`).
    statement = asyncio.ensure_future(
        _pg_statement(conn, db, sql, params, limit, max_bytes, write, timeout_s)
    )
    try:
        return await asyncio.shield(statement)
    except asyncio.CancelledError:
        await uninterrupted(_cancel_statement(conn, statement))
        raise


# All three together stay under the 5 s a stopping sidecar gives the calls it stopped to answer
# (`Pipeline.drain`): a call whose statement's cancel was slow is still answered "stopped".
PG_CANCEL_TIMEOUT_S = 1.0
"""How long the server's cancel of a cancelled call's statement may take to send."""
PG_CANCELLED_WAIT_S = 3.0
"""How long a statement may take to end once its cancel was sent, before its connection is closed."""
PG_CLOSED_WAIT_S = 0.5
"""How long a statement may take to end once its connection was shut down (its wait wakes at once)."""


async def _cancel_statement(conn: Any, statement: asyncio.Future[Rows]) -> None:
    """Cancel `statement` on the server and wait (bounded) for it to end; it closes `conn`.

    When the cancel cannot be sent (or a proxy, a pooler, takes it and does not answer), or
    the statement has not ended 5 s after it, the connection is shut down: the statement's wait
    for the server then ends with an error at once. Not by cancelling the statement's task:
    psycopg answers that with a cancel of its own, 10 s more, past the 5 s a stopping sidecar
    gives its stopped calls to answer. Not by `conn.pgconn.finish()` either: that closes the
    socket under the event loop's watch of it, whose number may be reused before the watch is
    removed. The server's statement then runs on until the server notices the closed connection
    (when it next sends to the client, or within `client_connection_check_interval` if set), or
    to its `statement_timeout` (`timeout_s`)."""
    try:
        await conn.cancel_safe(timeout=PG_CANCEL_TIMEOUT_S)
    except Exception:  # noqa: S110 - not sent or not answered: the connection is shut down at once
        pass
    else:
        await asyncio.wait((statement,), timeout=PG_CANCELLED_WAIT_S)
    if not statement.done():
        import psycopg

        with contextlib.suppress(OSError, psycopg.Error):  # psycopg.Error: the connection is gone
            _shut_down(conn.fileno())
        await asyncio.wait((statement,), timeout=PG_CLOSED_WAIT_S)
    if not statement.done():  # pragma: no cover - a shut-down connection's wait ends at once
        statement.cancel()
    elif not statement.cancelled():
        statement.exception()  # retrieved: the call is cancelled, its statement's error is moot


def _shut_down(fd: int) -> None:
    """Shut the connection on socket `fd` down both ways, leaving `fd`, which libpq owns, open."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.close()


async def _pg_statement(
    conn: Any,
    db: Database,
    sql: str,
    params: Sequence[Any],
    limit: int,
    max_bytes: int,
    write: bool,
    timeout_s: float,
) -> Rows:
    """Run `sql` on `conn` (opened for this call) and close it."""
    import psycopg

    try:
        await conn.set_read_only(not write)
        async with conn.cursor() as cur:
            await cur.execute(_PG_OPENING, (f"{int(timeout_s * 1000)}",))
            opened = await cur.fetchone()
            if opened is not None and opened[1] and not db.allow_superuser:
                raise ToolError(
                    f"database {db.name!r}: the DSN's login role {opened[2]!r} is a superuser or may run "
                    "programs or read or write files on the database server (COPY ... TO PROGRAM, "
                    "pg_read_file, lo_export), or may make itself one (SET ROLE to such a role, "
                    "CREATEROLE before PostgreSQL 16), which no read-only transaction stops. The sql "
                    "pack refuses such "
                    "a role: connect as one with only the rights the agent needs, or set "
                    f"allow_superuser: true for {db.name!r} in the image's manifest"
                )
            # No parameters: None, so a literal % in the statement is not read as a placeholder.
            bound = list(params) or None
            collector = _Collector(limit, max_bytes)
            if write:
                # prepare=True: the extended protocol, one statement per call, as stream() gives
                # reads. Without parameters psycopg would send the simple protocol, which runs
                # several (`SET ROLE ...; COPY ... TO PROGRAM ...` after the check above).
                await cur.execute(sql, bound, prepare=True)
                columns = [d.name for d in cur.description or ()]
                if cur.description:
                    async for row in cur:
                        if not collector.add(row):
                            break
                affected = cur.rowcount
                await conn.commit()
                return collector.result(columns, affected)
            # stream() always uses the extended protocol: exactly one statement per call. The
            # generator is closed here, before the connection: left to the garbage collector it
            # would run its clean-up on a closed connection, which corrupts libpq's memory.
            try:
                stream = cast("AsyncGenerator[Any, None]", cur.stream(sql, bound))
                async with contextlib.aclosing(stream) as rows:
                    async for row in rows:
                        if not collector.add(row):
                            break
            except psycopg.ProgrammingError as exc:
                # psycopg's words for a statement without rows (SET, COPY, COMMIT, ...)
                if exc.sqlstate is None and "didn't produce a result" in str(exc):
                    raise ToolError(
                        f"database {db.name!r}: sql_query runs statements that return rows "
                        "(SELECT, WITH, VALUES, SHOW, EXPLAIN); this one returns none"
                    ) from None
                raise
            return collector.result([d.name for d in cur.description or ()])
    except psycopg.Error as exc:
        raise ToolError(f"database {db.name!r}: {_pg_message(exc)}") from None
    finally:
        with contextlib.suppress(Exception):
            await conn.close()


_PG_OPENING = (
    # set_config is a query: it opens the transaction and takes its snapshot, after which
    # `SET TRANSACTION READ WRITE` is refused. The same round trip asks what the role may do
    # outside the database: whether it is, or may become (SET ROLE, NOINHERIT memberships
    # included), a superuser or a member of a role with server powers, or a role that may
    # grant itself those (CREATEROLE, before PostgreSQL 16 gave it limits). Both the login
    # (session_user) and the role it runs as: a login may start as a harmless role (`ALTER
    # ROLE ... SET role`, `options=-c role=...`) and go back with `SET ROLE NONE`.
    # A DBA may also grant EXECUTE on the functions that read or write server files
    # (superuser-only by default): the server-side large-object import/export, and the
    # generic file access functions.
    "SELECT set_config('statement_timeout', %s, true), EXISTS (SELECT 1 FROM pg_roles r WHERE ("
    "r.rolsuper OR (r.rolcreaterole AND current_setting('server_version_num')::int < 160000) OR "
    "r.rolname IN ('pg_execute_server_program', 'pg_read_server_files', 'pg_write_server_files')"
    ") AND (pg_has_role(session_user, r.oid, 'MEMBER') OR pg_has_role(current_user, r.oid, 'MEMBER'))"
    ") OR EXISTS (SELECT 1 FROM pg_proc p WHERE p.pronamespace = 'pg_catalog'::regnamespace AND "
    "p.proname IN ('lo_import', 'lo_export', 'pg_read_file', 'pg_read_binary_file', 'pg_ls_dir', "
    "'pg_stat_file') AND (has_function_privilege(session_user, p.oid, 'EXECUTE') OR "
    "has_function_privilege(current_user, p.oid, 'EXECUTE'))), session_user"
)


def _pg_message(exc: Exception) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    state = getattr(exc, "sqlstate", None)
    text = primary or str(exc).strip().splitlines()[0]
    return f"{text} (SQLSTATE {state})" if state else text


_PG_SCHEMA = (
    "SELECT c.table_schema || '.' || c.table_name, t.table_type, c.column_name, c.data_type, "
    "c.is_nullable = 'NO', false "
    "FROM information_schema.columns c JOIN information_schema.tables t "
    "ON t.table_schema = c.table_schema AND t.table_name = c.table_name "
    "WHERE c.table_schema NOT IN ('pg_catalog', 'information_schema') "
    "ORDER BY 1, c.ordinal_position"
)


# --- the pack ----------------------------------------------------------------------------------


class _Sql:
    """The tools' handlers. Every error and result goes through `redactor`, which holds the DSNs
    and their passwords: the hub passes a sidecar's results on as they are (they are the caller's
    own data), so only this pack knows what in them is a secret."""

    def __init__(
        self,
        databases: dict[str, Database],
        row_limit: int,
        max_bytes: int,
        timeout_s: float,
        redactor: Redactor,
    ) -> None:
        self.databases = databases
        self.row_limit = row_limit
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.redactor = redactor

    def redacting(
        self, handler: Callable[[ToolCall], Awaitable[ToolResult]]
    ) -> Callable[[ToolCall], Awaitable[ToolResult]]:
        async def run(call: ToolCall) -> ToolResult:
            try:
                return await handler(call)
            except ToolError as exc:
                text = str(exc)
                for db in self.databases.values():
                    if db.kind == "postgres":
                        text = without_dsn(text, db.target)
                raise ToolError(self.redactor.text(text)) from None

        return run

    def _result(self, rows: Rows, limit: int) -> ToolResult:
        # The registered secrets only: a table of API keys the caller asked for stays readable.
        redacted = Rows(
            [self.redactor.text(c, shapes=False) for c in rows.columns],
            self.redactor.value(rows.rows, shapes=False),
            rows.truncated,
            rows.affected,
            rows.cut_at_bytes,
        )
        return _result(redacted, limit)

    def _database(self, call: ToolCall, *, write: bool) -> Database:
        name = call.arguments.get("database")
        if name is None:
            if len(self.databases) != 1:
                raise ToolError(f"name the database: one of {', '.join(sorted(self.databases))}")
            name = next(iter(self.databases))
        db = self.databases.get(name)
        if db is None:
            raise ToolError(f"no database {name!r}; the databases are {', '.join(sorted(self.databases))}")
        if write and not db.writable:
            raise ToolError(f"database {name!r} is read-only: the image's manifest does not allow writes")
        return db

    async def _run(self, db: Database, sql: str, params: Sequence[Any], limit: int, write: bool) -> Rows:
        try:
            async with asyncio.timeout(self.timeout_s):
                if db.kind == "sqlite":
                    return await _sqlite(db, sql, params, limit, self.max_bytes, write)
                return await _postgres(db, sql, params, limit, self.max_bytes, write, self.timeout_s)
        except TimeoutError:
            raise ToolError(
                f"database {db.name!r}: the statement ran longer than {self.timeout_s:g}s and was cancelled"
            ) from None

    async def query(self, call: ToolCall) -> ToolResult:
        db = self._database(call, write=False)
        limit = min(int(call.arguments.get("max_rows", self.row_limit)), self.row_limit)
        rows = await self._run(db, call.arguments["sql"], call.arguments.get("params", []), limit, False)
        return self._result(rows, limit)

    async def execute(self, call: ToolCall) -> ToolResult:
        db = self._database(call, write=True)
        rows = await self._run(
            db, call.arguments["sql"], call.arguments.get("params", []), self.row_limit, True
        )
        return self._result(rows, self.row_limit)

    async def schema(self, call: ToolCall) -> ToolResult:
        db = self._database(call, write=False)
        limit = MAX_ROW_LIMIT
        if db.kind == "sqlite":
            rows = await _sqlite_schema(db, limit)
        else:
            rows = await _postgres(db, _PG_SCHEMA, (), limit, MAX_RESULT_BYTES, False, self.timeout_s)
            rows = Rows(
                ["table", "kind", "column", "type", "not_null", "primary_key"], rows.rows, rows.truncated
            )
        return self._result(rows, limit)


def _result(rows: Rows, limit: int) -> ToolResult:
    data = rows.as_dict()
    text = orjson.dumps(data).decode()
    if rows.cut_at_bytes:
        text += (
            f"\n[only the first {len(rows.rows)} rows are shown: a result carries at most "
            f"{rows.cut_at_bytes} bytes of values; select fewer or shorter columns "
            "(e.g. length(x) or substr(x, 1, 200)) or fewer rows]"
        )
    elif rows.truncated:
        text += (
            f"\n[only the first {limit} rows are shown; add LIMIT/OFFSET or a narrower WHERE to see others]"
        )
    return ToolResult(content=(TextContent(text),), structured=data)


_ROWS_SCHEMA = {
    "type": "object",
    "properties": {
        "columns": {"type": "array", "items": {"type": "string"}},
        "rows": {"type": "array", "items": {"type": "array"}},
        "row_count": {"type": "integer"},
        "truncated": {"type": "boolean"},
        "affected_rows": {"type": "integer"},
    },
    "required": ["columns", "rows", "row_count", "truncated"],
}


def secret_variables(options: Mapping[str, Any]) -> list[str]:
    """The variables databases' DSNs come from (`postgres_env`): taken out of the environment
    before any pack starts a process (see `mcp_local.packs.start_packs`)."""
    databases = options.get("databases")
    if not isinstance(databases, Mapping):
        return []
    return [
        spec["postgres_env"]
        for spec in databases.values()
        if isinstance(spec, Mapping) and isinstance(spec.get("postgres_env"), str)
    ]


def _databases(opts: PackOptions, env: PackEnv) -> dict[str, Database]:
    raw = opts.raw("databases")
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(
            f"{opts.where('databases')}: expected a mapping of database names to "
            "{sqlite: PATH} or {postgres_env: VAR} (or {postgres: DSN})"
        )
    workspace = Path(str(env.extra.get("workspace", ".")))
    environ: Mapping[str, str] = env.extra.get("environ", {})
    found: dict[str, Database] = {}
    for name, spec in raw.items():
        where = opts.where(f"databases.{name}")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{where}: a database name is 1-64 characters of [a-zA-Z0-9_-]")
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}: expected a mapping such as {{sqlite: data/app.db}}")
        unknown = sorted(set(spec) - {"sqlite", "postgres", "postgres_env", "writable", "allow_superuser"})
        if unknown:
            raise ConfigError(
                f"{where}.{unknown[0]}: unknown key "
                "(expected sqlite, postgres, postgres_env, writable, allow_superuser)"
            )
        sources = [k for k in ("sqlite", "postgres", "postgres_env") if k in spec]
        if len(sources) != 1:
            raise ConfigError(
                f"{where}: give exactly one of sqlite, postgres, postgres_env (got {sources or 'none'})"
            )
        writable = spec.get("writable", False)
        if not isinstance(writable, bool):
            raise ConfigError(f"{where}.writable: expected true or false, got {writable!r}")
        allow_superuser = spec.get("allow_superuser", False)
        if not isinstance(allow_superuser, bool):
            raise ConfigError(f"{where}.allow_superuser: expected true or false, got {allow_superuser!r}")
        if allow_superuser and sources[0] == "sqlite":
            raise ConfigError(f"{where}.allow_superuser: only for PostgreSQL databases")
        value = spec[sources[0]]
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}.{sources[0]}: expected a non-empty string")
        if sources[0] == "sqlite":
            path = Path(value).expanduser()
            target = str((workspace / path).resolve() if not path.is_absolute() else path)
            found[name] = Database(name, "sqlite", target, writable)
            continue
        dsn = value
        if sources[0] == "postgres_env":
            if value not in environ:
                raise ConfigError(f"{where}.postgres_env: environment variable {value} is not set")
            dsn = environ[value]
        env.redactor.add_dsn(dsn)
        found[name] = Database(name, "postgres", dsn, writable, allow_superuser)
    return found


def create_pack(options: Mapping[str, Any], env: PackEnv) -> StaticPack:
    opts = PackOptions("sql", options)
    databases = _databases(opts, env)
    row_limit = opts.integer("row_limit", default=200, minimum=1, maximum=MAX_ROW_LIMIT)
    max_bytes = opts.integer(
        "max_result_bytes", default=DEFAULT_MAX_RESULT_BYTES, minimum=1024, maximum=MAX_RESULT_BYTES
    )
    timeout_s = opts.number("timeout_s", default=30.0, minimum=0.1, maximum=3600.0)
    opts.done()
    sql = _Sql(databases, row_limit, max_bytes, timeout_s, env.redactor)
    names = sorted(databases)
    described = "; ".join(
        f"{n} ({databases[n].kind}{', writable' if databases[n].writable else ''})" for n in names
    )
    database_prop: dict[str, Any] = {"type": "string", "enum": names, "description": f"One of: {described}."}
    params_prop = {
        "type": "array",
        "items": {"type": ["string", "number", "integer", "boolean", "null"]},
        "maxItems": 1000,
        "description": "Values bound to the statement's placeholders (? for SQLite, %s for PostgreSQL).",
    }
    # A role with server powers can run programs from a "read-only" query: the tools then say
    # they are not read-only, so a gate that lets read-only tools through asks about them.
    powers = any(db.allow_superuser for db in databases.values())
    reading = ToolAnnotations(
        read_only=not powers, destructive=powers, idempotent=not powers, open_world=False
    )
    tools = [
        _tool(
            "sql_query",
            "Run a read-only SQL query",
            "Run one read-only SQL statement (SELECT, WITH, EXPLAIN, ...) against a database of this "
            f"sandbox and return the rows (at most {row_limit}). Writes are refused by the database. "
            f"Databases: {described}.",
            {
                "database": database_prop,
                "sql": {"type": "string", "minLength": 1, "maxLength": 100_000},
                "params": params_prop,
                "max_rows": {"type": "integer", "minimum": 1, "maximum": row_limit},
            },
            sql.redacting(sql.query),
            reading,
            timeout_s,
        ),
        _tool(
            "sql_schema",
            "List tables and columns",
            "List the tables (and views) of a database of this sandbox with their columns and types.",
            {"database": database_prop},
            sql.redacting(sql.schema),
            reading,
            timeout_s,
        ),
    ]
    writable = [n for n in names if databases[n].writable]
    if writable:
        tools.append(
            _tool(
                "sql_execute",
                "Run a SQL statement that writes",
                "Run one SQL statement that may change data (INSERT, UPDATE, DELETE, DDL) in one "
                f"transaction, committed when it succeeds. Writable databases: {', '.join(writable)}.",
                {
                    "database": {"type": "string", "enum": writable},
                    "sql": {"type": "string", "minLength": 1, "maxLength": 100_000},
                    "params": params_prop,
                },
                sql.redacting(sql.execute),
                ToolAnnotations(read_only=False, destructive=True, idempotent=False, open_world=False),
                timeout_s,
            )
        )
    return StaticPack("sql", tools)


def _tool(
    name: str,
    title: str,
    description: str,
    properties: dict[str, Any],
    handler: Callable[[ToolCall], Awaitable[ToolResult]],
    annotations: ToolAnnotations,
    timeout_s: float,
) -> Tool:
    required = [k for k in ("sql",) if k in properties]
    return Tool(
        name=name,
        title=title,
        description=description,
        input_schema={
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": False,
        },
        output_schema=_ROWS_SCHEMA,
        handler=handler,
        annotations=annotations,
        timeout_s=timeout_s + 10,  # a backstop: _Sql._run cancels the statement itself at timeout_s
    )

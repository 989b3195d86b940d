"""The sql pack against a real SQLite file and a real PostgreSQL server: read-only by default, bound
parameters, a row limit, writes only where the manifest allows them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import psycopg
import pytest

from bridge.hubclient import HubClient
from mcp_local.errors import ConfigError
from mcp_local.packs.sql import PG_CANCEL_TIMEOUT_S, PG_CANCELLED_WAIT_S
from mcp_local.redaction import Redactor
from mcphub_proto.v1 import toolhub_pb2 as pb
from tests.mcp_remote.test_federation import TOKENS, hub_config, tool_names, wait_for
from tests.support.hub import RunningHub, start_hub
from tests.support.packs import PackUnderTest, make_pack, text
from tests.support.pgcluster import RunningPostgres, postgres_server
from tests.support.sidecar import RunningSidecar, start_sidecar

pytestmark = pytest.mark.anyio


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Path:
    path = tmp_path / "ws" / "app.db"
    path.parent.mkdir()
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, avatar BLOB)")
        conn.executemany(
            "INSERT INTO users (name, avatar) VALUES (?, ?)", [(f"user{i}", b"\x01\xff") for i in range(50)]
        )
    conn.close()
    return path


def _count(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM users").fetchone()[0])
    finally:
        conn.close()


async def test_sqlite_query_binds_parameters(sqlite_file: Path) -> None:
    sql = make_pack("sql", {"databases": {"app": {"sqlite": "app.db"}}}, sqlite_file.parent)
    result = await sql.call(
        "sql_query", sql="SELECT id, name, avatar FROM users WHERE name = ?", params=["user3"]
    )
    assert not result.is_error, text(result)
    assert result.structured == {
        "columns": ["id", "name", "avatar"],
        "rows": [[4, "user3", "\\xff".replace("ff", "01ff")]],
        "row_count": 1,
        "truncated": False,
    }
    # A value that looks like SQL stays a value.
    injected = await sql.call(
        "sql_query", sql="SELECT count(*) FROM users WHERE name = ?", params=["x' OR '1'='1"]
    )
    assert injected.structured is not None and injected.structured["rows"] == [[0]]


async def test_sqlite_is_read_only_unless_the_manifest_says_so(sqlite_file: Path) -> None:
    sql = make_pack("sql", {"databases": {"app": {"sqlite": str(sqlite_file)}}}, sqlite_file.parent)
    assert set(sql.tools) == {"sql_query", "sql_schema"}
    assert sql.tools["sql_query"].annotations.read_only is True
    for statement in ("DELETE FROM users", "DROP TABLE users", "PRAGMA query_only = OFF"):
        result = await sql.call("sql_query", sql=statement)
        if statement.startswith("PRAGMA"):
            continue  # allowed to run, but the connection is read-only at open (mode=ro) anyway
        assert result.is_error and "read-only" in text(result), (statement, text(result))
    result = await sql.call("sql_query", sql=f"ATTACH DATABASE '{sqlite_file.parent / 'new.db'}' AS other")
    assert result.is_error and "not authorized" in text(result)
    assert not (sqlite_file.parent / "new.db").exists()
    assert _count(sqlite_file) == 50


async def test_sqlite_writes_where_allowed_are_annotated_destructive(sqlite_file: Path) -> None:
    sql = make_pack(
        "sql", {"databases": {"app": {"sqlite": str(sqlite_file), "writable": True}}}, sqlite_file.parent
    )
    execute = sql.tools["sql_execute"]
    assert execute.annotations.destructive is True and execute.annotations.read_only is False
    result = await sql.call("sql_execute", database="app", sql="DELETE FROM users WHERE id <= ?", params=[10])
    assert not result.is_error, text(result)
    assert result.structured is not None and result.structured["affected_rows"] == 10
    assert _count(sqlite_file) == 40
    # sql_query stays read-only even on a writable database.
    refused = await sql.call("sql_query", database="app", sql="DELETE FROM users")
    assert refused.is_error and "use sql_execute" in text(refused)
    assert _count(sqlite_file) == 40
    # Only one statement per call.
    two = await sql.call("sql_execute", database="app", sql="DELETE FROM users; DELETE FROM users")
    assert two.is_error and "one statement" in text(two)
    assert _count(sqlite_file) == 40


async def test_sqlite_rows_are_limited(sqlite_file: Path) -> None:
    sql = make_pack(
        "sql", {"databases": {"app": {"sqlite": str(sqlite_file)}}, "row_limit": 7}, sqlite_file.parent
    )
    result = await sql.call("sql_query", sql="SELECT id FROM users ORDER BY id")
    assert result.structured is not None
    assert result.structured["rows"] == [[i] for i in range(1, 8)]
    assert result.structured["truncated"] is True
    assert "only the first 7 rows" in text(result)
    smaller = await sql.call("sql_query", sql="SELECT id FROM users", max_rows=3)
    assert smaller.structured is not None and smaller.structured["row_count"] == 3


async def test_sqlite_results_are_limited_in_bytes_too(sqlite_file: Path) -> None:
    """A 20 MB blob used to come back hex-encoded twice (text and structured): 80 MB that the
    transport refused; 200 such rows could take the sidecar's memory."""
    sql = make_pack("sql", {"databases": {"app": {"sqlite": str(sqlite_file)}}}, sqlite_file.parent)
    huge = await sql.call("sql_query", sql="SELECT zeroblob(20000000) UNION ALL SELECT x'00'")
    assert not huge.is_error, text(huge)
    assert huge.structured is not None
    assert huge.structured["rows"] == [] and huge.structured["truncated"] is True
    assert "at most 1048576 bytes of values" in text(huge) and "length(x)" in text(huge)
    small = make_pack(
        "sql",
        {"databases": {"app": {"sqlite": str(sqlite_file)}}, "max_result_bytes": 2048},
        sqlite_file.parent,
    )
    rows = await small.call("sql_query", sql="SELECT printf('%.100c', 'x') FROM generate_series(1, 100)")
    if rows.is_error:  # generate_series is an extension in some SQLite builds
        rows = await small.call(
            "sql_query",
            sql="WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100) "
            "SELECT printf('%.100c', 'x') FROM n",
        )
    assert rows.structured is not None, text(rows)
    assert 10 <= rows.structured["row_count"] < 20 and rows.structured["truncated"] is True


async def test_sqlite_schema_lists_tables_and_columns(sqlite_file: Path) -> None:
    sql = make_pack("sql", {"databases": {"app": {"sqlite": str(sqlite_file)}}}, sqlite_file.parent)
    result = await sql.call("sql_schema")
    assert result.structured is not None
    assert [r[2] for r in result.structured["rows"]] == ["id", "name", "avatar"]


async def test_a_runaway_sqlite_query_is_interrupted(sqlite_file: Path) -> None:
    sql = make_pack(
        "sql", {"databases": {"app": {"sqlite": str(sqlite_file)}}, "timeout_s": 0.5}, sqlite_file.parent
    )
    forever = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    result = await sql.call("sql_query", sql=forever)
    assert result.is_error and "ran longer than 0.5s and was cancelled" in text(result)
    assert (await sql.call("sql_query", sql="SELECT 1")).structured == {
        "columns": ["1"],
        "rows": [[1]],
        "row_count": 1,
        "truncated": False,
    }


def test_manifest_mistakes_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"options\.databases\.app: give exactly one of sqlite, postgres"):
        make_pack("sql", {"databases": {"app": {"writable": True}}}, tmp_path)
    with pytest.raises(
        ConfigError, match=r"options\.databases\.main\.postgres_env: environment variable PGURL is not set"
    ):
        make_pack("sql", {"databases": {"main": {"postgres_env": "PGURL"}}}, tmp_path)
    with pytest.raises(ConfigError, match=r"options\.row_limit: expected a whole number from 1 to 10000"):
        make_pack("sql", {"databases": {"a": {"sqlite": "a.db"}}, "row_limit": 0}, tmp_path)
    with pytest.raises(ConfigError, match=r"options\.databases\.a\.sqlite_path: unknown key"):
        make_pack("sql", {"databases": {"a": {"sqlite_path": "a.db"}}}, tmp_path)


# --- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres() -> Iterator[RunningPostgres]:
    with postgres_server() as server:
        with psycopg.connect(server.admin_dsn(), autocommit=True) as conn:
            conn.execute("CREATE ROLE app LOGIN PASSWORD 'app-secret-password-123'")
            conn.execute("CREATE DATABASE shop OWNER app")
        with psycopg.connect(server.admin_dsn("shop", "app"), autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE items (id bigint PRIMARY KEY, name text, price numeric(10,2), "
                "data bytea, added timestamptz DEFAULT '2026-01-02T03:04:05Z')"
            )
            conn.execute(
                "INSERT INTO items (id, name, price, data) "
                "SELECT i, 'item' || i, i * 1.5, '\\x00ff'::bytea FROM generate_series(1, 30) i"
            )
            conn.execute("INSERT INTO items (id, name, price) VALUES (9007199254740993, 'big', 0.1)")
        yield server


def _items(server: RunningPostgres) -> int:
    with psycopg.connect(server.admin_dsn("shop", "app")) as conn:
        row = conn.execute("SELECT count(*) FROM items").fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture
def pg(postgres: RunningPostgres, tmp_path: Path) -> PackUnderTest:
    dsn = postgres.dsn(dbname="shop", user="app", password="app-secret-password-123")
    return make_pack(
        "sql",
        {"databases": {"shop": {"postgres_env": "SHOP_URL"}}, "row_limit": 10},
        tmp_path,
        environ={"SHOP_URL": dsn},
    )


async def test_postgres_query_returns_typed_rows(pg: PackUnderTest) -> None:
    result = await pg.call(
        "sql_query", sql="SELECT id, name, price, data, added FROM items WHERE id = %s", params=[2]
    )
    assert not result.is_error, text(result)
    assert result.structured is not None
    assert result.structured["rows"] == [[2, "item2", "3.00", "\\x00ff", "2026-01-02T03:04:05+00:00"]]
    big = await pg.call("sql_query", sql="SELECT id FROM items WHERE name = %s", params=["big"])
    assert big.structured is not None and big.structured["rows"] == [[9007199254740993]]


async def test_postgres_rows_are_limited(pg: PackUnderTest) -> None:
    result = await pg.call("sql_query", sql="SELECT id FROM items ORDER BY id")
    assert result.structured is not None
    assert result.structured["row_count"] == 10 and result.structured["truncated"] is True


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM items",
        "UPDATE items SET price = 0",
        "COMMIT; DELETE FROM items",
        "SET TRANSACTION READ WRITE",
        "SELECT nextval('no_such_seq')",
    ],
)
async def test_postgres_query_cannot_write(
    pg: PackUnderTest, postgres: RunningPostgres, statement: str
) -> None:
    result = await pg.call("sql_query", sql=statement)
    assert result.is_error, statement
    assert "SQLSTATE" in text(result)
    assert _items(postgres) == 31


async def test_postgres_writes_only_where_allowed(postgres: RunningPostgres, tmp_path: Path) -> None:
    dsn = postgres.dsn(dbname="shop", user="app", password="app-secret-password-123")
    sql = make_pack("sql", {"databases": {"shop": {"postgres": dsn, "writable": True}}}, tmp_path)
    result = await sql.call(
        "sql_execute",
        database="shop",
        sql="INSERT INTO items (id, name) VALUES (%s, %s) RETURNING id",
        params=[1000, "new"],
    )
    assert not result.is_error, text(result)
    assert result.structured is not None
    assert result.structured["rows"] == [[1000]] and result.structured["affected_rows"] == 1
    assert _items(postgres) == 32
    await sql.call("sql_execute", database="shop", sql="DELETE FROM items WHERE id = %s", params=[1000])
    assert _items(postgres) == 31


async def test_postgres_literal_percent_signs_need_no_escaping(pg: PackUnderTest) -> None:
    """Without parameters a `%` is just a character (it used to be read as a placeholder)."""
    result = await pg.call("sql_query", sql="SELECT count(*) FROM items WHERE name LIKE 'item1%'")
    assert not result.is_error, text(result)
    assert result.structured is not None and result.structured["rows"] == [[11]]
    modulo = await pg.call("sql_query", sql="SELECT 100 % 7, 'a%b'")
    assert modulo.structured is not None and modulo.structured["rows"] == [[2, "a%b"]]
    bound = await pg.call("sql_query", sql="SELECT %s || '%%'", params=["50"])
    assert bound.structured is not None and bound.structured["rows"] == [["50%"]]


async def test_postgres_results_are_limited_in_bytes(pg: PackUnderTest) -> None:
    result = await pg.call("sql_query", sql="SELECT repeat('x', 5000000), g FROM generate_series(1, 4) g")
    assert not result.is_error, text(result)
    assert result.structured is not None
    assert result.structured["rows"] == [] and result.structured["truncated"] is True
    assert "at most 1048576 bytes of values" in text(result)


async def test_a_cut_short_postgres_stream_is_closed_before_its_connection(pg: PackUnderTest) -> None:
    """psycopg's row stream, abandoned at the byte cap, used to be finalized later by the garbage
    collector, on a connection already closed: libpq's memory was corrupted and the sidecar
    crashed (`realloc(): invalid pointer`) or refused the next connection."""
    opened: list[Any] = []
    hooks = sys.get_asyncgen_hooks()

    def firstiter(agen: Any) -> None:
        opened.append(agen)
        if hooks.firstiter is not None:
            hooks.firstiter(agen)

    sys.set_asyncgen_hooks(firstiter=firstiter, finalizer=hooks.finalizer)
    try:
        result = await pg.call("sql_query", sql="SELECT repeat('x', 5000000), g FROM generate_series(1, 4) g")
    finally:
        sys.set_asyncgen_hooks(*hooks)
    assert result.structured is not None and result.structured["truncated"] is True
    streams = [agen for agen in opened if agen.ag_code.co_name == "stream"]
    assert streams, [agen.ag_code.co_name for agen in opened]
    assert all(agen.ag_frame is None for agen in streams), "a row stream was left open"
    after = await pg.call("sql_query", sql="SELECT count(*) FROM items")
    assert after.structured is not None and after.structured["rows"] == [[31]], text(after)


async def test_postgres_statements_without_rows_are_explained(pg: PackUnderTest) -> None:
    result = await pg.call("sql_query", sql="SET search_path = public")
    assert result.is_error and "sql_query runs statements that return rows" in text(result)


async def test_postgres_schema_and_a_bad_query(pg: PackUnderTest) -> None:
    schema = await pg.call("sql_schema")
    assert schema.structured is not None
    assert ["public.items", "BASE TABLE", "id", "bigint", True, False] in schema.structured["rows"]
    bad = await pg.call("sql_query", sql="SELECT * FROM nowhere")
    assert bad.is_error and 'relation "nowhere" does not exist' in text(bad)


@pytest.fixture(scope="module")
def powerful_roles(postgres: RunningPostgres) -> dict[str, str]:
    """DSNs of roles that have, or may take, powers over the database server's files and programs."""
    with psycopg.connect(postgres.admin_dsn(), autocommit=True) as conn:
        conn.execute("CREATE ROLE boss LOGIN SUPERUSER PASSWORD 'boss-secret-password-123'")
        conn.execute("CREATE ROLE reader LOGIN PASSWORD 'reader-secret-password-123'")
        conn.execute("GRANT pg_read_server_files TO reader")
        # May become one: a NOINHERIT member (SET ROLE), a member of a superuser role, and a role
        # that may grant itself any (CREATEROLE, before PostgreSQL 16).
        conn.execute("CREATE ROLE noinh LOGIN NOINHERIT PASSWORD 'noinh-secret-password-123'")
        conn.execute("GRANT pg_execute_server_program TO noinh")
        conn.execute("CREATE ROLE chief SUPERUSER NOLOGIN")
        conn.execute("CREATE ROLE deputy LOGIN NOINHERIT PASSWORD 'deputy-secret-password-123'")
        conn.execute("GRANT chief TO deputy")
        # A superuser login that starts its sessions as a harmless role (found in review:
        # `SET ROLE NONE` inside the call took it back, then pg_read_file and COPY TO PROGRAM).
        conn.execute("CREATE ROLE masked LOGIN SUPERUSER PASSWORD 'masked-secret-password-123'")
        conn.execute("ALTER ROLE masked SET role = 'app'")
        # No powerful role, but EXECUTE on a function that writes server files (found in
        # review: lo_from_bytea then lo_export wrote a file anywhere the server user may).
        conn.execute("CREATE ROLE exporter LOGIN PASSWORD 'exporter-secret-password-123'")
    with psycopg.connect(postgres.admin_dsn("shop"), autocommit=True) as conn:
        conn.execute("GRANT EXECUTE ON FUNCTION lo_export(oid, text) TO exporter")
    with psycopg.connect(postgres.admin_dsn(), autocommit=True) as conn:
        version = conn.execute("SHOW server_version_num").fetchone()
        assert version is not None
        roles = ["boss", "reader", "noinh", "deputy", "masked", "exporter"]
        if int(version[0]) < 160000:
            conn.execute("CREATE ROLE admin LOGIN CREATEROLE PASSWORD 'admin-secret-password-123'")
            roles.append("admin")
    return {
        role: postgres.dsn(dbname="shop", user=role, password=f"{role}-secret-password-123") for role in roles
    }


POWERFUL = ["boss", "reader", "noinh", "deputy", "masked", "exporter", "admin"]


@pytest.mark.parametrize("role", POWERFUL)
async def test_a_role_with_server_powers_is_refused(
    powerful_roles: dict[str, str], tmp_path: Path, role: str
) -> None:
    """Inside a read-only transaction a superuser still ran a shell command on the database
    server (`COPY ... TO PROGRAM`) and read its files (`pg_read_file`) through sql_query."""
    if role not in powerful_roles:
        pytest.skip("CREATEROLE grants no server powers from PostgreSQL 16 on")
    marker = Path(tempfile.gettempdir()) / f"mcphub-copy-{role}-{os.getpid()}"
    sql = make_pack("sql", {"databases": {"shop": {"postgres": powerful_roles[role]}}}, tmp_path)
    for statement in (f"COPY (SELECT 1) TO PROGRAM 'touch {marker}'", "SELECT pg_read_file('/etc/hostname')"):
        result = await sql.call("sql_query", sql=statement)
        assert result.is_error, text(result)
        assert f"the DSN's login role '{role}' is a superuser or may run programs" in text(result)
        assert "allow_superuser: true" in text(result)
    assert (await sql.call("sql_schema")).is_error
    assert not marker.exists()
    assert sql.tools["sql_query"].annotations.read_only is True


@pytest.mark.parametrize(
    ("role", "gain"),
    [
        ("noinh", "SET ROLE pg_execute_server_program"),
        ("deputy", "SET ROLE chief"),
        ("masked", "SET ROLE NONE"),
        ("admin", "GRANT pg_execute_server_program TO admin"),
    ],
)
async def test_a_writable_database_cannot_gain_server_powers_in_the_call(
    powerful_roles: dict[str, str], tmp_path: Path, role: str, gain: str
) -> None:
    """Found in review: on a writable database, `sql_execute` sent a statement without
    parameters over the simple protocol, so `<gain>; COPY ... TO PROGRAM` ran both (as nobody,
    on the server) after the opening check; and that check missed roles that can SET ROLE."""
    if role not in powerful_roles:
        pytest.skip("CREATEROLE grants no server powers from PostgreSQL 16 on")
    marker = Path(tempfile.gettempdir()) / f"mcphub-gain-{role}-{os.getpid()}"
    spec = {"postgres": powerful_roles[role], "writable": True}
    sql = make_pack("sql", {"databases": {"shop": spec}}, tmp_path)
    result = await sql.call("sql_execute", sql=f"{gain}; COPY (SELECT 1) TO PROGRAM 'touch {marker}'")
    assert result.is_error and "may make itself one" in text(result), text(result)
    assert not marker.exists()


async def test_a_write_is_one_statement(postgres: RunningPostgres, tmp_path: Path) -> None:
    dsn = postgres.dsn(dbname="shop", user="app", password="app-secret-password-123")
    sql = make_pack("sql", {"databases": {"shop": {"postgres": dsn, "writable": True}}}, tmp_path)
    two = "INSERT INTO items (id, name) VALUES (900, 'a'); INSERT INTO items (id, name) VALUES (901, 'b')"
    result = await sql.call("sql_execute", sql=two)
    assert result.is_error and "cannot insert multiple commands" in text(result), text(result)
    assert _items(postgres) == 31
    one = await sql.call("sql_execute", sql="UPDATE items SET name = name || '%' WHERE id = 1")
    assert not one.is_error and one.structured is not None and one.structured["affected_rows"] == 1, text(one)
    assert (await sql.call("sql_execute", sql="UPDATE items SET name = 'item1' WHERE id = 1")).structured


async def test_server_powers_allowed_make_the_tools_not_read_only(
    powerful_roles: dict[str, str], tmp_path: Path
) -> None:
    spec = {"postgres": powerful_roles["reader"], "allow_superuser": True}
    sql = make_pack("sql", {"databases": {"shop": spec}}, tmp_path)
    result = await sql.call("sql_query", sql="SELECT current_user")
    assert not result.is_error and result.structured is not None, text(result)
    assert result.structured["rows"] == [["reader"]]
    for name in ("sql_query", "sql_schema"):
        annotations = sql.tools[name].annotations
        assert annotations.read_only is False and annotations.destructive is True, name


def test_allow_superuser_is_for_postgres_and_a_boolean(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"databases\.a\.allow_superuser: only for PostgreSQL"):
        make_pack("sql", {"databases": {"a": {"sqlite": "a.db", "allow_superuser": True}}}, tmp_path)
    with pytest.raises(ConfigError, match=r"databases\.a\.allow_superuser: expected true or false"):
        make_pack("sql", {"databases": {"a": {"postgres": "host=x", "allow_superuser": "yes"}}}, tmp_path)


async def test_postgres_password_is_registered_for_redaction(
    postgres: RunningPostgres, tmp_path: Path
) -> None:
    redactor = Redactor()
    dsn = postgres.dsn(dbname="shop", user="app", password="app-secret-password-123")
    make_pack("sql", {"databases": {"shop": {"postgres": dsn}}}, tmp_path, redactor=redactor)
    assert "app-secret-password-123" not in redactor.text(f"connecting with {dsn} failed")
    wrong = make_pack("sql", {"databases": {"shop": {"postgres": dsn.replace("123@", "124@")}}}, tmp_path)
    result = await wrong.call("sql_query", sql="SELECT 1")
    assert result.is_error and "cannot connect" in text(result)
    assert "app-secret-password-124" not in text(result)


# --- cancellation ------------------------------------------------------------------------------


def _sleeping(server: RunningPostgres, marker: str) -> int:
    """How many statements containing `marker` are running on the server (other than this one)."""
    with psycopg.connect(server.admin_dsn(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s "
            "AND pid <> pg_backend_pid()",
            (f"%{marker}%",),
        ).fetchone()
        assert row is not None
        return int(row[0])


async def _until(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll `predicate` (a blocking check, in a thread) until it holds, or fail naming `what`."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not await asyncio.to_thread(predicate):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"still not {what} after {seconds:g}s")
        await asyncio.sleep(0.05)


def _end_leftovers(server: RunningPostgres, marker: str) -> None:
    with psycopg.connect(server.admin_dsn(), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE %s "
            "AND pid <> pg_backend_pid()",
            (f"%{marker}%",),
        )


@pytest.mark.parametrize("cancels", [1, 2, 3])
async def test_a_cancelled_postgres_statement_is_cancelled_on_the_server(
    postgres: RunningPostgres, tmp_path: Path, cancels: int
) -> None:
    """A call cancelled twice a few milliseconds apart (its deadline's timer, then the hub's cancel)
    used to interrupt psycopg's own cancel request: the connection was closed without it and
    the statement ran on in the server until its end or statement_timeout."""
    dsn = postgres.dsn(dbname="shop", user="app", password="app-secret-password-123")
    sql = make_pack("sql", {"databases": {"shop": {"postgres": dsn}}, "timeout_s": 600}, tmp_path)
    marker = f"cancelled_{cancels}_times"
    call = asyncio.ensure_future(sql.call("sql_query", sql=f"SELECT pg_sleep(120) AS {marker}"))
    try:
        await _until(lambda: _sleeping(postgres, marker) == 1, 30, "running")
        for _ in range(cancels):
            call.cancel()
            for _ in range(3):  # let the task start handling the cancel before the next one
                await asyncio.sleep(0)
        with pytest.raises(asyncio.CancelledError):
            await call
        await _until(lambda: _sleeping(postgres, marker) == 0, 15, "cancelled on the server")
    finally:
        call.cancel()
        await asyncio.to_thread(_end_leftovers, postgres, marker)


@pytest.fixture
def sql_sandbox(postgres: RunningPostgres, tmp_path: Path) -> Iterator[tuple[RunningHub, RunningSidecar]]:
    """A real hub, and a sidecar registered with it serving the sql pack on `shop`."""
    hub = start_hub(tmp_path / "hub", config=hub_config())
    try:
        dsn = postgres.dsn(dbname="shop", user="app", password="app-secret-password-123")
        manifest = {
            "workspace": str(tmp_path),
            "packs": [{"name": "sql", "options": {"databases": {"shop": {"postgres_env": "SHOP_URL"}}}}],
        }
        sidecar = start_sidecar(
            tmp_path / "sidecar", manifest, hub=hub.grpc, token=TOKENS["sbx-42"], env={"SHOP_URL": dsn}
        )
        try:
            yield hub, sidecar
        finally:
            sidecar.stop()
    finally:
        hub.stop()


async def _registered(hub: RunningHub) -> None:
    async def listed() -> bool:
        return "sbx-42__sql_query" in await tool_names(hub, TOKENS["agent-42"])

    await wait_for(listed, what="the sidecar's sql tools at the hub")


async def test_statements_past_their_deadline_through_a_hub_end_on_the_server(
    postgres: RunningPostgres, sql_sandbox: tuple[RunningHub, RunningSidecar]
) -> None:
    """At a call's deadline its task is cancelled twice (the sidecar's timer and the hub's cancel):
    statements used to run on in the server (9 of 20 in the report)."""
    hub, sidecar = sql_sandbox
    await _registered(hub)
    marker = "past_the_deadline"
    request = pb.CallToolRequest(
        name="sbx-42__sql_query", arguments_json=orjson.dumps({"sql": f"SELECT pg_sleep(120) AS {marker}"})
    )
    client = HubClient(hub.grpc)
    try:

        async def call() -> grpc.StatusCode:
            try:
                await client.call_tool(TOKENS["agent-42"], request, timeout=1.0)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        codes = await asyncio.gather(*(call() for _ in range(10)))
        assert set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}, codes
        await _until(lambda: _sleeping(postgres, marker) == 0, 15, "cancelled on the server")
    finally:
        await client.close()
        await asyncio.to_thread(_end_leftovers, postgres, marker)
    assert "query cancellation interrupted" not in sidecar.log()


async def test_a_stopping_sidecar_cancels_its_statements_on_the_server(
    postgres: RunningPostgres, sql_sandbox: tuple[RunningHub, RunningSidecar]
) -> None:
    hub, sidecar = sql_sandbox
    await _registered(hub)
    marker = "sidecar_stopped"
    request = pb.CallToolRequest(
        name="sbx-42__sql_query", arguments_json=orjson.dumps({"sql": f"SELECT pg_sleep(120) AS {marker}"})
    )
    client = HubClient(hub.grpc)
    calls = [asyncio.ensure_future(client.call_tool(TOKENS["agent-42"], request)) for _ in range(3)]
    try:
        await _until(lambda: _sleeping(postgres, marker) == 3, 30, "running")
        assert await asyncio.to_thread(sidecar.stop) == 0, sidecar.log()
        await asyncio.gather(*calls, return_exceptions=True)
        await _until(lambda: _sleeping(postgres, marker) == 0, 15, "cancelled on the server")
    finally:
        for pending in calls:
            pending.cancel()
        await client.close()
        await asyncio.to_thread(_end_leftovers, postgres, marker)
    assert "query cancellation interrupted" not in sidecar.log(), sidecar.log()


_CANCEL_REQUEST = 80877102
_ENCRYPTION_REQUESTS = (80877103, 80877104)  # SSLRequest, GSSENCRequest


class _CancelLosingProxy:
    """A TCP proxy to PostgreSQL that passes sessions on but not cancel requests, as a pooler or
    a proxy may: it takes them and never answers (`swallows`), or closes them unanswered."""

    def __init__(self, pg_port: int, swallows: bool) -> None:
        self.pg_port = pg_port
        self.swallows = swallows
        self.cancels_lost = 0
        self.handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        self.server.close()
        for handler in self.handlers:
            handler.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            head = await reader.readexactly(8)
            length, code = struct.unpack("!ii", head)
            if code in _ENCRYPTION_REQUESTS:  # refused: the client goes on in the clear
                writer.write(b"N")
                head = await reader.readexactly(8)
                length, code = struct.unpack("!ii", head)
            if code == _CANCEL_REQUEST:
                await reader.readexactly(length - 8)
                self.cancels_lost += 1
                if self.swallows:
                    await reader.read()  # until the client gives up
                return
            upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", self.pg_port)
            upstream.write(head)
            await asyncio.gather(self._pump(reader, upstream), self._pump(upstream_reader, writer))
            upstream.close()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.close()


@pytest.mark.parametrize("swallows", [True, False], ids=["unanswered", "closed"])
async def test_a_statement_whose_cancel_is_lost_ends_within_the_documented_bound(
    postgres: RunningPostgres, tmp_path: Path, caplog: pytest.LogCaptureFixture, swallows: bool
) -> None:
    """The bound was 2 s + 5 s, then psycopg's own cancel (cancelling the statement's task): 5 s
    more to send it and 5 s more to wait, 10 to 12 s in all, past the 5 s a stopping sidecar gives
    its stopped calls. The connection is now shut down: at once when the cancel was not answered,
    else after the 5 s; the statement's task ends with the call."""
    proxy = _CancelLosingProxy(postgres.port, swallows)
    port = await proxy.start()
    dsn = f"postgresql://app:app-secret-password-123@127.0.0.1:{port}/shop?sslmode=disable"
    sql = make_pack("sql", {"databases": {"shop": {"postgres": dsn}}, "timeout_s": 600}, tmp_path)
    marker = f"cancel_lost_{'unanswered' if swallows else 'closed'}"
    call = asyncio.ensure_future(sql.call("sql_query", sql=f"SELECT pg_sleep(120) AS {marker}"))
    try:
        await _until(lambda: _sleeping(postgres, marker) == 1, 30, "running")
        call.cancel()
        bound = PG_CANCEL_TIMEOUT_S + PG_CANCELLED_WAIT_S + 2  # the documented 4 s, and some slack
        done, _ = await asyncio.wait([call], timeout=bound)
        assert done, f"the cancelled call was still running after {bound:g}s"
        assert call.cancelled()
        assert proxy.cancels_lost == 1
        left = [t for t in asyncio.all_tasks() if "_pg_statement" in repr(t.get_coro())]
        assert not left, left
        assert not [r.getMessage() for r in caplog.records if r.name.startswith("psycopg")]
    finally:
        call.cancel()
        with contextlib.suppress(BaseException):
            await call
        await asyncio.to_thread(_end_leftovers, postgres, marker)
        await proxy.close()


@pytest.mark.parametrize("swallows", [True, False], ids=["unanswered", "closed"])
async def test_a_stopping_sidecar_answers_a_call_whose_cancel_is_lost_as_stopped(
    postgres: RunningPostgres, tmp_path: Path, swallows: bool
) -> None:
    """The call's cancel took 18 s through the sidecar's stop (psycopg's own cancel at the
    event loop's end), and the hub's caller got "went away while sql_query ran". Then, a cancel
    sent but not acted on (`closed`) still took 5 s + 1 s, past the 5 s the stop gives."""
    proxy = _CancelLosingProxy(postgres.port, swallows=swallows)
    port = await proxy.start()
    dsn = f"postgresql://app:app-secret-password-123@127.0.0.1:{port}/shop?sslmode=disable"
    hub = start_hub(tmp_path / "hub", config=hub_config(), http=False)
    manifest = {
        "workspace": str(tmp_path),
        "packs": [{"name": "sql", "options": {"databases": {"shop": {"postgres_env": "SHOP_URL"}}}}],
    }
    sidecar = start_sidecar(
        tmp_path / "sidecar", manifest, hub=hub.grpc, token=TOKENS["sbx-42"], env={"SHOP_URL": dsn}
    )
    client = HubClient(hub.grpc)
    marker = f"cancel_lost_at_stop_{'unanswered' if swallows else 'closed'}"
    request = pb.CallToolRequest(
        name="sbx-42__sql_query", arguments_json=orjson.dumps({"sql": f"SELECT pg_sleep(120) AS {marker}"})
    )
    call = None
    try:
        await _registered(hub)
        call = asyncio.ensure_future(client.call_tool(TOKENS["agent-42"], request))
        await _until(lambda: _sleeping(postgres, marker) == 1, 30, "running")
        assert await asyncio.to_thread(sidecar.stop) == 0, sidecar.log()
        async with asyncio.timeout(30):
            result = await call
        answer = "\n".join(c.text.text for c in result.content)
        assert "the sandbox's sidecar is shutting down: the call was stopped before it finished" in answer, (
            answer
        )
        assert proxy.cancels_lost == 1
    finally:
        if call is not None:
            call.cancel()
        await client.close()
        sidecar.stop()
        hub.stop()
        await asyncio.to_thread(_end_leftovers, postgres, marker)
        await proxy.close()
    # psycopg's own lines (its cancel at the loop's end); a stall warning may name its modules.
    assert not re.search(r"^\S+ \S+ [A-Z]+ psycopg[\w.]*: ", sidecar.log(), re.M), sidecar.log()

"""A state directory, or a PostgreSQL store, that an older mcphub wrote, served by this version."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.approvals import decide, listing
from tests.support.hub import serve_refused, start_hub
from tests.support.postgres import running_postgres

AGENT = "upgrade-token-agent-0123456789"
ALICE = "upgrade-token-alice-0123456789"
CONFIG: dict[str, Any] = {
    "principals": [
        {"name": "agent", "token": AGENT},
        {"name": "alice", "token": ALICE, "roles": ["approver"], "groups": ["oncall"]},
    ],
    "packs": ["diagnostics"],
}


def older_row(approval_id: str, instance: str, *, state: str = "pending") -> dict[str, Any]:
    """An approval as the hub of e255aed (2026-11-22) stored it: no `waiting`, no
    `arguments_left_out`, `approvers` meaning "an approver in any of these groups", and the
    reason and arguments as that hub redacted them (it let these assignments through)."""
    now = int(time.time() * 1000)
    return {
        "id": approval_id,
        "call_id": f"call-{approval_id}",
        "principal": "agent",
        "tool": "shell_exec",
        "args_sha256": "0" * 64,
        "arguments_json": '{"command": "psql --password=hunter2-arg -c \'drop table x\'"}',
        "reason": "runs PGPASSWORD=hunter2-reason psql on prod",
        "rule": "prod needs oncall or security",
        "approvers": ["oncall", "security"],
        "state": state,
        "created_ms": now,
        "expires_ms": now + 600_000,
        "instance": instance,
        "decided_by": "",
        "decided_ms": 0,
        "decision_reason": "",
        "used_ms": 0,
        "args_key": "ab" * 32,
    }


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
async def test_approvals_an_older_hub_stored_are_read_in_this_versions_form(
    tmp_path: Path, store: str
) -> None:
    """Field 9 (`approver_groups`) meant "any of these groups"; read as "each of them", an old
    row needing oncall or security refused alice, in oncall only ("needs an approver in oncall
    and security"). Old rows also kept secrets this version redacts, and their pending calls were
    reported at the start as calls that had been waiting."""
    with contextlib.ExitStack() as stack:
        config = dict(CONFIG)
        if store == "postgres":
            pg = stack.enter_context(running_postgres())
            dsn = pg.create_database("mcphub_upgrade")
            dsn_file = tmp_path / "audit.dsn"
            dsn_file.write_text(dsn + "\n")
            config["audit"] = {"store": "postgres", "dsn_file": str(dsn_file)}
        first = start_hub(tmp_path, config=config, http=False)  # makes the tables; its instance's name
        assert first.stop() == 0
        rows = [older_row("old-other", "old-replica"), older_row("old-own", "")]
        if store == "sqlite":
            db = sqlite3.connect(first.state_dir / "audit" / "audit.db")
            instance = _instance_of(db.execute("SELECT body FROM records WHERE kind = 'hub'").fetchone()[0])
            rows[1]["instance"] = instance
            with db:
                for row in rows:  # the older hub's own table had 3 columns; this one's are filled in
                    db.execute(
                        "INSERT INTO approvals (id, state, data) VALUES (?, ?, ?)",
                        (row["id"], row["state"], orjson.dumps(row)),
                    )
            db.close()
        else:
            import psycopg

            with psycopg.connect(dsn, autocommit=True) as conn:
                body = conn.execute("SELECT body FROM mcphub_records WHERE kind = 'hub'").fetchone()[0]
                rows[1]["instance"] = _instance_of(bytes(body))
                for row in rows:  # as the older hub wrote them: `INSERT ... VALUES (id, state, data)`
                    conn.execute(
                        "INSERT INTO mcphub_approvals VALUES (%s, %s, %s)",
                        (row["id"], row["state"], orjson.dumps(row)),
                    )
        hub = start_hub(tmp_path, config=config, http=False)
        try:
            pending = await listing(hub.grpc, ALICE)
            assert [a.id for a in pending] == ["old-other"]
            shown = pending[0]
            assert list(shown.approver_groups) == ["oncall|security"]
            assert "hunter2" not in shown.reason and "hunter2" not in shown.arguments_json, shown
            assert "PGPASSWORD=" in shown.reason and "drop table x" in shown.arguments_json
            decided = await decide(hub.grpc, ALICE, "old-other", True, "oncall may")
            assert (decided.state, decided.decided_by) == ("approved", "alice")
            expired = await listing(hub.grpc, ALICE, "expired")
            assert [a.id for a in expired] == ["old-own"]
            if store == "postgres":
                # An older replica still running on the shared store writes one after the rewrite
                # (mixing versions is not supported: README, Upgrading); it is read as it meant.
                import psycopg

                late = older_row("old-late", "old-replica")
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(
                        "INSERT INTO mcphub_approvals VALUES (%s, %s, %s)",
                        ("old-late", "pending", orjson.dumps(late)),
                    )
                shown = (await listing(hub.grpc, ALICE))[-1]
                assert (shown.id, list(shown.approver_groups)) == ("old-late", ["oncall|security"])
                assert (await decide(hub.grpc, ALICE, "old-late", False, "no")).state == "denied"
        finally:
            assert hub.stop() == 0
        log = hub.log()
        assert "rewrote 2 approvals an older mcphub stored in this version's form" in log, log
        # Its own pending one fails closed, and is said to be an older hub's, not a waiting call.
        assert "1 approvals pending from a hub of an older version are expired" in log, log
        assert "calls were waiting for approval" not in log, log
        again = start_hub(tmp_path, config=config, http=False)  # rewritten once: nothing to do now
        assert again.stop() == 0
        assert "rewrote" not in again.log() and "older version" not in again.log()


def _instance_of(body: bytes) -> str:
    instance = orjson.loads(body)["instance"]
    assert isinstance(instance, str)
    return instance


def test_a_state_directory_a_newer_version_ran_on_is_refused_in_one_line(tmp_path: Path) -> None:
    """Rolled back after the new hub ran, the old one crashed at start (`Approval.__init__() got
    an unexpected keyword argument 'waiting'`) or failed every approval (`table approvals has 6
    columns but 3 values were supplied`). That old code cannot be changed; from this version on,
    the state says which version's it is, and an older hub refuses it before reading it."""
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    marker = state_dir / "format.json"
    marker.write_text('{"format": 99, "written_by": "mcphub 9.0.0"}\n')
    out = serve_refused(tmp_path, CONFIG)
    assert out.returncode == 3 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(
        f"mcphub: the state directory {state_dir} was last used by a newer mcphub (mcphub 9.0.0), whose "
        "state (format 99) this one (format "
    ), out.stderr
    assert out.stderr.endswith(
        "rolling back after a newer version ran is not supported; run the newer version again, or this "
        "one on a state directory of its own\n"
    ), out.stderr
    # Refused before this hub wrote anything there (a signing key, an operator token, its lock).
    assert [p.name for p in state_dir.iterdir()] == ["format.json"]
    marker.write_text("{")
    out = serve_refused(tmp_path, CONFIG)
    assert out.returncode == 3 and f"mcphub: {marker}: not the state format marker" in out.stderr, out.stderr

    from mcp_remote.statedir import STATE_FORMAT
    from mcp_remote.version import version_text

    marker.unlink()
    hub = start_hub(tmp_path, config=CONFIG, http=False)
    assert hub.stop() == 0
    assert orjson.loads(marker.read_bytes()) == {"format": STATE_FORMAT, "written_by": version_text()}

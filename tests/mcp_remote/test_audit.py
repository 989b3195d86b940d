"""The audit log against real hubs: every call recorded, secrets redacted, tampering detected by
`mcphub audit verify`, nothing lost when the hub is killed, and one chain shared through PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import hmac
import itertools
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest

from bridge.hubclient import HubClient
from mcp_local.version import VERSION
from mcp_remote.audit.ed25519 import load_private_key, new_private_key
from mcp_remote.audit.postgres import PostgresStore
from mcp_remote.audit.sqlite import SQLiteStore
from mcphub_proto.v1 import approvals_pb2 as apb
from mcphub_proto.v1 import approvals_pb2_grpc as apb_grpc
from mcphub_proto.v1 import toolhub_pb2 as pb
from tests.support.approvals import decide, start_call, text_of
from tests.support.clients import ProtocolFailure, connect
from tests.support.hub import FAULTY_PACK, REPO, hub_command, serve_refused, start_hub
from tests.support.postgres import running_postgres

pytestmark = pytest.mark.anyio

RISKY_PACK = str(REPO / "tests" / "packs" / "risky.py")
CANARY = "canary-9f3e1b7c2d4a6e8f0b1c3d5e"
TOKEN = "audit-token-agent-0123456789"
APPROVER = "audit-token-approver-0123456"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MCPHUB_")} | (env or {})
    return subprocess.run(hub_command(*args), capture_output=True, text=True, timeout=120, cwd=REPO, env=full)


def config(**extra: Any) -> dict[str, Any]:
    return {
        "principals": [
            {"name": "agent", "token": TOKEN},
            {"name": "approver", "token": APPROVER, "roles": ["approver"]},
        ],
        "packs": ["diagnostics", {"name": RISKY_PACK, "options": {"secret": CANARY}}],
        "audit": {"checkpoint_every": 10},
        **extra,
    }


async def call_echo(hub: HubClient, text: str, token: str = TOKEN, request_id: str = "") -> pb.CallToolResult:
    request = pb.CallToolRequest(
        name="echo", arguments_json=orjson.dumps({"text": text}), request_id=request_id
    )
    return await hub.call_tool(token, request)


async def all_records(state_dir: Path) -> list[Any]:
    store = SQLiteStore(state_dir / "audit" / "audit.db", read_only=True)
    await store.open()
    try:
        return [r async for r in store.scan()]
    finally:
        await store.close()


@pytest.fixture(scope="module")
async def stopped_log(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Path]:
    """A state directory whose hub served a few dozen calls and stopped cleanly.

    Async, like every test here that touches gRPC: grpc.aio serves one event loop per process."""
    workdir = tmp_path_factory.mktemp("audited")
    hub = start_hub(workdir, config=config(), http=False, env={"PYTHONPROFILEIMPORTTIME": "1"})
    client = HubClient(hub.grpc)
    for i in range(25):
        await call_echo(client, f"hello {i}")
    with pytest.raises(grpc.aio.AioRpcError):
        await call_echo(client, "x", token="wrong-token-0123456789")
    await client.close()
    assert hub.stop() == 0
    yield hub.state_dir


async def test_every_call_leaves_its_records_and_refusals_are_recorded(stopped_log: Path) -> None:
    records = await all_records(stopped_log)
    by_call: dict[str, list[str]] = {}
    for r in records:
        by_call.setdefault(r.call_id, []).append(r.kind)
    calls = {c: kinds for c, kinds in by_call.items() if c != "-"}
    assert len(calls) == 26
    allowed = [k for k in calls.values() if "decided" in k]
    assert len(allowed) == 25 and all(k == ["requested", "decided", "started", "finished"] for k in allowed)
    refused = next(
        r for r in records if r.kind == "finished" and r.body_json()["status"] == "unauthenticated"
    )
    assert refused.principal == "-" and "not one this hub knows" in refused.body_json()["error"]
    finished = next(r for r in records if r.kind == "finished" and r.body_json()["status"] == "ok")
    body = finished.body_json()
    text = next(r for r in records if r.call_id == finished.call_id and r.kind == "requested")
    echoed = text.body_json()["arguments"]["text"].encode()
    assert body["output_bytes"] == len(echoed) and body["duration_ms"] >= 0
    # Keyed (from the signing key): a reader of the log cannot confirm a guess of an output.
    assert "output_sha256" not in body and body["output_hmac_sha256"] != hashlib.sha256(echoed).hexdigest()
    signing = base64.b64decode((stopped_log / "audit" / "signing.key").read_bytes())
    key = hmac.new(signing, b"mcphub audit output digest v1", hashlib.sha256).digest()
    assert body["output_hmac_sha256"] == hmac.new(key, echoed, hashlib.sha256).hexdigest()
    public = base64.b64decode((stopped_log / "audit" / "signing.pub").read_bytes())
    assert body["output_key"] == hashlib.sha256(public).hexdigest()[:16]


def test_verify_passes_on_an_untouched_log(stopped_log: Path) -> None:
    out = cli("audit", "verify", "--state-dir", str(stopped_log), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    # How many checkpoints depends on how the calls' records were batched: at least one and the last.
    assert report["ok"] and report["records"] > 100 and report["checkpoints"] >= 2
    # The hub signed those checkpoints through the OpenSSL its runtime had loaded; `verify`
    # checked them with `cryptography`, which the hub never imported (about 7.5 MB).
    imported = {
        line.split("|")[-1].strip()
        for line in (stopped_log.parent / "hub.log").read_text().splitlines()
        if line.startswith("import time:")
    }
    assert "mcp_remote.audit.ed25519" in imported
    assert not {m for m in imported if m.split(".")[0] == "cryptography"}


def tampered_copy(source: Path, target: Path, *statements: str) -> Path:
    shutil.copytree(source, target)
    db = sqlite3.connect(target / "audit" / "audit.db")
    for statement in statements:
        db.execute(statement)
    db.commit()
    db.close()
    return target


@pytest.mark.parametrize(
    ("name", "statements", "bad", "words"),
    [
        ("edited", ["UPDATE records SET body = CAST(body AS TEXT) || ' ' WHERE seq = 17"], 17, "was edited"),
        ("edited-principal", ["UPDATE records SET principal = 'someone' WHERE seq = 30"], 30, "was edited"),
        ("deleted", ["DELETE FROM records WHERE seq = 40"], 40, "record 40 is missing"),
        (
            "reordered",
            [
                "UPDATE records SET seq = -1 WHERE seq = 50",
                "UPDATE records SET seq = 50 WHERE seq = 51",
                "UPDATE records SET seq = 51 WHERE seq = -1",
            ],
            50,
            "reordered",
        ),
        ("truncated", ["DELETE FROM records WHERE seq > 60"], 61, "the log was cut"),
    ],
)
def test_verify_names_the_first_bad_record(
    stopped_log: Path, tmp_path: Path, name: str, statements: list[str], bad: int, words: str
) -> None:
    state = tampered_copy(stopped_log, tmp_path / name, *statements)
    out = cli("audit", "verify", "--state-dir", str(state))
    assert out.returncode == 1, out.stdout
    assert f"audit log BROKEN at record {bad}" in out.stderr and words in out.stderr


def test_an_edit_covered_by_recomputed_hashes_is_reported_as_the_records_it_is_among(
    stopped_log: Path, tmp_path: Path
) -> None:
    """The chain holds again after the edit: only a checkpoint notices, and the record it names
    is not the one edited. Verify names the records since the last checkpoint that held."""
    from mcp_remote.audit.records import record_hash

    state = tmp_path / "recomputed"
    shutil.copytree(stopped_log, state)
    lines = (state / "audit" / "checkpoints.jsonl").read_text().splitlines()
    signed = sorted({json.loads(line)["seq"] for line in lines})
    # A record after one checkpoint (or, with none before it, after the first record) and up to
    # the next. Not at fixed places: how many checkpoints a run signs depends on how the writer
    # batched the records (a busy machine signed only two, and signed[1] + 3 had none after it).
    gaps = [(a, b) for a, b in itertools.pairwise(signed) if b > a] or [(0, signed[0])]
    before, after = gaps[-1]
    edited = max(before + 1, 2)  # record 1 has no record before it to chain from
    assert edited <= after, signed
    db = sqlite3.connect(state / "audit" / "audit.db")
    prev = db.execute("SELECT hash FROM records WHERE seq = ?", (edited - 1,)).fetchone()[0]
    rows = db.execute("SELECT * FROM records WHERE seq >= ? ORDER BY seq", (edited,)).fetchall()
    for seq, ts_ms, call_id, kind, principal, tool, body, _, _ in rows:
        body = bytes(body) + (b" " if seq == edited else b"")
        digest = record_hash(prev, seq, ts_ms, call_id, kind, principal, tool, body)
        db.execute("UPDATE records SET body = ?, prev = ?, hash = ? WHERE seq = ?", (body, prev, digest, seq))
        prev = digest
    db.commit()
    db.close()
    out = cli("audit", "verify", "--state-dir", str(state))
    assert out.returncode == 1, out.stdout
    assert out.stderr.startswith(
        f"audit log BROKEN in records {before + 1}-{after}: a record in {before + 1}-{after} was changed"
    ), out.stderr
    assert f"record {after} does not match its signed checkpoint" in out.stderr
    report = json.loads(cli("audit", "verify", "--state-dir", str(state), "--json").stdout)
    assert report["first_bad_record"] == before + 1
    assert report["bad_range"] == {"first": before + 1, "last": after}


def test_a_reader_that_leaves_early_stops_the_command_quietly(stopped_log: Path) -> None:
    """`mcphub audit query | head -2`: exit 141 (as SIGPIPE), no traceback."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)  # smaller than the records it prints
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPHUB_")}
    command = hub_command("audit", "query", "--state-dir", str(stopped_log), "--json", "--limit", "1000")
    with subprocess.Popen(command, stdout=write_end, stderr=subprocess.PIPE, cwd=REPO, env=env) as proc:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as reader:
            assert reader.readline().startswith(b'{"seq"')
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 141 and b"Traceback" not in stderr, stderr


def test_a_forged_checkpoint_is_detected(stopped_log: Path, tmp_path: Path) -> None:
    state = tampered_copy(
        stopped_log, tmp_path / "forged", "UPDATE checkpoints SET hash = 'f' || substr(hash, 2)"
    )
    (state / "audit" / "checkpoints.jsonl").unlink()
    out = cli("audit", "verify", "--state-dir", str(state))
    assert out.returncode == 1 and "invalid signature" in out.stderr


async def test_a_checkpoint_file_that_cannot_be_written_is_reported_once_and_caught_up(
    tmp_path: Path,
) -> None:
    """An unwritable `checkpoints.jsonl` logged an error for every checkpoint (547 lines in 5 s),
    and the file, once it could be written, lacked every checkpoint made meanwhile."""
    hub = start_hub(tmp_path, config=config(audit={"checkpoint_every": 2}), http=False)
    path = hub.state_dir / "audit" / "checkpoints.jsonl"
    # What the hub cannot append to, even as root (a file it may not write, as another user).
    path.mkdir()
    client = HubClient(hub.grpc)
    try:
        for i in range(10):
            await call_echo(client, f"unwritable {i}")
        async with asyncio.timeout(20):
            while "could not add the audit checkpoint" not in hub.log():  # noqa: ASYNC110 - the hub's log
                await asyncio.sleep(0.05)
        for i in range(10):
            await call_echo(client, f"still unwritable {i}")
        path.rmdir()
        for i in range(5):
            await call_echo(client, f"writable {i}")
    finally:
        await client.close()
        assert hub.stop() == 0
    log = hub.log()
    assert log.count("could not add the audit checkpoint") == 1, log
    assert log.count("written again") == 1, log
    store = SQLiteStore(hub.state_dir / "audit" / "audit.db", read_only=True)
    await store.open()
    try:
        stored = [c.seq for c in await store.checkpoints()]
    finally:
        await store.close()
    # How many checkpoints the calls made depends on how the writer batched them: at least one
    # while the file could not be written (the first failed one), all of them in the file now.
    missed = re.search(r"is written again: added the (\d+) checkpoints it missed", log)
    assert missed is not None and int(missed.group(1)) >= 1, log
    assert [json.loads(line)["seq"] for line in path.read_text().splitlines()] == stored


def test_tail_and_query(stopped_log: Path) -> None:
    tail = cli("audit", "tail", "-n", "3", "--state-dir", str(stopped_log), "--json")
    rows = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows) and len(rows) == 3
    query = cli(
        "audit",
        "query",
        "--tool",
        "echo",
        "--principal",
        "agent",
        "--since",
        "1h",
        "--state-dir",
        str(stopped_log),
        "--json",
        "--limit",
        "1000",
    )
    found = [json.loads(line) for line in query.stdout.splitlines()]
    assert len(found) == 100 and {r["tool"] for r in found} == {"echo"}
    human = cli(
        "audit",
        "query",
        "--tool",
        "echo",
        "--principal",
        "agent",
        "--limit",
        "2",
        "--state-dir",
        str(stopped_log),
    )
    assert human.returncode == 0 and "finished" in human.stdout and "agent" in human.stdout
    bad = cli("audit", "query", "--since", "yesterday", "--state-dir", str(stopped_log))
    assert bad.returncode == 2 and "expected e.g. 10m" in bad.stderr
    huge = ["query", "--limit", "99999999999999999999"]  # past SQLite's integers: a traceback
    for args in (["query", "--limit", "-1"], ["query", "--limit", "0"], ["tail", "-n", "-1"], huge):
        bad = cli("audit", *args, "--state-dir", str(stopped_log))  # -1 was SQL's "no limit", less one
        least = 0 if args[0] == "tail" else 1  # `tail -n 0 -f` follows only new records
        assert bad.returncode == 2 and f"expected {least} or more" in bad.stderr, bad.stderr


async def test_tail_follows_only_new_records_with_no_lines(tmp_path: Path) -> None:
    """`audit tail -f -n 0` was refused ("expected 1 or more"); like `tail -n 0 -f`, it shows
    none of the records already written, then each new one."""
    hub = start_hub(tmp_path, config=config(), http=False)
    client = HubClient(hub.grpc)
    follower = None
    try:
        for i in range(3):
            await call_echo(client, f"before {i}")
        newest = cli("audit", "tail", "-n", "1", "--json", "--state-dir", str(hub.state_dir))
        before = json.loads(newest.stdout)["seq"]
        follower = await asyncio.create_subprocess_exec(
            *hub_command("audit", "tail", "-f", "-n", "0", "--json", "--state-dir", str(hub.state_dir)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
        )
        assert follower.stdout is not None and follower.stderr is not None
        # Whether the follower has read where to start is not visible: call until it shows one.
        async with asyncio.timeout(60):
            line = b""
            while not line:
                await call_echo(client, "after")
                with contextlib.suppress(TimeoutError):
                    line = await asyncio.wait_for(follower.stdout.readline(), 0.5)
                if follower.stdout.at_eof():
                    raise AssertionError((await follower.stderr.read()).decode())
        first = json.loads(line)
        assert first["seq"] > before and first["tool"] == "echo", first
    finally:
        if follower is not None and follower.returncode is None:
            follower.terminate()
            await follower.wait()
        await client.close()
        assert hub.stop() == 0


async def test_tail_follows_every_record_however_many_arrive_between_two_looks(tmp_path: Path) -> None:
    """`audit tail -f` looked at the newest 1000 records every half second and kept those past the
    last it printed: more than 1000 written between two looks, and the older ones were never
    shown. The follower is stopped (SIGSTOP) while 1200 records are written, so that they all
    arrive between two of its looks; it must print every one of them, in order."""
    hub = start_hub(tmp_path, config=config(), http=False)
    client = HubClient(hub.grpc)
    follower = None
    try:
        follower = await asyncio.create_subprocess_exec(
            *hub_command("audit", "tail", "-f", "-n", "0", "--json", "--state-dir", str(hub.state_dir)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
        )
        assert follower.stdout is not None and follower.stderr is not None
        async with asyncio.timeout(60):  # following, once it shows a record
            line = b""
            while not line:
                await call_echo(client, "first")
                with contextlib.suppress(TimeoutError):
                    line = await asyncio.wait_for(follower.stdout.readline(), 0.5)
                if follower.stdout.at_eof():
                    raise AssertionError((await follower.stderr.read()).decode())
        seqs = [json.loads(line)["seq"]]
        follower.send_signal(signal.SIGSTOP)
        try:
            for batch in range(40):  # 320 calls, 4 records each
                await asyncio.gather(*(call_echo(client, f"burst {batch} {i}") for i in range(8)))
            done = await call_echo(client, "last")
            assert not done.is_error
        finally:
            follower.send_signal(signal.SIGCONT)
        (*_, newest) = await all_records(hub.state_dir)
        async with asyncio.timeout(120):
            while seqs[-1] < newest.seq:
                seqs.append(json.loads(await follower.stdout.readline())["seq"])
        assert newest.seq - seqs[0] > 1200
        assert seqs == list(range(seqs[0], newest.seq + 1)), "records skipped or repeated"
    finally:
        if follower is not None and follower.returncode is None:
            follower.terminate()
            await follower.wait()
        await client.close()
        assert hub.stop() == 0


def test_query_after_a_sequence_number_is_a_cursor_oldest_first(stopped_log: Path) -> None:
    """`audit query --after SEQ`: the records past SEQ, oldest first, so that a cron export can
    go on where it stopped; when --limit cuts the answer, stderr names the next cursor."""
    common = ["--state-dir", str(stopped_log), "--json"]
    every = [
        json.loads(line) for line in cli("audit", "query", "--limit", "100000", *common).stdout.splitlines()
    ]
    start = every[10]["seq"]
    page = cli("audit", "query", "--after", str(start), "--limit", "5", *common)
    assert page.returncode == 0, page.stderr
    assert [json.loads(line)["seq"] for line in page.stdout.splitlines()] == list(range(start + 1, start + 6))
    assert page.stderr == f"5 records shown, more match: --after {start + 5} for the next ones\n"
    rest = cli("audit", "query", "--after", str(start), "--limit", "100000", *common)
    assert [json.loads(line) for line in rest.stdout.splitlines()] == every[11:] and rest.stderr == ""
    echoes = cli("audit", "query", "--after", str(start), "--tool", "echo", "--limit", "3", *common)
    found = [json.loads(line) for line in echoes.stdout.splitlines()]
    assert [r["tool"] for r in found] == ["echo"] * 3 and found[0]["seq"] > start
    assert [r["seq"] for r in found] == sorted(r["seq"] for r in found)
    none = cli("audit", "query", "--after", str(every[-1]["seq"]), *common)
    assert none.returncode == 0 and none.stdout == "" and none.stderr == ""
    bad = cli("audit", "query", "--after", "-1", *common)
    assert bad.returncode == 2 and "expected 0 or more" in bad.stderr


def test_query_says_when_its_limit_cut_the_answer(stopped_log: Path) -> None:
    common = ["--tool", "echo", "--principal", "agent", "--state-dir", str(stopped_log)]
    whole = cli("audit", "query", *common, "--limit", "100", "--json")  # exactly as many as match
    assert whole.returncode == 0 and len(whole.stdout.splitlines()) == 100 and whole.stderr == ""
    cut = cli("audit", "query", *common, "--limit", "99", "--json")
    assert cut.returncode == 0 and cut.stdout.splitlines() == whole.stdout.splitlines()[1:]  # the newest
    assert cut.stderr == "99 records shown, more match: --limit N\n"


@pytest.mark.parametrize("action", ["verify", "tail", "query"])
def test_every_option_of_the_audit_commands_says_what_it_does(action: str) -> None:
    out = cli("audit", action, "--help")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "--state-dir STATE_DIR the hub's state directory" in text
    assert re.search(r"--json (the report as a JSON object|each record as a line of JSON)", text), text
    if action == "tail":
        assert "-f, --follow then print records as they are written" in text
    if action == "query":  # which records a --limit keeps
        assert "--limit LIMIT at most this many records: the newest N, or with --after the first N" in text
        assert "--after SEQ only records past this sequence number, oldest first" in text


def test_a_hub_says_what_it_dropped_of_a_record_it_died_writing(stopped_log: Path, tmp_path: Path) -> None:
    state = tmp_path / "torn" / "state"
    shutil.copytree(stopped_log, state)
    with (state / "audit" / "audit.journal").open("ab") as journal:
        journal.write(b'[99999, 1700000000000, "call')
    hub = start_hub(state.parent, config=config(), http=False)
    assert hub.stop() == 0
    assert f"{state / 'audit' / 'audit.journal'}: dropped 28 bytes of an unfinished last record" in hub.log()
    assert (state / "audit" / "audit.journal").read_bytes() == b""
    assert cli("audit", "verify", "--state-dir", str(state)).returncode == 0


async def test_secrets_never_reach_the_audit_store_or_the_log(tmp_path: Path) -> None:
    hub = start_hub(tmp_path, config=config(), env={"MCPHUB_LOG_LEVEL": "debug"})
    client = HubClient(hub.grpc)
    try:
        result = await call_echo(client, f"the key is {CANARY}")
        assert result.content[0].text.text == f"the key is {CANARY}", "a tool result is the caller's own data"
        # Secrets a caller writes into a command line, unregistered and of no known shape.
        inline = (
            "mysql --password=S3cretPassw0rd; PGPASSWORD=S3cretPassw0rd2 psql; curl -u x --token tk-998877"
        )
        await call_echo(client, inline)
        call = start_call(client, TOKEN, "delete_thing", {"name": "x", "password": "hunter2-pw"})
        await decide(hub.grpc, APPROVER, await call.approval_id(), True)
        await call.result()
        with pytest.raises(grpc.aio.AioRpcError):
            await call_echo(client, "x", token=CANARY)
        # A secret as a tool name or an argument key went into the record as it was.
        with pytest.raises(grpc.aio.AioRpcError):
            await client.call_tool(TOKEN, pb.CallToolRequest(name=CANARY, arguments_json=b"{}"))
        keyed = await client.call_tool(
            TOKEN, pb.CallToolRequest(name="echo", arguments_json=orjson.dumps({"text": "k", CANARY: 1}))
        )
        assert keyed.is_error
        # Errors quote what the caller wrote: a schema error, a tool raising with its input.
        with_secret = await client.call_tool(
            TOKEN,
            pb.CallToolRequest(
                name="echo", arguments_json=orjson.dumps({"text": ["PGPASSWORD=SchemaLeak123"]})
            ),
        )
        assert with_secret.is_error
        raised = await client.call_tool(
            TOKEN,
            pb.CallToolRequest(
                name="quote_and_fail", arguments_json=orjson.dumps({"name": "--password=RaisedLeak321"})
            ),
        )
        assert raised.is_error
        await call_echo(client, "x", request_id="req --password=ReqIdLeak456")
        with pytest.raises(grpc.aio.AioRpcError):
            await client.call_tool(
                TOKEN, pb.CallToolRequest(name="password=ToolNameLeak789", arguments_json=b"{}")
            )
        # While it runs, too: the journal may hold records not yet folded into SQLite.
        live = b"".join(p.read_bytes() for p in (hub.state_dir / "audit").iterdir() if p.is_file())
    finally:
        await client.close()
        hub.stop()
    raw = live + b"".join(p.read_bytes() for p in (hub.state_dir / "audit").iterdir() if p.is_file())
    leaks = ("SchemaLeak123", "RaisedLeak321", "ReqIdLeak456", "ToolNameLeak789")
    for secret in (CANARY, "hunter2-pw", TOKEN, APPROVER, "S3cretPassw0rd", "tk-998877", *leaks):
        assert secret.encode() not in raw, secret
        assert secret not in hub.log(), secret
    records = await all_records(hub.state_dir)
    bodies = [r.body_json() for r in records if r.kind == "requested" and r.tool in ("echo", "delete_thing")]
    assert {"text": "the key is [REDACTED]"} in [b.get("arguments") for b in bodies]
    assert {"name": "x", "password": "[REDACTED]"} in [b.get("arguments") for b in bodies]
    assert {
        "text": "mysql --password=[REDACTED]; PGPASSWORD=[REDACTED] psql; curl -u x --token [REDACTED]"
    } in [b.get("arguments") for b in bodies]


@pytest.mark.parametrize("sync", [False, True], ids=["default", "sync"])
async def test_sigkill_under_load_loses_no_answered_call(tmp_path: Path, sync: bool) -> None:
    """With `audit.sync` the journal is written from a thread, calls committing meanwhile sharing
    the next write: still no call is answered before its records are written."""
    hub = start_hub(tmp_path, config=config(audit={"checkpoint_every": 10, "sync": sync}), http=False)
    answered: list[str] = []
    client = HubClient(hub.grpc)

    async def caller(n: int) -> None:
        for i in range(10_000):
            request_id = f"w{n}-{i}"
            try:
                await call_echo(client, request_id, request_id=request_id)
            except grpc.aio.AioRpcError:
                return
            answered.append(request_id)

    workers = [asyncio.ensure_future(caller(n)) for n in range(16)]
    while len(answered) < 600:  # noqa: ASYNC110 - polling a count that the workers grow
        await asyncio.sleep(0.01)
    hub.process.send_signal(signal.SIGKILL)
    await asyncio.gather(*workers)
    await client.close()
    hub.stop()
    records = await all_records(hub.state_dir)
    request_of = {r.call_id: r.body_json().get("request_id") for r in records if r.kind == "requested"}
    finished = {request_of.get(r.call_id) for r in records if r.kind == "finished"}
    missing = [rid for rid in answered if rid not in finished]
    assert not missing, f"{len(missing)} answered calls have no finished record, e.g. {missing[:3]}"
    out = cli("audit", "verify", "--state-dir", str(hub.state_dir))
    assert out.returncode == 0, out.stderr


async def test_a_start_after_a_kill_records_that_the_hub_before_it_did_not_stop(tmp_path: Path) -> None:
    """A compliance reader could not tell a hub killed with -9 from one still running: the log
    just went quiet. The next start now says so, in its `hub started` record and a log line."""
    first = start_hub(tmp_path, config=config(), http=False)
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(timeout=30)
    first.stop()
    # Its pid taken by another process by then (after a reboot, say): the hub is still gone.
    sleeper = subprocess.Popen(["sleep", "60"])  # noqa: ASYNC220 - a process to hold a pid, no more
    hub_file = first.state_dir / "hub.json"
    hub_file.write_text(hub_file.read_text().replace(f'"pid": {first.process.pid}', f'"pid": {sleeper.pid}'))
    try:
        second = start_hub(tmp_path, config=config(), http=False)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert second.stop() == 0
    warned = second.log_path.read_text()
    assert f"the hub before this one (pid {sleeper.pid}) did not stop cleanly" in warned
    third = start_hub(tmp_path, config=config(), http=False)
    assert third.stop() == 0
    assert "did not stop cleanly" not in third.log_path.read_text()
    started = [r.body_json() for r in await all_records(third.state_dir) if r.kind == "hub"]
    unclean = [b.get("unclean_stop_of_pid") for b in started if b["event"] == "started"]
    assert unclean == [None, sleeper.pid, None], started
    # Each start says which code ran (an upgrade or a rollback is read back from the log).
    git = ["git", "rev-parse", "HEAD"]
    commit = (await asyncio.to_thread(subprocess.run, git, cwd=REPO, capture_output=True, text=True)).stdout
    for body in (b for b in started if b["event"] == "started"):
        assert body["version"] == VERSION and body["commit"] == (commit.strip()[:12] or None), body


def test_a_hub_refuses_to_start_on_an_edited_journal(tmp_path: Path) -> None:
    (tmp_path / "state" / "audit").mkdir(parents=True)
    (tmp_path / "state" / "audit" / "audit.journal").write_bytes(b'[1, 2, "edited"]\n')
    out = serve_refused(tmp_path, config())
    assert out.returncode == 3, out.stderr
    assert "audit.journal, line 1: not an audit record" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("cut-file", lambda db: os.truncate(db, 8192)),
        ("dropped-table", lambda db: sqlite3.connect(db).execute("DROP TABLE records")),
    ],
)
def test_an_unreadable_database_is_a_broken_log_not_a_crash(
    stopped_log: Path, tmp_path: Path, name: str, damage: Any
) -> None:
    state = tmp_path / name
    shutil.copytree(stopped_log, state)
    damage(state / "audit" / "audit.db")
    out = cli("audit", "verify", "--state-dir", str(state))
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "audit log BROKEN: the audit database cannot be read" in out.stderr
    out = cli("audit", "verify", "--state-dir", str(state), "--json")
    assert out.returncode == 1 and json.loads(out.stdout)["ok"] is False
    for command in (["tail"], ["query", "--tool", "echo"]):
        out = cli("audit", *command, "--state-dir", str(state))
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        assert "the audit database cannot be read" in out.stderr


def test_an_unreadable_state_directory_is_one_line_not_a_broken_log(
    stopped_log: Path, tmp_path: Path
) -> None:
    """A reader without the hub's permissions: exit 2 saying so, not a traceback, and not
    verify's exit 1, which says the log is broken."""
    state = tmp_path / "locked"
    shutil.copytree(stopped_log, state)
    root = os.geteuid() == 0
    prefix: list[str] = []
    if root:  # root reads anything: without these capabilities, what is not its own it reads as others do
        drop = "-dac_override,-dac_read_search"
        prefix = ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", "--"]
        for path in (state, *state.rglob("*")):
            os.chown(path, 65534, 65534)
    (state / "audit").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPHUB_")}
    for locked, closed in ((state, 0o700), (state / "audit" / "audit.db", 0o600)):
        locked.chmod(closed if root else 0)  # the directory, then the database only
        for command in (["verify"], ["tail"], ["query", "--tool", "echo"]):
            out = subprocess.run(
                [*prefix, *hub_command("audit", *command, "--state-dir", str(state))],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=REPO,
                env=env,
            )
            assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
            (line,) = out.stderr.splitlines()
            assert line.startswith("mcphub: cannot read ") and "Permission denied" in line, line
        locked.chmod(0o755)


def test_a_public_key_that_is_no_key_and_a_missing_state_directory_are_one_line(
    stopped_log: Path, tmp_path: Path
) -> None:
    state = tmp_path / "keys"
    shutil.copytree(stopped_log, state)
    bad = tmp_path / "bad.pub"
    for content in (b"abc\n", b"YWJjZA==\n", b""):
        bad.write_bytes(content)
        out = cli("audit", "verify", "--state-dir", str(state), "--public-key", str(bad))
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr == f"mcphub: {bad}: not an Ed25519 public key (32 bytes in base64); give the " + (
            "signing.pub of the hub that signed the log (--public-key FILE)\n"
        )
    out = cli("audit", "verify", "--state-dir", str(state), "--public-key", str(tmp_path))
    assert out.returncode == 2 and out.stderr == f"mcphub: {tmp_path}: a directory, not a file\n"
    (state / "audit" / "signing.pub").write_bytes(b"not base64!\n")
    out = cli("audit", "verify", "--state-dir", str(state))
    assert out.returncode == 2 and "signing.pub: not an Ed25519 public key" in out.stderr, out.stderr

    nowhere = tmp_path / "nowhere"
    for command in (["verify"], ["tail"], ["query"]):
        out = cli("audit", *command, "--state-dir", str(nowhere))
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith(f"mcphub: no state directory at {nowhere}: has a hub run with it?")
    nowhere.mkdir()
    out = cli("audit", "verify", "--state-dir", str(nowhere))
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"mcphub: no audit log at {nowhere / 'audit' / 'audit.db'}; has a hub run")


def _on_read_only_media(state: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """`mcphub audit COMMAND --state-dir STATE` with `state` mounted read-only (as a snapshot or a
    backup is), in a mount namespace of the command's own."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1)")
    mount = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" && shift && exec "$@"'
    unshare = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", mount, "-", str(state)]
    full = {k: v for k, v in os.environ.items() if not k.startswith("MCPHUB_")}
    out = subprocess.run(
        [*unshare, *hub_command("audit", *command, "--state-dir", str(state))],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=full,
    )
    if out.stderr.startswith(("unshare:", "mount:")):
        pytest.skip(f"cannot mount here: {out.stderr.strip()}")
    return out


def test_a_log_on_read_only_media_is_read(stopped_log: Path, tmp_path: Path) -> None:
    """SQLite cannot make the shared-memory index of a database in WAL mode there: a log that
    nobody can be writing is read as immutable."""
    state = tmp_path / "snapshot"
    shutil.copytree(stopped_log, state)
    out = _on_read_only_media(state, "verify", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["records"] > 100
    out = _on_read_only_media(state, "tail", "-n", "2")
    assert out.returncode == 0 and "event=stopped" in out.stdout, out.stderr
    out = _on_read_only_media(state, "query", "--tool", "echo", "--limit", "1")
    assert out.returncode == 0 and " echo " in out.stdout, out.stderr

    # A write-ahead log holding what the database does not: read as immutable, it would be left
    # out, so the reader is told to read a writable copy instead.
    killed = tmp_path / "killed"
    db = sqlite3.connect(state / "audit" / "audit.db", isolation_level=None)
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("INSERT INTO approvals (id, state, data) VALUES ('apr_x', 'pending', '{}')")
    shutil.copytree(state, killed, ignore=shutil.ignore_patterns("*-shm"))
    db.close()
    assert (killed / "audit" / "audit.db-wal").stat().st_size > 0
    out = _on_read_only_media(killed, "verify")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "audit.db-wal cannot be read on read-only media; copy the state directory" in out.stderr


def test_a_deleted_or_cut_log_is_reported_and_no_hub_writes_on_it(stopped_log: Path, tmp_path: Path) -> None:
    """Signed checkpoints outlive the records: verify reports the loss, and a hub refuses to
    start, since it would chain new records onto the cut and sign over it."""
    gone = tmp_path / "gone" / "state"
    shutil.copytree(stopped_log, gone)
    (gone / "audit" / "audit.db").unlink()
    out = cli("audit", "verify", "--state-dir", str(gone))
    assert out.returncode == 1 and "the audit database is gone" in out.stderr, out.stderr
    out = serve_refused(gone.parent, config())
    assert out.returncode == 3 and "Traceback" not in out.stderr, out.stderr
    assert "the audit log ends at record 0" in out.stderr and "records were deleted" in out.stderr

    cut = tampered_copy(stopped_log, tmp_path / "cut" / "state", "DELETE FROM records WHERE seq > 60")
    (cut / "audit" / "checkpoints.jsonl").unlink()  # the store's own checkpoints still say so
    out = serve_refused(cut.parent, config())
    assert out.returncode == 3 and "the audit log ends at record 60, but the store holds" in out.stderr
    # It named neither file ("move the old one and that checkpoint file aside").
    files = f"{cut / 'audit' / 'audit.db'} and {cut / 'audit' / 'checkpoints.jsonl'}"
    assert f"To start a new log on purpose, move {files} aside" in out.stderr, out.stderr

    # A last line cut short (the disk filled, the power went) is an append that never finished.
    shutil.copy(stopped_log / "audit" / "checkpoints.jsonl", cut / "audit" / "checkpoints.jsonl")
    with (cut / "audit" / "checkpoints.jsonl").open("ab") as f:
        f.write(b'{"seq": 99999, "hash": "ab')
    (cut / "audit" / "audit.db").unlink()
    shutil.copy(stopped_log / "audit" / "audit.db", cut / "audit" / "audit.db")
    out = cli("audit", "verify", "--state-dir", str(cut))
    assert out.returncode == 0, out.stderr
    # The next checkpoint starts a line of its own (appended to the fragment, it would make
    # a line that is no checkpoint, and no hub would start again).
    hub = start_hub(cut.parent, config=config(), http=False)
    called = cli("call", "echo", "--args", '{"text": "after the cut"}', "--hub", hub.grpc, "--token", TOKEN)
    assert called.returncode == 0, called.stderr
    assert hub.stop() == 0
    again = start_hub(cut.parent, config=config(), http=False)
    assert again.stop() == 0
    assert cli("audit", "verify", "--state-dir", str(cut)).returncode == 0

    (gone / "audit" / "checkpoints.jsonl").write_bytes(b"{not json\n")
    out = cli("audit", "verify", "--state-dir", str(gone))
    assert out.returncode == 1 and "checkpoints.jsonl, line 1: not a signed checkpoint" in out.stderr
    out = serve_refused(gone.parent, config())
    assert out.returncode == 3 and "line 1: not a signed checkpoint" in out.stderr, out.stderr


def _rewrite_from(state: Path, edited: int) -> None:
    """Change record `edited`'s principal and recompute every hash from it on: the chain holds again."""
    from mcp_remote.audit.records import record_hash

    db = sqlite3.connect(state / "audit" / "audit.db")
    prev = db.execute("SELECT hash FROM records WHERE seq = ?", (edited - 1,)).fetchone()[0]
    rows = db.execute("SELECT * FROM records WHERE seq >= ? ORDER BY seq", (edited,)).fetchall()
    for seq, ts_ms, call_id, kind, principal, tool, body, _, _ in rows:
        principal = "someone-else" if seq == edited else principal
        digest = record_hash(prev, seq, ts_ms, call_id, kind, principal, tool, bytes(body))
        update = "UPDATE records SET principal = ?, prev = ?, hash = ? WHERE seq = ?"
        db.execute(update, (principal, prev, digest, seq))
        prev = digest
    db.commit()
    db.close()


def _drop_checkpoints_after(state: Path, seq: int) -> None:
    """Delete the signed checkpoints after `seq` from both places: the database and the file."""
    db = sqlite3.connect(state / "audit" / "audit.db")
    db.execute("DELETE FROM checkpoints WHERE seq > ?", (seq,))
    db.commit()
    db.close()
    path = state / "audit" / "checkpoints.jsonl"
    kept = [line for line in path.read_text().splitlines() if json.loads(line)["seq"] <= seq]
    path.write_text("".join(f"{line}\n" for line in kept))


def test_a_log_rewritten_with_every_checkpoint_deleted_is_broken_and_no_hub_starts_on_it(
    stopped_log: Path, tmp_path: Path
) -> None:
    """The hashes are not keyed: only the signed checkpoints stop a rewrite, so deleting them must
    not make the log verify. signing.pub is written only once its key signed a checkpoint, and a
    clean stop signs one after its `stopped` record: both outlive the deletion."""
    state = tmp_path / "rewritten" / "state"
    shutil.copytree(stopped_log, state)
    _rewrite_from(state, 30)
    _drop_checkpoints_after(state, 0)
    out = cli("audit", "verify", "--state-dir", str(state))
    assert out.returncode == 1, out.stdout + out.stderr
    pub = state / "audit" / "signing.pub"
    assert "audit log BROKEN in records 1-" in out.stderr and f"{pub} exists (key " in out.stderr
    assert "records and no signed checkpoint" in out.stderr, out.stderr
    report = json.loads(cli("audit", "verify", "--state-dir", str(state), "--json").stdout)
    assert not report["ok"] and report["records"] > 100 and report["first_bad_record"] == 1
    refused = serve_refused(state.parent, config())
    assert refused.returncode == 3 and "Traceback" not in refused.stderr, refused.stderr
    assert "no signed checkpoint" in refused.stderr and "will not sign over it" in refused.stderr

    # signing.pub deleted too: verify says the `stopped` record is not covered (a note: a sound
    # log whose store failed as its hub stopped looks the same), and a copy of the checkpoints
    # kept elsewhere tells.
    pub.rename(state / "audit" / "verify.pub")  # kept elsewhere, for verify
    kept_key = ["--public-key", str(state / "audit" / "verify.pub")]
    out = cli("audit", "verify", "--state-dir", str(state), *kept_key)
    assert "is a `stopped` record and the log has none" in out.stdout + out.stderr, out.stdout + out.stderr


def test_records_past_a_stop_that_no_checkpoint_covers_are_noted(stopped_log: Path, tmp_path: Path) -> None:
    """The checkpoints after an earlier one deleted, and the records after it rewritten: the
    `stopped` record at the end is no longer covered. verify says so (not as a failure: a stop
    whose store failed leaves the same), and a copy of the checkpoints kept elsewhere finds it."""
    state = tmp_path / "unsigned-tail" / "state"
    shutil.copytree(stopped_log, state)
    elsewhere = tmp_path / "checkpoints-elsewhere.jsonl"
    shutil.copyfile(state / "audit" / "checkpoints.jsonl", elsewhere)
    lines = (state / "audit" / "checkpoints.jsonl").read_text().splitlines()
    signed = sorted({json.loads(line)["seq"] for line in lines})
    kept = signed[-3]
    _rewrite_from(state, kept + 1)
    _drop_checkpoints_after(state, kept)
    out = cli("audit", "verify", "--state-dir", str(state))
    assert f"the last signed checkpoint is of record {kept}" in out.stdout + out.stderr, (
        out.stdout + out.stderr
    )
    out = cli("audit", "verify", "--state-dir", str(state), "--checkpoints", str(elsewhere))
    assert out.returncode == 1 and "audit log BROKEN" in out.stderr, out.stdout + out.stderr


def test_a_log_cut_back_to_a_checkpoint_is_found_against_a_copy_kept_elsewhere(
    stopped_log: Path, tmp_path: Path
) -> None:
    """Cut back to an earlier checkpoint, with the later ones deleted, a log looks like one whose hub
    was killed there: only checkpoints kept outside the state directory tell (`--checkpoints`)."""
    state = tmp_path / "cut-back" / "state"
    shutil.copytree(stopped_log, state)
    elsewhere = tmp_path / "elsewhere.jsonl"
    shutil.copy(state / "audit" / "checkpoints.jsonl", elsewhere)
    signed = sorted({json.loads(line)["seq"] for line in elsewhere.read_text().splitlines()})
    kept = signed[-3]
    db = sqlite3.connect(state / "audit" / "audit.db")
    db.execute("DELETE FROM records WHERE seq > ?", (kept,))
    db.commit()
    db.close()
    _drop_checkpoints_after(state, kept)
    assert cli("audit", "verify", "--state-dir", str(state)).returncode == 0
    out = cli("audit", "verify", "--state-dir", str(state), "--checkpoints", str(elsewhere))
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"audit log BROKEN at record {kept + 1}: the log was cut: a signed checkpoint covers" in out.stderr
    untouched = cli("audit", "verify", "--state-dir", str(stopped_log), "--checkpoints", str(elsewhere))
    assert untouched.returncode == 0, untouched.stderr
    missing = cli("audit", "verify", "--state-dir", str(state), "--checkpoints", str(tmp_path / "none"))
    assert missing.returncode == 1 and "no such file" in missing.stderr


async def test_a_hub_killed_before_its_first_checkpoint_leaves_a_log_that_verifies(tmp_path: Path) -> None:
    """The legitimate states those checks must not refuse: a hub killed (no `stopped` record, no
    last checkpoint) as soon as it was ready, and started again."""
    hub = start_hub(tmp_path, config=config(audit={"checkpoint_every": 1000}), http=False)
    hub.kill()
    again = start_hub(tmp_path, config=config(audit={"checkpoint_every": 1000}), http=False)
    client = HubClient(again.grpc)
    await call_echo(client, "after the kill")
    await client.close()
    again.kill()
    third = start_hub(tmp_path, config=config(audit={"checkpoint_every": 1000}), http=False)
    assert third.stop() == 0
    out = cli("audit", "verify", "--state-dir", str(hub.state_dir))
    assert out.returncode == 0, out.stdout + out.stderr


def test_checkpoints_of_a_key_not_given_are_unknown_and_the_chain_is_verified_anyway(
    stopped_log: Path, tmp_path: Path
) -> None:
    """A replica's key not given is not a broken log: verify checks every record all the same, gives
    the real counts and head, and names the key as unknown (exit 1: not verified)."""

    other = tmp_path / "other.pub"
    other.write_bytes(base64.b64encode(load_private_key(new_private_key()).public_bytes()) + b"\n")
    full = json.loads(cli("audit", "verify", "--state-dir", str(stopped_log), "--json").stdout)
    args = ["audit", "verify", "--state-dir", str(stopped_log), "--public-key", str(other)]
    out = cli(*args, "--json")
    assert out.returncode == 1, out.stdout + out.stderr
    report = json.loads(out.stdout)
    lines = (stopped_log / "audit" / "checkpoints.jsonl").read_text().splitlines()
    signed_by = {json.loads(line)["key_id"] for line in lines}
    assert report["records"] == full["records"] and report["head_hash"] == full["head_hash"]
    assert report["unknown_keys"] == sorted(signed_by) and report["first_bad_record"] is None
    assert "signed by an unknown key" in report["problem"]
    text = cli(*args)
    assert text.returncode == 1 and "audit log NOT VERIFIED: " in text.stderr, text.stderr
    assert "BROKEN" not in text.stderr and "chain holds" in text.stderr
    # An edited record is still named, whatever the keys.
    edited = tampered_copy(stopped_log, tmp_path / "edited", "UPDATE records SET tool = 'x' WHERE seq = 7")
    out = cli("audit", "verify", "--state-dir", str(edited), "--public-key", str(other))
    assert out.returncode == 1 and "audit log BROKEN at record 7" in out.stderr, out.stderr


def test_a_lost_signing_key_stops_the_hub_before_it_signs_on_with_a_new_one(
    stopped_log: Path, tmp_path: Path
) -> None:
    """A new key would leave every earlier checkpoint "signed by an unknown key", and writing its
    public half over signing.pub would lose the only copy of the old one."""
    state = tmp_path / "lost" / "state"
    shutil.copytree(stopped_log, state)
    audit = state / "audit"
    old_pub = (audit / "signing.pub").read_bytes()
    old_id = hashlib.sha256(base64.b64decode(old_pub)).hexdigest()[:16]
    (audit / "signing.key").unlink()
    out = serve_refused(state.parent, config())
    assert out.returncode == 3 and "Traceback" not in out.stderr, out.stderr
    (line,) = out.stderr.splitlines()
    assert f"{audit / 'signing.key'} is missing, but {audit / 'signing.pub'} says" in line
    assert f"signed by key {old_id}: restore signing.key from a backup, or move signing.pub aside" in line
    assert (audit / "signing.pub").read_bytes() == old_pub and not (audit / "signing.key").exists()

    # What the message says to do: a new key from now on; verify reads both keys by itself.
    aside = audit / f"signing.pub.{old_id}"
    assert f"mv {audit / 'signing.pub'} {aside}" in line
    (audit / "signing.pub").rename(aside)
    hub = start_hub(state.parent, config=config(), http=False)
    called = cli("call", "echo", "--args", '{"text": "new key"}', "--hub", hub.grpc, "--token", TOKEN)
    assert called.returncode == 0, called.stderr
    assert hub.stop() == 0
    assert "`mcphub audit verify` reads the old key there too" in line
    out = cli("audit", "verify", "--state-dir", str(state))
    assert out.returncode == 0, out.stdout + out.stderr
    both = ["--public-key", str(aside), "--public-key", str(audit / "signing.pub")]
    assert cli("audit", "verify", "--state-dir", str(state), *both).returncode == 0
    only_new = cli("audit", "verify", "--state-dir", str(state), "--public-key", str(audit / "signing.pub"))
    assert only_new.returncode == 1 and "unknown key" in only_new.stdout + only_new.stderr
    assert "give its public key: --public-key FILE" in only_new.stdout + only_new.stderr

    # A key that is not the one signing.pub names is refused too, and signing.pub kept.
    (audit / "signing.key").write_text(base64.b64encode(os.urandom(32)).decode())
    (audit / "signing.key").chmod(0o600)
    new_pub = (audit / "signing.pub").read_bytes()
    out = serve_refused(state.parent, config())
    assert out.returncode == 3 and "restore the signing.key of" in out.stderr, out.stderr
    assert (audit / "signing.pub").read_bytes() == new_pub


def _damage_a_page_of_old_records(db_path: Path) -> None:
    """Random bytes over the first leaf page of the records table: records a start used not to
    read (the head, the checkpoints and the approvals lie elsewhere), as a disk's bad sector."""
    db = sqlite3.connect(db_path)
    size = db.execute("PRAGMA page_size").fetchone()[0]
    leaves = [
        row[0]
        for row in db.execute(
            "SELECT pageno FROM dbstat WHERE name = 'records' AND pagetype = 'leaf' ORDER BY pageno"
        )
    ]
    db.close()
    assert len(leaves) > 1, leaves
    with db_path.open("r+b") as f:
        f.seek((leaves[0] - 1) * size)
        f.write(os.urandom(size))


@pytest.mark.parametrize("damage", ["page", "checkpointed-record"])
def test_a_hub_refuses_a_database_verify_calls_broken(stopped_log: Path, tmp_path: Path, damage: str) -> None:
    """A damaged page (SQLite: "database disk image is malformed") or a checkpointed record that
    no longer holds its hash: the hub started and wrote on, in silence."""
    state = tmp_path / damage / "state"
    shutil.copytree(stopped_log, state)
    db = state / "audit" / "audit.db"
    if damage == "page":
        _damage_a_page_of_old_records(db)
    else:
        lines = (state / "audit" / "checkpoints.jsonl").read_text().splitlines()
        last = max(json.loads(line)["seq"] for line in lines)
        with contextlib.closing(sqlite3.connect(db)) as conn, conn:
            conn.execute("UPDATE records SET hash = ? WHERE seq = ?", ("0" * 64, last))
    assert cli("audit", "verify", "--state-dir", str(state)).returncode == 1
    before = db.read_bytes()
    out = serve_refused(state.parent, config())
    assert out.returncode == 3 and "Traceback" not in out.stderr, out.stderr
    (line,) = out.stderr.splitlines()
    assert line.startswith(f"mcphub: {db}: the audit database is damaged ("), line
    assert "Restore the state directory's audit/ from a backup, or move it aside" in line
    assert db.read_bytes() == before


def _flip_last_signature(path: Path) -> None:
    data = path.read_bytes()
    at = data.rindex(b'"signature":"') + len(b'"signature":"')
    path.write_bytes(data[:at] + (b"B" if data[at : at + 1] != b"B" else b"C") + data[at + 1 :])


@pytest.mark.parametrize("where", ["file", "store"])
def test_a_hub_refuses_a_forged_last_checkpoint(stopped_log: Path, tmp_path: Path, where: str) -> None:
    state = tmp_path / where / "state"
    shutil.copytree(stopped_log, state)
    audit = state / "audit"
    if where == "file":
        _flip_last_signature(audit / "checkpoints.jsonl")
        named = f"{audit / 'checkpoints.jsonl'}: the last checkpoint (record "
    else:
        with contextlib.closing(sqlite3.connect(audit / "audit.db")) as conn, conn:
            conn.execute(
                "UPDATE checkpoints SET signature = ? WHERE seq = (SELECT max(seq) FROM checkpoints)",
                (base64.b64encode(b"x" * 64).decode(),),
            )
        named = f"{audit / 'audit.db'} (its checkpoints table): the last checkpoint (record "
    verified = cli("audit", "verify", "--state-dir", str(state))
    assert verified.returncode == 1 and "invalid signature" in verified.stderr, verified.stderr
    out = serve_refused(state.parent, config())
    assert out.returncode == 3 and "Traceback" not in out.stderr, out.stderr
    (line,) = out.stderr.splitlines()
    assert line.startswith(f"mcphub: {named}") and "has an invalid signature for key" in line, line


def test_a_replaced_signing_key_without_its_public_key_is_refused_naming_both(
    stopped_log: Path, tmp_path: Path
) -> None:
    """signing.key replaced and signing.pub deleted: the hub wrote a signing.pub of the new key and
    signed on, and verify found every checkpoint signed by an unknown key."""
    state = tmp_path / "replaced" / "state"
    shutil.copytree(stopped_log, state)
    audit = state / "audit"
    old_pub = (audit / "signing.pub").read_bytes()
    old_id = hashlib.sha256(base64.b64decode(old_pub)).hexdigest()[:16]
    (audit / "signing.pub").unlink()
    (audit / "signing.key").write_text(base64.b64encode(os.urandom(32)).decode())
    out = serve_refused(state.parent, config())
    assert out.returncode == 3 and "Traceback" not in out.stderr, out.stderr
    (line,) = out.stderr.splitlines()
    assert f"is signed by key {old_id}, but {audit / 'signing.key'} is key " in line, line
    assert f"keep the public key of {old_id} beside it as {audit / f'signing.pub.{old_id}'}" in line
    assert not (audit / "signing.pub").exists(), "no public key of a key that signed nothing"

    # What the message says to do: the new key signs from now on, and verify reads both.
    (audit / f"signing.pub.{old_id}").write_bytes(old_pub)
    hub = start_hub(state.parent, config=config(), http=False)
    assert hub.stop() == 0
    out = cli("audit", "verify", "--state-dir", str(state))
    assert out.returncode == 0, out.stdout + out.stderr


async def test_an_unreadable_approval_is_set_aside_and_a_start_that_fails_leaves_no_started_record(
    stopped_log: Path, tmp_path: Path
) -> None:
    """One approvals row that is not JSON stopped every start with a traceback (exit 1), and each
    attempt left a `hub started` record with no `stopped` one. The row is set aside (working
    state, not the record: it lets no call run), and a start refused before it serves leaves none."""
    state = tmp_path / "approvals" / "state"
    shutil.copytree(stopped_log, state)
    db = state / "audit" / "audit.db"
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(
            "INSERT INTO approvals (id, state, data) VALUES ('apr_unreadable', 'pending', '{not json')"
        )
        # JSON, but a time that is no number: it killed the expiry sweep, and the hub's stop (exit 1).
        wrong_type = {
            "id": "apr_wrongtype", "call_id": "c1", "principal": "agent", "tool": "echo",
            "args_sha256": "0" * 64, "arguments_json": "{}", "reason": "r", "rule": "r", "approvers": [],
            "state": "approved",
            "created_ms": 1, "expires_ms": "tomorrow", "instance": f"{os.uname().nodename}:{state}",
        }  # fmt: skip
        conn.execute(
            "INSERT INTO approvals (id, state, data) VALUES ('apr_wrongtype', 'approved', ?)",
            (json.dumps(wrong_type),),
        )
    before = len(await all_records(state))
    failing = {"name": FAULTY_PACK, "options": {"events": str(tmp_path / "events"), "fail": "start"}}
    refused = serve_refused(state.parent, config(packs=["diagnostics", failing]))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    hub = start_hub(state.parent, config=config(), http=False)
    listed = cli("approvals", "list", "--all", "--hub", hub.grpc, "--token", APPROVER)
    assert listed.returncode == 0 and "apr_unreadable" not in listed.stdout, listed.stderr
    assert hub.stop() == 0
    warned = refused.stderr  # the first start to open the store sets it aside
    assert f"{db}: approval 'apr_unreadable' cannot be read (" in warned
    assert "set aside as state 'unreadable', so that no hub uses or lists it" in warned
    assert "apr_unreadable" not in hub.log()
    assert "approval 'apr_wrongtype' cannot be read (its expires_ms is str, not int)" in warned
    with contextlib.closing(sqlite3.connect(db)) as conn:
        states = dict(conn.execute("SELECT id, state FROM approvals WHERE id LIKE 'apr_%'").fetchall())
    assert states == {"apr_unreadable": "unreadable", "apr_wrongtype": "unreadable"}, states
    added = [r.body_json()["event"] for r in (await all_records(state))[before:] if r.kind == "hub"]
    assert added == ["started", "stopped"], added
    assert cli("audit", "verify", "--state-dir", str(state)).returncode == 0


@pytest.mark.parametrize("name", ["audit/signing.key", "operator.token"])
def test_a_hub_refuses_a_secret_other_users_may_read(stopped_log: Path, tmp_path: Path, name: str) -> None:
    """A key or token restored from a backup as 0644 (or opened up by a chmod) may have been read
    by anyone on the host: the hub says so and how to mend it instead of signing on with it."""
    state = tmp_path / "open" / "state"
    shutil.copytree(stopped_log, state)
    (state / name).chmod(0o640)
    out = serve_refused(state.parent, config())
    assert out.returncode == 3 and "Traceback" not in out.stderr, out.stderr  # the state dir's, not config
    assert f"{state / name}: readable or writable by other users (mode 0640)" in out.stderr
    assert f"chmod 600 {state / name}" in out.stderr
    (state / name).chmod(0o600)
    hub = start_hub(state.parent, config=config(), http=False)
    assert hub.stop() == 0


@pytest.mark.parametrize("damage", ["garbage", "directory"])
def test_a_hub_refuses_an_audit_database_it_cannot_use_naming_it(tmp_path: Path, damage: str) -> None:
    db = tmp_path / "state" / "audit" / "audit.db"
    db.parent.mkdir(parents=True)
    if damage == "garbage":
        db.write_bytes(b"this is not an SQLite database" * 200)
    else:
        db.mkdir()
    out = serve_refused(tmp_path, config())
    assert out.returncode == 3 and "Traceback" not in out.stderr, out.stderr
    assert f"{db}: the audit database cannot be used" in out.stderr


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
async def test_a_second_hub_on_the_same_state_directory_refuses_to_start(tmp_path: Path, store: str) -> None:
    """Whatever the audit store. On PostgreSQL (whose store has no lock in the state directory,
    as SQLite's has) the second hub started: it expired the first one's waiting approval as
    that of a hub that had restarted, recorded `hub started` and `hub stopped` under its
    instance name, and removed its hub.json when it stopped."""
    with contextlib.ExitStack() as stack:
        shared, env = config(), {}
        if store == "postgres":
            pg = stack.enter_context(running_postgres())
            dsn_file = tmp_path / "audit.dsn"
            dsn_file.write_text(pg.create_database("mcphub_one_dir") + "\n")
            shared = config(audit={"store": "postgres", "dsn_file": str(dsn_file)})
        hub = start_hub(tmp_path, config=shared, env=env, http=False)
        client = HubClient(hub.grpc)
        try:
            call = start_call(client, TOKEN, "delete_thing", {"name": "kept"})
            approval_id = await call.approval_id()
            out = await asyncio.to_thread(serve_refused, tmp_path, shared, env=env)
            assert (out.returncode, out.stderr) == (
                3,
                f"mcphub: another hub (pid {hub.process.pid}) is running on the state directory "
                f"{hub.state_dir}: each hub needs a state directory of its own (--state-dir, or "
                "state_dir in its config), also when hubs share a PostgreSQL audit store\n",
            )
            # The first hub goes on as it was: its waiting call, its hub.json.
            await decide(hub.grpc, APPROVER, approval_id, True, "still waiting")
            assert text_of(await call.result()) == "deleted kept"
            assert json.loads((hub.state_dir / "hub.json").read_text())["pid"] == hub.process.pid
        finally:
            await client.close()
            assert hub.stop() == 0
        second = start_hub(tmp_path, config=shared, env=env, http=False)  # free again once it stopped
        assert second.stop() == 0
        assert "did not stop cleanly" not in second.log()


OLD_HUB = """
import fcntl, json, os, pathlib, sys, time
import mcp_remote.cli
state_dir = pathlib.Path(sys.argv[2])
(state_dir / "hub.json").write_text(json.dumps({"grpc": "127.0.0.1:1", "mcp": None, "pid": os.getpid()}))
if sys.argv[3] == "sqlite":
    (state_dir / "audit").mkdir(mode=0o700)
    journal = os.open(state_dir / "audit" / "audit.journal", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(journal, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("ready", flush=True)
time.sleep(120)
"""
"""A hub of a version before `hub.lock` (e255aed, 2026-11-22), as far as a start can see it: a
live process whose command line is `... mcp_remote ... serve STATE_DIR`, named by the
directory's `hub.json` (without the start time newer hubs record), holding no `hub.lock`; with
SQLite, holding its audit journal's lock as that hub did."""


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
async def test_a_hub_refuses_a_state_directory_an_older_hub_without_the_lock_still_runs_on(
    tmp_path: Path, store: str
) -> None:
    """An operator upgrading in place started the new hub while the old one still ran: with
    PostgreSQL it started, recorded `unclean_stop_of_pid` for the live pid, took over hub.json
    and expired the old hub's waiting approvals. With SQLite the journal's lock refused it, in
    words that named no pid, and its hub.lock went on naming the refused process."""
    with contextlib.ExitStack() as stack:
        shared = config()
        if store == "postgres":
            pg = stack.enter_context(running_postgres())
            dsn_file = tmp_path / "audit.dsn"
            dsn_file.write_text(pg.create_database("mcphub_old_hub") + "\n")
            shared = config(audit={"store": "postgres", "dsn_file": str(dsn_file)})
        state_dir = tmp_path / "state"
        state_dir.mkdir(mode=0o700)
        old = subprocess.Popen(  # noqa: ASYNC220 - a process to stand for the old hub, no more
            [sys.executable, "-c", OLD_HUB, "serve", str(state_dir), store], stdout=subprocess.PIPE, cwd=REPO
        )
        assert old.stdout is not None
        stack.callback(old.stdout.close)
        stack.callback(old.wait)
        stack.callback(old.kill)
        assert old.stdout.readline() == b"ready\n"
        out = await asyncio.to_thread(serve_refused, tmp_path, shared)
        assert (out.returncode, out.stderr) == (
            3,
            f"mcphub: another hub (pid {old.pid}) is running on the state directory {state_dir}: each "
            "hub needs a state directory of its own (--state-dir, or state_dir in its config), also when "
            "hubs share a PostgreSQL audit store\n",
        )
        assert json.loads((state_dir / "hub.json").read_text())["pid"] == old.pid
        assert (state_dir / "hub.lock").read_text() == ""  # names no process that is not running
        old.kill()
        old.wait()
        # Gone, the old hub is one that did not stop cleanly, as before.
        hub = start_hub(tmp_path, config=shared, http=False)
        assert hub.stop() == 0
        assert f"the hub before this one (pid {old.pid}) did not stop cleanly" in hub.log()


async def test_hubs_share_one_chain_and_decide_each_others_approvals_through_postgres(tmp_path: Path) -> None:
    with running_postgres() as pg:
        dsn = pg.create_database("mcphub_audit")
        env = {"AUDIT_DSN": dsn}
        shared = config(
            audit={"store": "postgres", "dsn_env": "AUDIT_DSN", "checkpoint_every": 10}, instance="replica-a"
        )
        a = start_hub(tmp_path / "a", config=shared, env=env, http=False)
        b = start_hub(tmp_path / "b", config=shared | {"instance": "replica-b"}, env=env, http=False)
        try:
            ca, cb = HubClient(a.grpc), HubClient(b.grpc)
            await asyncio.gather(*(call_echo(ca if i % 2 else cb, f"m{i}") for i in range(40)))
            call = start_call(ca, TOKEN, "delete_thing", {"name": "shared"})
            approval_id = await call.approval_id()
            await decide(b.grpc, APPROVER, approval_id, True, "decided on the other replica")
            assert text_of(await call.result()) == "deleted shared"
            await ca.close()
            await cb.close()
        finally:
            a.stop()
            b.stop()
        (tmp_path / "hub.yaml").write_text(json.dumps(shared))
        keys = [
            "--public-key",
            str(a.state_dir / "audit" / "signing.pub"),
            "--public-key",
            str(b.state_dir / "audit" / "signing.pub"),
        ]
        out = cli(
            "audit",
            "verify",
            "--config",
            str(tmp_path / "hub.yaml"),
            "--state-dir",
            str(a.state_dir),
            *keys,
            "--json",
            env=env,
        )
        report = json.loads(out.stdout)
        assert out.returncode == 0 and report["ok"], out.stdout + out.stderr
        assert report["records"] >= 4 * 41 and report["checkpoints"] >= 2
        subprocess.run(  # noqa: ASYNC221 - the hubs are stopped; nothing else runs on the loop
            ["psql", dsn, "-c", "UPDATE mcphub_records SET tool = 'x' WHERE seq = 7"],
            check=True,
            capture_output=True,
        )
        broken = cli(
            "audit",
            "verify",
            "--config",
            str(tmp_path / "hub.yaml"),
            "--state-dir",
            str(a.state_dir),
            *keys,
            env=env,
        )
        assert broken.returncode == 1 and "BROKEN at record 7" in broken.stderr
        lost = cli("audit", "verify", "--state-dir", str(a.state_dir))  # no --config
        assert lost.returncode == 2, lost.stderr
        assert "keeps its audit log in PostgreSQL; give its config with --config" in lost.stderr

        # Each log's checkpoints are kept apart in the state directory: a hub moved to another
        # log (SQLite, or a fresh database) starts, and one moved back checks its own.
        assert list((a.state_dir / "audit").glob("checkpoints-postgres-*.jsonl"))
        on_sqlite = start_hub(a.state_dir.parent, config=config(), http=False)
        assert on_sqlite.stop() == 0
        env["AUDIT_DSN"] = pg.create_database("mcphub_audit_2")
        fresh = start_hub(a.state_dir.parent, config=shared, env=env, http=False)
        assert fresh.stop() == 0


async def _watch(target: str, seen: list[tuple[str, str]]) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = apb_grpc.ApprovalsStub(channel)  # type: ignore[no-untyped-call]
        metadata = (("authorization", f"Bearer {APPROVER}"),)
        async for a in stub.WatchApprovals(apb.WatchApprovalsRequest(), metadata=metadata):
            seen.append((a.id, a.state))


async def test_a_watcher_on_either_hub_sees_every_hub_s_approvals_through_postgres(tmp_path: Path) -> None:
    with running_postgres() as pg:
        env = {"AUDIT_DSN": pg.create_database("mcphub_watch")}
        shared = config(audit={"store": "postgres", "dsn_env": "AUDIT_DSN"}, instance="replica-a")
        a = start_hub(tmp_path / "a", config=shared, env=env, http=False)
        b = start_hub(tmp_path / "b", config=shared | {"instance": "replica-b"}, env=env, http=False)
        seen: dict[str, list[tuple[str, str]]] = {"a": [], "b": []}
        watchers = [asyncio.ensure_future(_watch(h.grpc, seen[n])) for n, h in (("a", a), ("b", b))]
        client = HubClient(a.grpc)
        try:
            # Both watchers are connected once each has seen a first approval (listed or new).
            marker = start_call(client, TOKEN, "delete_thing", {"name": "marker"})
            marker_id = await marker.approval_id()
            async with asyncio.timeout(20):
                while any((marker_id, "pending") not in seen[n] for n in seen):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            await decide(a.grpc, APPROVER, marker_id, False, "only a marker")
            await marker.result()
            call = start_call(client, TOKEN, "delete_thing", {"name": "watched"})
            approval_id = await call.approval_id()
            await decide(b.grpc, APPROVER, approval_id, True, "decided on the other replica")
            assert text_of(await call.result()) == "deleted watched"
            expected = [(approval_id, s) for s in ("pending", "approved", "used")]
            async with asyncio.timeout(20):
                while any([x for x in seen[n] if x[0] == approval_id] != expected for n in seen):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        finally:
            for w in watchers:
                w.cancel()
            await client.close()
            a.stop()
            b.stop()


def _journal_flags(pid: int) -> int:
    """The open flags of the hub's audit journal, from /proc."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}").endswith("audit.journal"):
                fields = Path(f"/proc/{pid}/fdinfo/{fd}").read_text().split()
                return int(fields[fields.index("flags:") + 1], 8)
    raise AssertionError("the hub has no audit journal open")


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "default"])
async def test_audit_sync_writes_the_journal_through_to_the_disk(tmp_path: Path, sync: bool) -> None:
    hub = start_hub(tmp_path, config=config(audit={"checkpoint_every": 10, "sync": sync}), http=False)
    client = HubClient(hub.grpc)
    try:
        assert not (await call_echo(client, "synced")).is_error
        assert bool(_journal_flags(hub.process.pid) & os.O_DSYNC) is sync
    finally:
        await client.close()
        assert hub.stop() == 0
    out = cli("audit", "verify", "--state-dir", str(hub.state_dir))
    assert out.returncode == 0, out.stderr
    assert [r.kind for r in await all_records(hub.state_dir) if r.tool == "echo"][-1] == "finished"
    store = SQLiteStore(tmp_path / "check" / "audit.db", sync=sync)
    await store.open()
    try:
        assert store.db.execute("PRAGMA synchronous").fetchone()[0] == (2 if sync else 1)  # FULL / NORMAL
    finally:
        await store.close()


@pytest.mark.parametrize("depth", [253, 300, 1000])
async def test_arguments_too_deep_to_record_are_refused_and_recorded_without_them(
    tmp_path: Path, depth: int
) -> None:
    """An unauthenticated call with arguments nested ~254+ levels made the record unencodable;
    the writer took that for a failing store, retried it for ever, refused every later call
    and could not shut down."""
    hub = start_hub(tmp_path, config=config(), http=False)
    client = HubClient(hub.grpc)
    try:
        deep = b'{"text":"x","d":' + b"[" * depth + b"]" * depth + b"}"
        for token in ("wrong-token-0123456789", TOKEN):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.call_tool(token, pb.CallToolRequest(name="echo", arguments_json=deep))
            expected = grpc.StatusCode.UNAUTHENTICATED if token != TOKEN else grpc.StatusCode.INVALID_ARGUMENT
            assert refused.value.code() == expected, refused.value
        assert "nested more than 64 levels" in (refused.value.details() or "")
        assert (await call_echo(client, "still serving")).content[0].text.text == "still serving"
    finally:
        await client.close()
        assert hub.stop() == 0  # it used to hang here
    records = await all_records(hub.state_dir)
    requested = [r.body_json() for r in records if r.kind == "requested"]
    assert len(requested) == 3
    for body in requested[:2]:  # both refused calls are on record, without their arguments
        assert "arguments" not in body
    # Past 1 KiB, an unauthenticated caller's arguments are not even parsed: size and digest.
    unauthenticated, agents = requested[0], requested[1]
    if len(deep) > 1024:
        assert unauthenticated["arguments_omitted"]["bytes"] == len(deep)
    else:
        assert "cannot be encoded" in unauthenticated["arguments_unrecorded"]
    assert "cannot be encoded" in agents["arguments_unrecorded"]
    assert cli("audit", "verify", "--state-dir", str(hub.state_dir)).returncode == 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _made_and_closed(store: PostgresStore) -> None:
    await store.open()
    await store.close()


def test_an_audit_database_that_cannot_be_used_is_one_line_without_its_password(tmp_path: Path) -> None:
    """`audit verify` of a PostgreSQL log whose hub never signed in this state directory said "no
    audit log at .../audit.db" (a SQLite file nobody meant) instead of what was wrong with the DSN;
    it passed only on a machine whose default state directory held keys."""
    password = "AuditPwSecret_7f3k9"
    shared = config(audit={"store": "postgres", "dsn_env": "AUDIT_DSN"}, state_dir=str(tmp_path / "state"))
    (tmp_path / "hub.yaml").write_text(json.dumps(shared))
    with running_postgres() as pg:
        dsns = {
            # psycopg quotes a DSN it cannot parse, password and all
            f"postgresql://audituser:{password}@[127.0.0.1:{pg.port}/audit": "cannot be parsed",
            f"postgresql://postgres:{password}@127.0.0.1:{_free_port()}/audit": "Connection refused",
            f"postgresql://postgres:{password}@127.0.0.1:{pg.port}/missing": '"missing" does not exist',
            f"postgresql://postgres:{password}@127.0.0.1:{pg.port}/postgres?sslmode=bogus": "sslmode",
        }
        for dsn, why in dsns.items():
            env = {"AUDIT_DSN": dsn}
            out = serve_refused(tmp_path / "serve", shared, env=env)
            verify = cli("audit", "verify", "--config", str(tmp_path / "hub.yaml"), env=env)
            query = cli("audit", "query", "--config", str(tmp_path / "hub.yaml"), env=env)
            for run in (out, verify, query):
                assert run.returncode == 2, (dsn, run.stderr)
                lines = run.stderr.strip().splitlines()
                assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
                assert lines[0].startswith("mcphub: the PostgreSQL audit store") and why in lines[0]
                assert password not in run.stderr + run.stdout
        # The store answers (its tables made as a hub makes them): what is missing is the key.
        env = {"AUDIT_DSN": pg.create_database("keyless")}
        asyncio.run(_made_and_closed(PostgresStore(env["AUDIT_DSN"])))
        verify = cli("audit", "verify", "--config", str(tmp_path / "hub.yaml"), env=env)
        key = tmp_path / "state" / "audit" / "signing.pub"
        assert verify.returncode == 2 and verify.stderr == (
            f"mcphub: no public key at {key} (pass --public-key FILE, or the hub's --state-dir)\n"
        ), verify.stderr


async def test_a_hub_runs_as_a_role_that_does_not_own_the_tables_and_audit_reads_with_select_only(
    tmp_path: Path,
) -> None:
    """Each start ran ALTER TABLE: a role granted only SELECT, INSERT, UPDATE and DELETE could not
    run a hub ("must be owner of table"). `mcphub audit` made the tables it did not find: on a
    mistyped database it said "audit log OK: 0 records", exit 0."""
    with running_postgres() as pg:
        dsn = pg.create_database("mcphub_roles")
        shared = config(audit={"store": "postgres", "dsn_env": "AUDIT_DSN"})
        (tmp_path / "hub.yaml").write_text(json.dumps(shared))
        first = start_hub(tmp_path / "owner", config=shared, env={"AUDIT_DSN": dsn}, http=False)
        assert first.stop() == 0
        grants = "SELECT, INSERT, UPDATE, DELETE"
        for role, privileges in (("mcphub_hub", grants), ("mcphub_reader", "SELECT")):
            pg.psql("-d", "mcphub_roles", "-c", f"CREATE ROLE {role} LOGIN")
            pg.psql(
                "-d", "mcphub_roles", "-c", f"GRANT {privileges} ON ALL TABLES IN SCHEMA public TO {role}"
            )

        env = {"AUDIT_DSN": dsn.replace("user=postgres", "user=mcphub_hub")}
        hub = start_hub(tmp_path / "hub", config=shared, env=env, http=False)
        client = HubClient(hub.grpc)
        try:
            assert not (await call_echo(client, "as mcphub_hub")).is_error
            call = start_call(client, TOKEN, "delete_thing", {"name": "granted"})
            await decide(hub.grpc, APPROVER, await call.approval_id(), True, "a non-owner decides too")
            assert text_of(await call.result()) == "deleted granted"
        finally:
            await client.close()
            assert hub.stop() == 0

        reader = {"AUDIT_DSN": dsn.replace("user=postgres", "user=mcphub_reader")}
        keys = [f"--public-key={state}/audit/signing.pub" for state in (first.state_dir, hub.state_dir)]
        where = ("--config", str(tmp_path / "hub.yaml"), "--state-dir", str(hub.state_dir))
        verified = cli("audit", "verify", *where, *keys, env=reader)
        assert verified.returncode == 0 and "audit log OK" in verified.stdout, verified.stderr
        queried = cli("audit", "query", *where, "--tool", "echo", "--json", env=reader)
        assert queried.returncode == 0 and "as mcphub_hub" in queried.stdout, queried.stderr

        pg.psql("-c", "CREATE ROLE mcphub_nobody LOGIN")
        nobody = {"AUDIT_DSN": dsn.replace("user=postgres", "user=mcphub_nobody")}
        refused = cli("audit", "verify", *where, *keys, env=nobody)
        assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr
        assert "cannot be read by role mcphub_nobody: it may not SELECT from mcphub_records" in refused.stderr

        mistyped = {"AUDIT_DSN": pg.create_database("mcphub_rolse")}
        for action in ("verify", "query", "tail"):
            out = cli("audit", action, *where, *(keys if action == "verify" else []), env=mistyped)
            assert out.returncode == 2 and out.stdout == "", (action, out.stdout, out.stderr)
            assert (
                out.stderr.startswith(
                    f"mcphub: no mcphub audit log in database 127.0.0.1:{pg.port}/mcphub_rolse: "
                )
                and len(out.stderr.splitlines()) == 1
            ), (action, out.stderr)
        tables = "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'mcphub%'"
        assert pg.psql("-d", "mcphub_rolse", "-At", "-c", tables).strip() == "0"


async def test_the_audit_dsn_password_is_redacted_like_any_other_secret(tmp_path: Path) -> None:
    password = "AuditPwSecret_7f3k9"
    with running_postgres() as pg:
        pg.create_database("mcphub_audit")
        # trust authentication: the server never asks for the password, the hub holds it all the same
        env = {"AUDIT_DSN": f"postgresql://postgres:{password}@127.0.0.1:{pg.port}/mcphub_audit"}
        shared = config(audit={"store": "postgres", "dsn_env": "AUDIT_DSN"})
        hub = start_hub(tmp_path, config=shared, env=env, http=False)
        try:
            client = HubClient(hub.grpc)
            result = await call_echo(client, f"the password is {password}")
            await client.close()
        finally:
            assert hub.stop() == 0
        assert not result.is_error
        out = cli("audit", "query", "--config", str(tmp_path / "hub.yaml"), "--json", env=env)
        assert out.returncode == 0, out.stderr
        echoed = [json.loads(line) for line in out.stdout.splitlines() if '"echo"' in line]
        assert any("the password is [REDACTED]" in json.dumps(r) for r in echoed), echoed
        assert password not in out.stdout


def test_no_process_the_hub_starts_inherits_the_audit_dsn(tmp_path: Path) -> None:
    with running_postgres() as pg:
        env = {"AUDIT_DSN": pg.create_database("mcphub_audit")}
        shared = {"audit": {"store": "postgres", "dsn_env": "AUDIT_DSN"}, "packs": ["shell", "browser"]}
        hub = start_hub(tmp_path, config=shared, env=env, http=False)
        try:
            children = subprocess.run(
                ["pgrep", "-P", str(hub.process.pid)], capture_output=True, text=True, timeout=10
            ).stdout.split()
            commands = {c: Path(f"/proc/{c}/cmdline").read_bytes() for c in children}
            assert any(b"spawner" in c for c in commands.values()), commands  # the shell's
            assert any(b"playwright" in c for c in commands.values()), commands  # the browser's driver
            for child in children:
                assert b"AUDIT_DSN=" not in Path(f"/proc/{child}/environ").read_bytes(), commands[child]
        finally:
            assert hub.stop() == 0


async def test_a_hub_on_postgres_takes_calls_again_after_a_restart_and_stops_while_it_is_down(
    tmp_path: Path,
) -> None:
    """A restart of the database left the hub refusing every call for good, and deaf to SIGTERM."""
    with running_postgres() as pg:
        env = {"AUDIT_DSN": pg.create_database("mcphub_restart")}
        hub = start_hub(
            tmp_path, config=config(audit={"store": "postgres", "dsn_env": "AUDIT_DSN"}), env=env, http=False
        )
        client = HubClient(hub.grpc)
        try:
            assert not (await call_echo(client, "before")).is_error
            await asyncio.to_thread(pg.pg_ctl, "restart")
            async with asyncio.timeout(30):
                while True:
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        if not (await call_echo(client, "after")).is_error:
                            break
                    await asyncio.sleep(0.1)
            await asyncio.to_thread(pg.pg_ctl, "stop")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call_echo(client, "while down")
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            # The CLI tells a hub that answers "unavailable" from one it cannot reach. (The hub
            # authenticates a call before it refuses it, to count whose it was.)
            said = await asyncio.to_thread(
                cli, "call", "echo", "--hub", hub.grpc, "--token", TOKEN, "--args", '{"text": "x"}'
            )
            assert said.returncode == 3 and f"the hub at {hub.grpc} is unavailable: " in said.stderr, (
                said.stderr
            )
            assert "start one with" not in said.stderr
        finally:
            await client.close()
            code = await asyncio.to_thread(hub.stop, 20.0)  # the 5 s grace and the writer's last wait
        assert code == 3, "records lost: a supervisor hears of it"
        assert "audit records are not in the log" in hub.log_path.read_text()
        # Its `stopped` record among them: the next start records that it did not stop cleanly.
        await asyncio.to_thread(pg.pg_ctl, "start")
        again = start_hub(
            tmp_path, config=config(audit={"store": "postgres", "dsn_env": "AUDIT_DSN"}), env=env, http=False
        )
        assert again.stop() == 0
        said = again.log_path.read_text()
        assert f"the hub before this one (pid {hub.process.pid}) did not stop cleanly" in said, said


async def test_deciding_on_a_hub_whose_store_is_down_says_the_hub_cannot_reach_its_store(
    tmp_path: Path,
) -> None:
    """`approvals approve --hub H` said "cannot reach a hub at H" when H answered that its
    PostgreSQL store could not be reached (the store's "Connection refused" read as the CLI's)."""
    with running_postgres() as pg:
        env = {"AUDIT_DSN": pg.create_database("mcphub_decide_down")}
        hub = start_hub(
            tmp_path, config=config(audit={"store": "postgres", "dsn_env": "AUDIT_DSN"}), env=env, http=False
        )
        client = HubClient(hub.grpc)
        try:
            call = start_call(client, TOKEN, "delete_thing", {"name": "later"})
            approval_id = await call.approval_id()
            await asyncio.to_thread(pg.pg_ctl, "stop")
            try:
                said = await asyncio.to_thread(
                    cli, "approvals", "approve", approval_id, "--hub", hub.grpc, "--token", APPROVER
                )
            finally:
                await asyncio.to_thread(pg.pg_ctl, "start")
            assert said.returncode == 3, said.stderr
            assert said.stderr.startswith(
                f"mcphub: the hub at {hub.grpc} cannot reach its store: the PostgreSQL store (127.0.0.1:"
            ), said.stderr
            assert len(said.stderr.splitlines()) == 1, said.stderr
            approved = await asyncio.to_thread(
                cli, "approvals", "approve", approval_id, "--hub", hub.grpc, "--token", APPROVER
            )
            assert approved.returncode == 0, approved.stderr
            assert text_of(await call.result()) == "deleted later"
        finally:
            await client.close()
            assert hub.stop() == 0


async def test_approvals_on_a_hub_whose_store_hangs_are_refused_in_bounded_time(tmp_path: Path) -> None:
    """`approvals list` and `approve` waited without limit while the PostgreSQL store hung (SIGSTOP:
    connections open, nothing answering), though calls and /healthz failed fast."""
    with running_postgres() as pg:
        env = {"AUDIT_DSN": pg.create_database("mcphub_approvals_hung")}
        hub = start_hub(
            tmp_path, config=config(audit={"store": "postgres", "dsn_env": "AUDIT_DSN"}), env=env, http=False
        )
        client = HubClient(hub.grpc)
        try:
            call = start_call(client, TOKEN, "delete_thing", {"name": "after the hang"})
            approval_id = await call.approval_id()
            listed, approved = ["approvals", "list"], ["approvals", "approve", approval_id]
            with pg.hung():
                for command in (listed, approved):
                    started = time.monotonic()
                    said = await asyncio.to_thread(cli, *command, "--hub", hub.grpc, "--token", APPROVER)
                    took = time.monotonic() - started
                    assert said.returncode == 3 and took < 20, (took, said.stderr)
                    assert said.stderr.startswith(
                        f"mcphub: the hub at {hub.grpc} cannot reach its store: the PostgreSQL store "
                    ), said.stderr
                    assert "has not answered an approval's read or write for 10 s" in said.stderr
            async with asyncio.timeout(60):
                while True:  # the store answers again (the given-up queries end first)
                    said = await asyncio.to_thread(cli, *approved, "--hub", hub.grpc, "--token", APPROVER)
                    if said.returncode == 0:
                        break
                    await asyncio.sleep(0.5)
            assert text_of(await call.result()) == "deleted after the hang"
        finally:
            await client.close()
            hub.stop()


async def test_a_callers_text_cannot_forge_or_hide_lines_of_audit_tail(tmp_path: Path) -> None:
    """Tool names, request ids and errors are the caller's text, sent even without a token: in
    `audit tail` they are quoted and escaped, so none starts a line of its own, passes for another
    field or sends a terminal escape; details cut for length say so."""
    hub = start_hub(tmp_path, config=config())
    client = HubClient(hub.grpc)
    forged = "echo\n2026-12-05T14:18:00.000Z  #240    finished  approver     delete_thing     c1  status=ok"
    try:
        with pytest.raises(grpc.aio.AioRpcError):
            await client.call_tool(None, pb.CallToolRequest(name=forged, arguments_json=b"{}"))
        await call_echo(client, "x", request_id="a\x1b[31mRED\x1b[0m status=ok")
        await call_echo(client, "y" * 2000)
    finally:
        await client.close()
        assert hub.stop() == 0
    records = await all_records(hub.state_dir)
    out = cli("audit", "tail", "-n", str(len(records)), "--state-dir", str(hub.state_dir))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == len(records), out.stdout
    assert not any(line.startswith("2026-12-05T14:18:00.000Z") for line in lines)
    assert '"echo\\n2026-12-05T14:18:00.000Z' in out.stdout
    assert "\x1b" not in out.stdout and 'request_id="a\\u001b[31mRED\\u001b[0m status=ok"' in out.stdout
    cut = [line for line in lines if "more characters: --json shows all)" in line]
    assert len(cut) == 1 and "yyyy" in cut[0], lines


@pytest.mark.parametrize("transport", ["grpc", "mcp-2026"])
async def test_a_hub_packs_errors_never_show_callers_the_secrets_it_registered(
    transport: str, tmp_path: Path
) -> None:
    """A pack registers its secret with the hub's redactor; its exception quoting the secret
    reaches the caller redacted, as a sidecar pack's does."""
    hub = start_hub(tmp_path, config=config())
    try:
        async with connect(transport, hub.grpc, hub.mcp_url, TOKEN) as client:
            raised = await client.call("fail_with_secret", {"name": "raise"})
            assert raised.is_error and "upstream refused key [REDACTED]" in raised.text, raised
            with pytest.raises(ProtocolFailure) as refused:
                await client.call("fail_with_secret", {"name": "refuse"})
            assert refused.value.message == "key [REDACTED] lacks the scope"
    finally:
        assert hub.stop() == 0
    assert CANARY not in hub.log()


async def test_a_reader_of_the_database_never_takes_the_write_ahead_log_from_the_hub(tmp_path: Path) -> None:
    """Syncing the files for a checkpoint opened and closed the database, which dropped the hub's
    SQLite locks: the next process to close a connection to it (a reader, a refused second hub)
    took itself for the last, checkpointed and deleted the write-ahead log, and the hub went on
    committing into a deleted file. After a crash the log ended before its signed checkpoints."""
    hub = start_hub(tmp_path, config=config(audit={"checkpoint_every": 10}))
    client = HubClient(hub.grpc)
    db = hub.state_dir / "audit" / "audit.db"
    try:
        for i in range(10):  # 40 records: a checkpoint, so the files were synced
            await call_echo(client, f"before {i}")
        reader = "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('select seq from records')"
        reader += "; c.close()"  # a read takes a shared lock; the close is where the log was taken
        await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", reader, str(db)], check=True, timeout=30
        )
        for i in range(30):
            await call_echo(client, f"after {i}")
        await asyncio.sleep(0.5)  # a fold and a checkpoint after the reader left
        fds = [os.readlink(f) for f in (Path("/proc") / str(hub.process.pid) / "fd").iterdir()]
        assert not [f for f in fds if f.endswith("(deleted)")], fds
    finally:
        await client.close()
        hub.kill()  # a crash: what is durable must be in the log
    restarted = start_hub(tmp_path, config=config(audit={"checkpoint_every": 10}))
    assert restarted.stop() == 0
    verify = cli("audit", "verify", "--state-dir", str(hub.state_dir))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    echoed = [r for r in await all_records(hub.state_dir) if r.kind == "finished" and r.tool == "echo"]
    assert len(echoed) == 40


async def test_the_audit_log_keeps_no_megabytes_of_a_callers_request(tmp_path: Path) -> None:
    """Anyone who could reach the port wrote their whole request (16 MB over gRPC) to the hub's
    disk, token or not; an agent's arguments were kept whole however long. Arguments past
    `audit.max_argument_bytes` (or 1 KiB from a caller naming no principal) are recorded as
    their size and SHA-256, a tool name or an error past a few KiB is cut."""
    hub = start_hub(tmp_path, config=config())
    client = HubClient(hub.grpc)
    big = orjson.dumps({"text": "z" * 2_000_000})
    try:
        for token in (None, "not-a-token-of-this-hub"):
            with pytest.raises(grpc.aio.AioRpcError):
                await client.call_tool(token, pb.CallToolRequest(name="echo", arguments_json=big))
        with pytest.raises(grpc.aio.AioRpcError):
            await client.call_tool(None, pb.CallToolRequest(name="t" * 100_000, arguments_json=b"{}"))
        assert (await call_echo(client, "k" * 100_000)).content[0].text.text == "k" * 100_000
    finally:
        await client.close()
        assert hub.stop() == 0
    records = await all_records(hub.state_dir)
    assert max(len(r.body) for r in records) < 2048, "no record holds the caller's megabytes"
    refused = [
        r.body_json() for r in records if r.kind == "requested" and r.principal == "-" and r.tool == "echo"
    ]
    assert refused == [{"arguments_omitted": {"bytes": len(big)}}] * 2
    long_name = next(r for r in records if r.tool.startswith("ttt"))
    assert long_name.tool == "t" * 256 + "... (99744 more characters)"
    agent = next(r.body_json() for r in records if r.kind == "requested" and r.principal == "agent")
    kept = orjson.dumps({"text": "k" * 100_000})
    # No digest: an unkeyed hash of arguments with a secret among guessable text confirms guesses.
    assert agent["arguments_omitted"] == {"bytes": len(kept)}
    assert "arguments" not in agent
    audit_dir = hub.state_dir / "audit"
    assert sum(p.stat().st_size for p in audit_dir.iterdir() if p.is_file()) < 1_000_000


def test_an_old_hub_file_whose_pid_is_now_another_directorys_hub_does_not_stop_a_start(
    tmp_path: Path,
) -> None:
    """An old hub crashed and left a hub.json without a start time; its pid now belongs to a hub
    serving another state directory. The start took that hub for the old one and refused."""
    other = start_hub(tmp_path / "other", http=False)
    try:
        mine = tmp_path / "mine" / "state"
        mine.mkdir(parents=True, mode=0o700)
        (mine / "hub.json").write_text(
            json.dumps({"grpc": "127.0.0.1:1", "mcp": None, "pid": other.process.pid})
        )
        hub = start_hub(tmp_path / "mine", http=False)
        assert hub.stop() == 0
    finally:
        assert other.stop() == 0

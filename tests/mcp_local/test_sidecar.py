"""The sidecar as a real process: its tools answer over gRPC and MCP, it starts light, and it refuses
bad manifests and non-loopback binds with clear errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from tests.support.clients import ToolClient, answer_while_stopping, connect
from tests.support.hub import FAULTY_PACK, PROBE_PACK
from tests.support.sidecar import RunningSidecar, sidecar_command, start_sidecar, write_manifest

pytestmark = pytest.mark.anyio

SIDECAR_TRANSPORTS = ["grpc", "mcp-2026", "mcp-2025"]
MCPHUB = Path(sys.executable).parent / "mcphub"


def sandbox_manifest(root: Path) -> dict[str, Any]:
    """A workspace with a git repository and a SQLite database, and the manifest that serves them."""
    ws = root / "workspace"
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "notes.txt").write_text("first line\nsecond line\n")
    subprocess.run(["git", "init", "-q", str(ws)], check=True)
    conn = sqlite3.connect(ws / "app.db")
    with conn:
        conn.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT)")
        conn.execute("INSERT OR REPLACE INTO kv VALUES ('greeting', 'hello from the sandbox')")
    conn.close()
    return {
        "workspace": str(ws),
        "packs": [
            "files",
            "git",
            "process",
            "diagnostics",
            {"name": "sql", "options": {"databases": {"app": {"sqlite": "app.db"}}}},
        ],
    }


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSidecar]:
    root = tmp_path_factory.mktemp("sidecar")
    running = start_sidecar(root, sandbox_manifest(root), http=True)
    yield running
    running.stop()


@pytest.fixture(params=SIDECAR_TRANSPORTS)
async def client(request: pytest.FixtureRequest, sidecar: RunningSidecar) -> AsyncIterator[ToolClient]:
    async with connect(request.param, sidecar.grpc, sidecar.mcp_url, None) as c:
        yield c


async def test_lists_the_manifest_tools_with_annotations(client: ToolClient) -> None:
    tools = {t["name"]: t for t in await client.list_tools()}
    assert {
        "files_read",
        "files_write",
        "git_status",
        "git_commit",
        "process_list",
        "sql_query",
        "echo",
    } <= set(tools)
    assert "sql_execute" not in tools  # no database is writable
    assert tools["sql_query"]["annotations"]["readOnlyHint"] is True
    assert tools["files_write"]["annotations"]["destructiveHint"] is True


async def test_tools_answer(client: ToolClient) -> None:
    rows = await client.call("sql_query", {"sql": "SELECT v FROM kv WHERE k = ?", "params": ["greeting"]})
    assert rows.structured["rows"] == [["hello from the sandbox"]]
    assert (await client.call("files_read", {"path": "notes.txt"})).text == "first line\nsecond line\n"
    assert "notes.txt" in (await client.call("git_status", {})).text
    escaped = await client.call("files_read", {"path": "../../../etc/passwd"})
    assert escaped.is_error and "'..' is not allowed" in escaped.text


async def test_progress_is_relayed(client: ToolClient) -> None:
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    outcome = await client.call("sleep", {"seconds": 0.3}, progress=on_progress)
    assert outcome.text == "slept 0.3s"
    assert seen and seen == sorted(seen)


def test_the_hub_token_leaves_the_environment(tmp_path: Path) -> None:
    """In its environment, the token would reach every process the sidecar starts (a helper
    process is readable by the agent's uid) and the serving interpreter it execs."""
    token = "sidecar-env-token-0123456789abcdef"
    sidecar = start_sidecar(tmp_path, sandbox_manifest(tmp_path), token=token)
    try:
        environ = Path(f"/proc/{sidecar.process.pid}/environ").read_bytes()
        assert b"MCPHUB_TOKEN" not in environ and token.encode() not in environ
        assert b"PATH=" in environ, "the rest of the environment is kept"
    finally:
        sidecar.stop()


async def test_stdio_mode_serves_mcp_on_stdin_and_stdout(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, sandbox_manifest(tmp_path))
    params = StdioServerParameters(
        command=sys.executable,
        args=[
            "-m",
            "mcp_local",
            "serve",
            "--stdio",
            "--manifest",
            str(manifest),
            "--state-dir",
            str(tmp_path / "s"),
        ],
        cwd=str(tmp_path),
    )
    async with Client(params, mode="legacy", cache=None) as mcp_client:
        names = {t.name for t in (await mcp_client.list_tools()).tools}
        assert {"files_read", "sql_query"} <= names
        result = await mcp_client.call_tool("files_list", {})
        assert not result.is_error
        assert "notes.txt" in str(result.structured_content)


def _run(args: list[str], cwd: Path, *, module: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        sidecar_command(*args, module=module), capture_output=True, text=True, cwd=cwd, timeout=60
    )


SERVE = ["serve", "--grpc", "127.0.0.1:0", "--hub"]
HEALTH = ["health", "--timeout", "2", "--grpc"]


@pytest.mark.parametrize(
    ("command", "said"),
    [
        ([*SERVE, "http://hub:7070"], "--hub: expected HOST:PORT, without a scheme (e.g. hub.internal:7070)"),
        ([*SERVE, "hub:0"], "--hub: expected HOST:PORT (e.g. hub.internal:7070), got 'hub:0'"),
        ([*SERVE, "hub"], "--hub: expected HOST:PORT (e.g. hub.internal:7070), got 'hub'"),
        ([*HEALTH, "127.0.0.1:70000"], "--grpc: expected HOST:PORT (e.g. 127.0.0.1:7072)"),
        ([*HEALTH, "a b:1"], "--grpc: 'a b' of 'a b:1' is no host name or IP address"),
    ],
)
def test_an_address_that_is_none_is_bad_usage(tmp_path: Path, command: list[str], said: str) -> None:
    """`local serve --hub http://hub:7070` started, then dialled a name the resolver refused for
    ever (its health said the link was down); `local health --grpc` with a typo said "not healthy"."""
    out = _run(command, tmp_path)
    assert (out.returncode, out.stdout) == (2, ""), out.stderr
    assert out.stderr.startswith(f"mcphub local: {said}"), out.stderr


def test_a_bad_manifest_is_refused_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("packs:\n  - files\n  - {name: sql, option: {}}\nworkspce: /tmp\n")
    out = _run(["serve", "--manifest", str(path), "--grpc", "127.0.0.1:0"], tmp_path)
    assert out.returncode == 2
    assert "invalid manifest" in out.stderr
    assert "packs[1]: expected a pack name or {name: NAME, options: {...}}" in out.stderr
    assert "unknown key 'workspce'" in out.stderr
    path.write_text("packs:\n  - name: sql\n    options: {databases: {app: {sqlite: a.db}}, rows: 5}\n")
    out = _run(["check", "--manifest", str(path)], tmp_path)
    assert out.returncode == 2 and "packs[sql].options.rows: unknown option" in out.stderr
    path.write_text("packs:\n  - name: diagnostics\n    options: {echo_prefix: '> '}\n")
    out = _run(["check", "--manifest", str(path)], tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "packs[diagnostics].options.echo_prefix: unknown option (this pack takes none)" in out.stderr
    path.write_text("packs: [no_such_pack]\n")
    out = _run(["check", "--manifest", str(path)], tmp_path)
    assert out.returncode == 2 and "packs[no_such_pack]" in out.stderr and "no such pack" in out.stderr


def test_check_lists_the_tools(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, sandbox_manifest(tmp_path))
    out = _run(["check", "--manifest", str(manifest)], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "sql_query" in out.stdout and "[read-only]" in out.stdout
    assert "ok, " in out.stderr


def test_check_and_health_speak_json_and_a_wrong_option_gets_its_commands_usage(
    tmp_path: Path, sidecar: RunningSidecar
) -> None:
    """`local check` and `local health` had no --json, and `mcphub local check --json` printed
    the top-level usage (`usage: mcphub [-h] COMMAND ...`), which does not say what check takes."""
    manifest = write_manifest(tmp_path, {"packs": ["diagnostics"]})
    out = _run(["check", "--manifest", str(manifest), "--json"], tmp_path)
    assert out.returncode == 0, out.stderr
    checked = json.loads(out.stdout)
    assert checked["ok"] is True and checked["manifest"] == str(manifest)
    echo = next(t for t in checked["tools"] if t["name"] == "echo")
    assert set(echo) == {"name", "title", "read_only", "destructive", "roles"} and echo["read_only"] is True
    (tmp_path / "bad.yaml").write_text("packs: [no_such_pack]\n")
    out = _run(["check", "--manifest", str(tmp_path / "bad.yaml"), "--json"], tmp_path)
    assert out.returncode == 2 and json.loads(out.stdout)["ok"] is False
    assert "no such pack" in json.loads(out.stdout)["error"]
    # A manifest that is not there, or not YAML: the same document (it printed nothing).
    (tmp_path / "broken.yaml").write_text("packs: [\n")
    for path in (tmp_path / "missing.yaml", tmp_path / "broken.yaml"):
        out = _run(["check", "--manifest", str(path), "--json"], tmp_path)
        assert out.returncode == 2 and json.loads(out.stdout)["ok"] is False, (out.stdout, out.stderr)
        assert json.loads(out.stdout)["manifest"] == str(path)

    out = _run(["health", "--grpc", sidecar.grpc, "--json"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "healthy": True,
        "sidecar": sidecar.grpc,
        "hub_link": None,
        "message": f"sidecar at {sidecar.grpc} is serving",
    }
    out = _run(["health", "--grpc", "127.0.0.1:1", "--json", "--timeout", "2"], tmp_path)
    assert out.returncode == 1 and json.loads(out.stdout)["healthy"] is False, out

    for module in (False, True):
        for command in (["check", "--jsn"], ["health", "--grpc", sidecar.grpc, "--jsn"]):
            out = _run(command, tmp_path, module=module)
            assert out.returncode == 2, out.stderr
            assert out.stderr.startswith(f"usage: mcphub local {command[0]} [-h]"), out.stderr
            assert out.stderr.endswith(f"mcphub local {command[0]}: error: unrecognized arguments: --jsn\n")


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "abc"])
def test_health_refuses_a_timeout_that_is_no_time_as_bad_usage(
    value: str, tmp_path: Path, sidecar: RunningSidecar
) -> None:
    """`local health --timeout -1` (or nan) reported a serving sidecar unhealthy (exit 1,
    DEADLINE_EXCEEDED); the option had no help text either."""
    out = _run(["health", "--grpc", sidecar.grpc, "--timeout", value, "--json"], tmp_path)
    assert out.returncode == 2, (out.stdout, out.stderr)
    said = json.loads(out.stdout)
    assert said["healthy"] is False and said["message"].startswith("--timeout: expected more than 0")
    assert out.stderr.startswith("usage: mcphub local health [-h]"), out.stderr
    assert "--timeout: expected more than 0 and at most 3600 seconds" in out.stderr
    helped = _run(["health", "--help"], tmp_path)
    assert "how long to wait for each answer" in " ".join(helped.stdout.split())


def _health_with(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MCPHUB_")} | env
    return subprocess.run(
        sidecar_command("health", "--timeout", "5", *args),
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        env=full,
    )


@pytest.mark.parametrize("configured", ["127.0.0.1:0", "off"])
def test_health_finds_the_port_a_sidecar_chose_in_its_ready_file(
    configured: str, tmp_path: Path, sidecar: RunningSidecar
) -> None:
    """With $MCPHUB_LOCAL_GRPC at port 0 or `off` (the images' HEALTHCHECK sees the variable the
    container was given, not the port bound), `local health` was exit 2 "expected HOST:PORT", and
    printed nothing with --json. It reads the entrypoint's ready file; without one it says what to do."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {"MCPHUB_LOCAL_GRPC": configured, "MCPHUB_RUN_DIR": str(run_dir)}
    out = _health_with(env, tmp_path, "--json")
    assert out.returncode == 2, (out.stdout, out.stderr)
    said = json.loads(out.stdout)
    assert said["healthy"] is False and said["sidecar"] is None
    assert f"$MCPHUB_LOCAL_GRPC is '{configured}'" in said["message"]
    assert str(run_dir / "sidecar.ready") in said["message"] and "give --grpc HOST:PORT" in said["message"]

    (run_dir / "sidecar.ready").write_text(json.dumps({"event": "ready", "grpc": sidecar.grpc}) + "\n")
    out = _health_with(env, tmp_path, "--json")
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert json.loads(out.stdout)["sidecar"] == sidecar.grpc
    # --ready-file names another file; a fixed port in the variable is asked as before.
    other = tmp_path / "other.ready"
    other.write_text(json.dumps({"grpc": sidecar.grpc}))
    out = _health_with({}, tmp_path, "--ready-file", str(other))
    assert out.returncode == 0 and out.stdout == f"sidecar at {sidecar.grpc} is serving\n", out
    out = _health_with(
        {"MCPHUB_LOCAL_GRPC": sidecar.grpc, "MCPHUB_RUN_DIR": str(tmp_path / "none")}, tmp_path
    )
    assert out.returncode == 0, out


ROLE_PACK = """
from mcp_local.packs import StaticPack
from mcp_local.tools import Tool


async def _hi(call):
    return "hi"


def create_pack(options, env):
    anything = {"type": "object"}
    return StaticPack("ops", [
        Tool(name="ops_restart", description="Restart the app.\\nMore words.", input_schema=anything,
             handler=_hi, roles=frozenset({"operator"})),
        Tool(name="ops_ping", description="Ping.", title="Ping", input_schema=anything, handler=_hi),
    ])
"""


def test_check_lists_every_tool_with_the_roles_that_see_it(tmp_path: Path) -> None:
    """It listed only tools without roles, while its count had them all; an untitled tool had
    a blank where its title goes."""
    (tmp_path / "ops_pack.py").write_text(ROLE_PACK)
    manifest = write_manifest(tmp_path, {"packs": [str(tmp_path / "ops_pack.py")]})
    out = _run(["check", "--manifest", str(manifest)], tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["ops_ping", "ops_restart"], out.stdout
    assert lines[1].split(None, 1)[1] == "Restart the app.  [roles: operator]", out.stdout
    assert "ok, 2 tools" in out.stderr


SURROGATE_PACK = """
from mcp_local.content import TextContent, ToolResult
from mcp_local.packs import StaticPack
from mcp_local.tools import Tool


async def _bad(call):
    # A lone surrogate in its text is sent as U+FFFD now; a _meta that is no JSON still fails.
    return ToolResult(content=[TextContent(text="bad \\udcff text")], meta={"set": {1, 2}})


def create_pack(options, env):
    return StaticPack("surrogate", [Tool("badutf", "A result gRPC cannot carry.", {"type": "object"}, _bad)])
"""


def _refused(url: str, headers: dict[str, str]) -> tuple[int, str]:
    """The status and JSON-RPC error message of a POST the sidecar's HTTP guard refuses."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=b"{}", headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10):
            raise AssertionError("accepted")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["error"]["message"]


@pytest.mark.parametrize("transport", SIDECAR_TRANSPORTS)
async def test_the_sidecars_own_errors_point_to_the_sidecar_not_a_hub(transport: str, tmp_path: Path) -> None:
    """An internal error on the sidecar's own endpoints said "internal error in the hub; the hub's
    log has the details", and a foreign Host "add it to allowed_hosts in the config": the sidecar
    has neither a hub behind those endpoints nor such a key in its manifest."""
    (tmp_path / "surrogate.py").write_text(SURROGATE_PACK)
    running = start_sidecar(tmp_path, {"packs": [str(tmp_path / "surrogate.py")]}, http=True)
    try:
        async with connect(transport, running.grpc, running.mcp_url, None) as client:
            with pytest.raises(Exception, match="internal error in the sidecar; the sidecar's log") as caught:
                await client.call("badutf", {})
            assert "hub" not in str(caught.value)
        if transport == "grpc":
            assert running.mcp_url is not None
            answer = await asyncio.to_thread(_refused, running.mcp_url, {"Host": "evil.example"})
            assert answer == (
                421,
                "Host header 'evil.example' is not allowed: the sidecar answers loopback names only",
            )
            origin = await asyncio.to_thread(_refused, running.mcp_url, {"Origin": "http://evil.example"})
            assert origin == (
                403,
                "Origin 'http://evil.example' is not allowed: the sidecar answers loopback names only",
            )
    finally:
        running.stop()


LIMITS_PACK = """
from mcp_local.packs import StaticPack
from mcp_local.tools import Tool


async def _ok(call):
    return "ok"


def create_pack(options, env):
    kind = options.get("kind")
    if kind == "many":
        return StaticPack("many", [Tool(f"t{i}", "d", {"type": "object"}, _ok) for i in range(1001)])
    if kind == "huge":
        return StaticPack("huge", [Tool("big", "x" * 17_000_000, {"type": "object"}, _ok)])
    nan = {"type": "object", "properties": {"a": {"type": "number", "maximum": float("nan")}}}
    return StaticPack("odd", [
        Tool("nan_max", "NaN in its schema.", nan, _ok),
        Tool("n" * 60, "A long name.", {"type": "object"}, _ok),
        Tool("fine", "Fine.", {"type": "object"}, _ok),
    ])
"""


def test_check_reports_what_a_hub_would_block_or_refuse(tmp_path: Path) -> None:
    """`local check` said "ok" for tools a hub blocks (a name too long with the `<sandbox>__`
    prefix, NaN in a schema) and for sidecars it never registers (1001 tools, a 17 MB hello)."""
    pack = tmp_path / "limits.py"
    pack.write_text(LIMITS_PACK)
    manifest = write_manifest(tmp_path, {"sandbox": "sbx2", "packs": [str(pack)]})
    out = _run(["check", "--manifest", str(manifest)], tmp_path)
    assert out.returncode == 0, out.stderr
    warnings = [li for li in out.stderr.splitlines() if li.startswith("mcphub local: warning: ")]
    assert len(warnings) == 2, out.stderr
    assert "tool nan_max: a hub blocks it (as sandbox sbx2)" in warnings[0]
    assert "None is not of type 'number'" in warnings[0]
    assert f"exposed as 'sbx2__{'n' * 60}': expected 1-64 characters" in warnings[1]
    assert out.stderr.endswith("ok, 3 tools, 2 of which a hub blocks\n"), out.stderr
    # Another sandbox name (a shorter one here) changes what fits; --json lists the warnings.
    out = _run(["check", "--manifest", str(manifest), "--sandbox", "s", "--json"], tmp_path)
    checked = json.loads(out.stdout)
    assert out.returncode == 0 and checked["ok"] is True, out.stderr
    assert [w.split(":")[0] for w in checked["warnings"]] == ["tool nan_max"], checked["warnings"]
    for kind, said in (
        ("many", "the announcement has 1001 tools; a sandbox may announce at most 1000"),
        ("huge", "the announcement is too large: 17,000,0"),
    ):
        manifest = write_manifest(
            tmp_path / kind, {"packs": [{"name": str(pack), "options": {"kind": kind}}]}
        )
        out = _run(["check", "--manifest", str(manifest), "--json"], tmp_path)
        assert out.returncode == 2, out.stderr
        refused = json.loads(out.stdout)
        assert refused["ok"] is False and "a hub cannot register this sidecar: " + said in refused["error"]


def test_only_loopback_is_served(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, {"packs": ["diagnostics"]})
    out = _run(["serve", "--manifest", str(manifest), "--grpc", "0.0.0.0:0"], tmp_path)
    assert out.returncode == 2
    assert "--grpc: 0.0.0.0:0 is not a loopback address" in out.stderr and "--hub" in out.stderr


@pytest.mark.parametrize("seconds", ["0", "-3", "0.1", "nan", "inf"])
def test_a_reconnect_wait_below_its_floor_is_bad_usage(tmp_path: Path, seconds: str) -> None:
    """`--reconnect-max 0` (or below) redialed a hub in a tight loop: 5,538 log lines in 5 s."""
    manifest = write_manifest(tmp_path, {"packs": ["diagnostics"]})
    out = _run(
        ["serve", "--manifest", str(manifest), "--hub", "127.0.0.1:1", f"--reconnect-max={seconds}"], tmp_path
    )
    assert out.returncode == 2, out.stderr
    assert f"argument --reconnect-max: {seconds!r}: expected 0.5 seconds or more" in out.stderr


def test_a_ready_file_that_cannot_be_written_is_refused_before_serving(tmp_path: Path) -> None:
    """A --ready-file in a missing directory was a FileNotFoundError traceback, exit 1, once the
    sidecar had started its packs and was ready: docs/sidecar.md says 2, bad usage."""
    manifest = write_manifest(tmp_path, {"packs": ["diagnostics"]})
    (tmp_path / "locked").mkdir(mode=0o500)
    cases = {
        tmp_path / "missing" / "ready.json": f"no directory {tmp_path / 'missing'} to write it in",
        tmp_path: "a directory, not a file",
    }
    if os.geteuid() != 0:  # root writes anywhere
        cases[tmp_path / "locked" / "ready.json"] = f"cannot write in {tmp_path / 'locked'} (its permissions)"
    for path, problem in cases.items():
        out = _run(
            ["serve", "--manifest", str(manifest), "--grpc", "127.0.0.1:0", "--ready-file", str(path)],
            tmp_path,
        )
        assert (out.returncode, out.stdout) == (2, ""), out.stderr
        assert out.stderr == f"mcphub local: --ready-file {path}: {problem}\n"


def test_the_scratch_directory_is_never_the_hubs_state_directory(tmp_path: Path) -> None:
    """`mcphub local serve` took $MCPHUB_STATE_DIR, the hub's variable, for its packs' scratch
    space: next to a hub, among its secrets and audit log. Its own default is $TMPDIR's."""
    manifest = write_manifest(tmp_path, {"packs": ["diagnostics"]})
    hub_state, scratch = tmp_path / "hub-state", tmp_path / "tmp"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPHUB_")}
    env |= {"MCPHUB_STATE_DIR": str(hub_state), "TMPDIR": str(scratch)}
    process = subprocess.Popen(
        sidecar_command("serve", "--json", "--manifest", str(manifest), "--grpc", "127.0.0.1:0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        assert json.loads(process.stdout.readline())["event"] == "ready"
        assert (scratch / f"mcphub-sidecar-{os.getuid()}").is_dir()
        assert not hub_state.exists()
    finally:
        process.terminate()
        assert process.wait(30) == 0
        if process.stdout is not None:
            process.stdout.close()


MODULES_AT_EXIT = Path(__file__).parents[1] / "support" / "modules_at_exit"


@pytest.mark.parametrize("module", [True, False], ids=["python-m-mcp_local", "mcphub-local"])
def test_the_serving_process_loads_neither_the_hub_nor_the_parsers(tmp_path: Path, module: bool) -> None:
    manifest = write_manifest(tmp_path, sandbox_manifest(tmp_path))
    args = ["serve", "--json", "--manifest", str(manifest), "--grpc", "127.0.0.1:0"]
    # The real entry points: `python -m mcp_local`, and the installed `mcphub` console script.
    # Through -m, with interpreter options that the new interpreter must be given too.
    options = ["-X", "int_max_str_digits=0", "-u"]
    command = (
        [sys.executable, *options, "-m", "mcp_local", *args] if module else [str(MCPHUB), "local", *args]
    )
    listing = tmp_path / "modules.txt"
    path = os.pathsep.join(p for p in (str(MODULES_AT_EXIT), os.environ.get("PYTHONPATH")) if p)
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": path, "MCPHUB_TEST_MODULES_FILE": str(listing)},
    )
    assert process.stdout is not None
    ready = process.stdout.readline()
    try:
        assert '"event": "ready"' in ready
        # The command handed over to a fresh interpreter: same PID, the original command line
        # still at the end (for ps and pgrep), and the memfd that carried the settings closed.
        assert json.loads(ready)["pid"] == process.pid
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes().decode().split("\0")[:-1]
        assert "-P" in cmdline and cmdline[-len(args) :] == args
        if module:
            assert cmdline[1 : 1 + len(options)] == options
        # ... and its name: `pgrep mcphub`, `ps -C mcphub` and `killall mcphub` still find it.
        name = "mcphub" if not module else Path(sys.executable).name[:15]
        assert Path(f"/proc/{process.pid}/comm").read_text().strip() == name
        fds = [os.readlink(f) for f in Path(f"/proc/{process.pid}/fd").iterdir() if f.is_symlink()]
        assert not [f for f in fds if "mcphub-sidecar-settings" in f], fds
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr[-2000:]
    modules = set(listing.read_text().split())
    assert "mcp_local.sidecar" in modules and "mcp_local.packs.sql" in modules
    hub_side = {
        m
        for m in modules
        if m.split(".")[0] in ("mcp_remote", "bridge", "mcp", "uvicorn", "starlette", "pydantic")
    }
    assert hub_side == set()
    # Only the command needs its parsers: argparse, PyYAML and jsonschema (the manifest's error
    # wording) never reach the serving process. Loaded on first use, not by an idle sidecar:
    # sqlite3 (first SQLite query); hashlib (and with it more of OpenSSL's libcrypto), decimal
    # (only psycopg makes Decimals), random (the hub link's backoff draws from os.urandom),
    # shutil (with bz2 and lzma) not at all.
    assert not modules & {"argparse", "yaml", "jsonschema", "mcp_local.cli"}
    assert not modules & {"sqlite3", "hashlib", "decimal", "random", "shutil", "bz2", "lzma"}
    # gRPC reflection (and protobuf's descriptor_pb2 with it) loads on its first call.
    assert not modules & {"grpc_reflection.v1alpha", "google.protobuf.descriptor_pb2"}


PLANTED = ["__future__", "typing", "argparse", "json", "pickle", "asyncio", "yaml", "grpc", "socket"]


def test_python_m_mcp_local_runs_nothing_planted_in_the_current_directory(tmp_path: Path) -> None:
    """Run from the agent's workspace, `python -m mcp_local` had that directory first on sys.path:
    a planted `typing.py` ran on import, a `pickle.py` at the hand-over to a fresh interpreter."""
    manifest = write_manifest(tmp_path, sandbox_manifest(tmp_path))
    workspace, marks = tmp_path / "agent", tmp_path / "marks"
    workspace.mkdir()
    marks.mkdir()
    for name in PLANTED:
        (workspace / f"{name}.py").write_text(f"open({str(marks / name)!r}, 'w').close()\n")
    checked = subprocess.run(
        [sys.executable, "-m", "mcp_local", "check", "--manifest", str(manifest)],
        capture_output=True,
        text=True,
        cwd=workspace,
        timeout=60,
    )
    assert checked.returncode == 0 and ": ok," in checked.stderr, checked.stderr
    args = ["serve", "--json", "--manifest", str(manifest), "--grpc", "127.0.0.1:0"]
    with subprocess.Popen(
        [sys.executable, "-m", "mcp_local", *args], stdout=subprocess.PIPE, text=True, cwd=workspace
    ) as process:
        try:
            assert process.stdout is not None
            assert '"event": "ready"' in process.stdout.readline()
        finally:
            process.terminate()
            process.wait(timeout=30)
    assert sorted(p.name for p in marks.iterdir()) == []
    # Found in review: an editable install's finder imports `__future__` at start-up, which hid
    # that the package's own `from __future__ import` loaded a planted one. Without site (as with
    # a plain install, where nothing else loads it), and with options before `m` (-Rm).
    source = str(Path(__file__).parents[2])
    for options in (["-S", "-m"], ["-S", "-Rm"], ["-S", "-xm"]):
        helped = subprocess.run(
            [sys.executable, *options, "mcp_local", "--help"],
            capture_output=True,
            text=True,
            cwd=workspace,
            env={**os.environ, "PYTHONPATH": source},
            timeout=60,
        )
        assert helped.returncode == 0 and "usage: mcphub local" in helped.stdout, (options, helped.stderr)
        assert sorted(p.name for p in marks.iterdir()) == [], options


def test_without_a_memfd_or_an_interpreter_the_command_serves_in_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Without a memfd (or an interpreter to exec) the hand-over returns and the command serves
    # in its own process; nothing was exec'd, or this test would not be running.
    from mcp_local.handover import exec_server
    from mcp_local.manifest import parse_manifest
    from mcp_local.settings import SidecarSettings

    settings = SidecarSettings(manifest=parse_manifest({"packs": ["files"]}))
    monkeypatch.delattr(os, "memfd_create")
    assert exec_server(settings, ready_file=None, json_line=True) is None
    monkeypatch.undo()
    monkeypatch.setattr(sys, "executable", "")
    assert exec_server(settings, ready_file=None, json_line=True) is None


def test_the_version_constant_matches_the_installed_distribution() -> None:
    from importlib.metadata import version

    from mcp_local.version import VERSION

    assert version("mcphub") == VERSION


def test_without_any_manifest_the_sidecar_serves_the_current_directory(tmp_path: Path) -> None:
    out = _run(["check"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "files_read" in out.stdout and "git_status" in out.stdout and "sql_query" not in out.stdout
    assert "default manifest" in out.stderr
    missing = _run(["check", "--manifest", str(tmp_path / "nope.yaml")], tmp_path)
    assert missing.returncode == 2 and "cannot read the manifest" in missing.stderr


@pytest.mark.parametrize("transport", SIDECAR_TRANSPORTS)
async def test_a_stopping_sidecar_tells_running_calls_why(transport: str, tmp_path: Path) -> None:
    """SIGTERM with a call running: after the grace period the call is stopped and its caller
    gets an error saying why, not a dropped connection; the sidecar exits cleanly."""
    manifest = {"workspace": str(tmp_path / "ws"), "packs": [PROBE_PACK]}
    (tmp_path / "ws").mkdir()
    state = tmp_path / "state"
    running = start_sidecar(tmp_path, manifest, http=True)
    try:
        async with connect(transport, running.grpc, running.mcp_url, None) as client:
            answer = await answer_while_stopping(
                client,
                running.process,
                state / "markers" / "stop.started",
                "wait_for_cancel",
                {"marker": "stop"},
            )
        assert running.process.wait(30) == 0
    finally:
        running.stop()
    assert answer.is_error and "the sandbox's sidecar is shutting down" in answer.text, answer.text
    assert (state / "markers" / "stop").read_text() == "cancelled", "the tool itself was stopped"
    log = running.log()
    assert "Traceback" not in log and " ERROR " not in log, log


def test_a_yaml_syntax_error_in_the_manifest_names_the_line_but_never_prints_it(tmp_path: Path) -> None:
    # PyYAML's own message quotes the offending line: here, a password in a DSN.
    path = tmp_path / "m.yaml"
    path.write_text(
        "packs:\n  - name: sql\n    options: {databases: {db: {postgres: 'postgresql://u:Pw_Secret_9@h/db}}}\n"
    )
    for args in (["serve", "--grpc", "127.0.0.1:0"], ["check"]):
        out = _run([*args, "--manifest", str(path)], tmp_path)
        assert out.returncode == 2, out.stderr
        assert "not valid YAML: line 4, column 1: found unexpected end of stream" in out.stderr
        assert "Pw_Secret_9" not in out.stderr + out.stdout


def test_a_pack_named_like_another_is_refused(tmp_path: Path) -> None:
    """A pack file returning a pack named `files` replaced the files pack's tools."""
    impostor = {"name": FAULTY_PACK, "options": {"name": "files"}}
    manifest = write_manifest(tmp_path, {"packs": ["files", impostor]})
    for args in (["check"], ["serve", "--grpc", "127.0.0.1:0"]):
        out = _run([*args, "--manifest", str(manifest)], tmp_path)
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith(
            f"mcphub local: packs[{FAULTY_PACK}]: pack {FAULTY_PACK!r} is named 'files', like the pack of "
            "packs[files]: two packs may not share a name"
        ), out.stderr


def test_a_pack_that_fails_to_start_is_named(tmp_path: Path) -> None:
    """A RuntimeError in a pack's start() ended `local check` and `local serve` with a traceback."""
    manifest = write_manifest(
        tmp_path, {"packs": ["diagnostics", {"name": FAULTY_PACK, "options": {"fail": "start"}}]}
    )
    for args in (["check"], ["serve", "--grpc", "127.0.0.1:0"]):
        out = _run([*args, "--manifest", str(manifest)], tmp_path)
        assert out.returncode == 2, out.stderr
        assert out.stderr.endswith(
            f"mcphub local: packs[{FAULTY_PACK}]: pack {FAULTY_PACK!r}: start() failed: RuntimeError: "
            "the service it needs is down\n"
        ), out.stderr
        assert "Traceback" not in out.stderr


def test_a_signal_while_a_pack_starts_stops_the_sidecar(tmp_path: Path) -> None:
    """A pack whose start() never returned left a sidecar that only SIGKILL ended."""
    stuck = {"name": FAULTY_PACK, "options": {"name": "stuck", "start": "hang"}}
    manifest = write_manifest(tmp_path, {"packs": ["diagnostics", stuck]})
    log_path = tmp_path / "sidecar.log"
    command = sidecar_command("serve", "--manifest", str(manifest), "--grpc", "127.0.0.1:0")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while "starting for ever" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 128 + signal.SIGINT
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = log_path.read_text()
    assert f"packs[{FAULTY_PACK}]: stopped while pack 'stuck' was starting" in stderr, stderr
    assert stderr.endswith("mcphub local: SIGINT while starting: stopped before it was ready\n"), stderr

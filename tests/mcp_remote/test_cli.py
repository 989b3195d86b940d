"""The `mcphub` command as an operator uses it: help, serve, tools, call, exit codes, clear errors."""

from __future__ import annotations

import errno
import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.packs import hostile
from tests.support.execwith import exec_with
from tests.support.hub import FAULTY_PACK, REPO, RunningHub, hub_command, serve_refused, start_hub
from tests.support.netns import in_own_network, joining_network


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MCPHUB_")}
    full_env.update(env or {})
    return subprocess.run(
        hub_command(*args), capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO
    )


@pytest.mark.parametrize("command", [[], ["serve"], ["tools"], ["call"], ["bridge"]])
def test_help_explains_every_command(command: list[str]) -> None:
    out = run(*command, "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: mcphub" in out.stdout
    if not command:
        assert "exit codes" in out.stdout and "mcphub serve" in out.stdout
    if command == ["serve"]:
        assert "--grpc HOST:PORT" in out.stdout and "principals" in out.stdout and "MCPHUB_GRPC" in out.stdout
        # Where its state goes by default, with the variable that moves it (it was not named).
        assert "$XDG_STATE_HOME/mcphub (~/.local/state/mcphub when XDG_STATE_HOME is unset)" in out.stdout


@pytest.mark.parametrize("command", [[], ["local"], ["sandboxes"], ["audit"]])
def test_no_command_prints_help_and_fails(command: list[str]) -> None:
    """A usage error, like a missing ACTION: its help went to stdout, where a script reads results."""
    out = run(*command)
    assert out.returncode == 2
    assert out.stdout == "" and "usage: mcphub" in out.stderr
    assert ("COMMAND" if command != ["audit"] else "ACTION") in out.stderr


def test_pack_given_twice_or_already_loaded_is_loaded_once(tmp_path: Path) -> None:
    """docs/browser.md and docs/shell.md say `mcphub serve --pack browser`: on the defaults, which
    have it, that was a second browser (two Chromiums), then refused as a pack named twice."""
    hub = start_hub(tmp_path, http=False, packs=["diagnostics", "diagnostics"])
    assert hub.stop() == 0
    assert "loaded 3 tools from 1 packs" in (tmp_path / "hub.log").read_text()


def test_serve_prints_one_ready_line_and_stops_cleanly(tmp_path: Path) -> None:
    hub = start_hub(tmp_path, http=True)
    # Room for sidecars and clients: the open-file limit raised as far as the hard limit lets.
    limits = (Path("/proc") / str(hub.process.pid) / "limits").read_text()
    soft, hard = next(line.split()[3:5] for line in limits.splitlines() if line.startswith("Max open files"))
    assert int(soft) == min(65536, int(hard)) or hard == "unlimited", (soft, hard)
    print(f"mcphub serve ready after {hub.ready_after_s:.2f}s")
    hub_file = hub.state_dir / "hub.json"
    assert json.loads(hub_file.read_text())["grpc"] == hub.grpc
    assert hub.stop() == 0
    assert not hub_file.exists()


def test_sighup_never_stops_a_hub_that_has_nothing_to_reload(tmp_path: Path) -> None:
    hub = start_hub(tmp_path, http=False)  # diagnostics only: no pack subscribes to SIGHUP
    hub.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    log = tmp_path / "hub.log"
    while "config reloaded" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hub.process.poll() is None
    out = run("call", "echo", "--hub", hub.grpc, "--args", '{"text": "still here"}')
    assert out.stdout == "still here", out.stderr
    assert hub.stop() == 0
    assert "SIGHUP: the hub was started without --config: only its operator.token is read again" in (
        log.read_text()
    )
    assert "config reloaded: nothing changed" in log.read_text()


def test_serve_on_embedded_defaults(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPHUB_")}
    env["HOME"] = str(tmp_path)
    env.pop("XDG_STATE_HOME", None)
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        # In a network namespace of its own: 7070 and 7071 may be taken on this machine.
        proc = subprocess.Popen(
            in_own_network(hub_command("serve")),
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
            cwd=REPO,
            start_new_session=True,  # its own process group, to press Ctrl-C on it below
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "mcphub ready: grpc 127.0.0.1:7070  mcp http://127.0.0.1:7071/mcp", line
        assert (tmp_path / ".local" / "state" / "mcphub" / "hub.json").exists()

        def mcphub(*args: str) -> subprocess.CompletedProcess[str]:
            command = joining_network(proc.pid, hub_command(*args))
            return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)

        out = mcphub("call", "echo", "--args", '{"text": "defaults"}')
        assert out.stdout.strip() == "defaults", out.stderr
        tools = mcphub("tools")
        names = {line.split()[0] for line in tools.stdout.splitlines()}
        assert {"echo", "shell_exec", "fs_read", "browser_navigate", "output_read"} <= names, tools.stdout
        jailed = mcphub("call", "shell_exec", "--args", '{"command": "id -un"}', "--json")
        assert json.loads(jailed.stdout)["structuredContent"]["stdout"] == "sandbox\n", jailed.stderr
        shown = mcphub("call", "shell_exec", "--args", '{"command": "echo out-line"}')
        # The command's stdout on ours, live and alone (`> file` holds what it printed, once);
        # the result, which repeats it, on stderr.
        assert shown.stdout == "out-line\n", shown.stdout
        assert "[exit code 0;" in shown.stderr
        # Also when it printed nothing there (nothing at all, or only on stderr), and with no
        # progress line cutting into the command's own stderr.
        for command, err in (("true", ""), ("ls /nosuch", "ls: cannot access '/nosuch'")):
            quiet = mcphub("call", "shell_exec", "--args", json.dumps({"command": command}))
            assert quiet.stdout == "", (command, quiet.stdout)
            assert quiet.stderr.startswith(err) and "[exit code " in quiet.stderr, (command, quiet.stderr)
            assert not re.search(r"^\[\d+\]", quiet.stderr, re.M), quiet.stderr
        # Chromium starts in the background after the ready line; stop the hub once it has.
        deadline = time.monotonic() + 60
        while not re.search(r"Chromium \S+ started", log_path.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        # Ctrl-C in a terminal signals the whole foreground group: the hub, the shell's spawner,
        # Playwright's driver. The hub must still stop its packs in order and say nothing alarming.
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    stderr = log_path.read_text()
    assert proc.returncode == 0, stderr
    assert re.search(r"Chromium \S+ started", stderr), stderr
    problems = [line for line in stderr.splitlines() if " ERROR " in line or "Traceback" in line]
    assert not problems, stderr


def test_tools_lists_names_and_json(open_hub: RunningHub) -> None:
    out = run("tools", "--hub", open_hub.grpc)
    assert out.returncode == 0, out.stderr
    assert any(line.startswith("echo ") and "[read-only]" in line for line in out.stdout.splitlines())
    as_json = run("tools", "--hub", open_hub.grpc, "--json")
    tools = {t["name"]: t for t in json.loads(as_json.stdout)}
    assert tools["echo"]["inputSchema"]["properties"]["text"]["type"] == "string"


def test_tools_finds_the_local_hub_through_the_state_dir(open_hub: RunningHub) -> None:
    out = run("tools", "--state-dir", str(open_hub.state_dir))
    assert out.returncode == 0 and "echo" in out.stdout


def test_call_prints_the_result_and_exits_zero(open_hub: RunningHub) -> None:
    out = run("call", "echo", "--args", '{"text": "hello"}', "--hub", open_hub.grpc)
    assert (out.returncode, out.stdout) == (0, "hello")


def test_call_shows_live_progress_on_stderr(open_hub: RunningHub) -> None:
    out = run("call", "sleep", "--args", '{"seconds": 0.3}', "--hub", open_hub.grpc)
    assert out.returncode == 0
    assert out.stdout == "slept 0.3s"
    assert "[  0%] sleeping 0.3s" in out.stderr and "[100%]" in out.stderr


def test_call_json_prints_the_mcp_result(open_hub: RunningHub) -> None:
    out = run(
        "call", "echo_json", "--args", '{"value": 12345678901234567890}', "--hub", open_hub.grpc, "--json"
    )
    assert out.returncode == 0
    assert json.loads(out.stdout)["structuredContent"] == {"value": 12345678901234567890}


def test_call_exit_codes(open_hub: RunningHub) -> None:
    tool_error = run("call", "echo", "--args", '{"text": 1}', "--hub", open_hub.grpc)
    assert tool_error.returncode == 1 and "not of type 'string'" in tool_error.stdout
    unknown = run("call", "nope", "--hub", open_hub.grpc)
    assert unknown.returncode == 3 and "unknown tool 'nope'" in unknown.stderr
    bad_json = run("call", "echo", "--args", "{text: hi}", "--hub", open_hub.grpc)
    assert bad_json.returncode == 2 and "--args is not valid JSON" in bad_json.stderr
    not_object = run("call", "echo", "--args", "[1]", "--hub", open_hub.grpc)
    assert not_object.returncode == 2 and "must be a JSON object" in not_object.stderr


@pytest.fixture(scope="module")
def hostile_hub(tmp_path_factory: pytest.TempPathFactory) -> Any:
    hub = start_hub(
        tmp_path_factory.mktemp("hostile"), packs=[str(REPO / "tests" / "packs" / "hostile.py")], http=False
    )
    yield hub
    hub.stop()


def on_terminals(*args: str) -> tuple[str, str]:
    """Run `mcphub ARGS` with its stdout and stderr on terminals (pseudo-terminals); what each got."""
    masters, slaves = zip(*(pty.openpty() for _ in range(2)), strict=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPHUB_")}
    try:
        proc = subprocess.run(
            hub_command(*args), stdout=slaves[0], stderr=slaves[1], timeout=60, env=env, cwd=REPO, check=False
        )
    finally:
        for fd in slaves:
            os.close(fd)
    got = []
    for fd in masters:
        data = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError as exc:  # EIO: the terminal's other side is closed and all was read
                assert exc.errno == errno.EIO
                break
            if not chunk:
                break
            data += chunk
        os.close(fd)
        got.append(data.decode().replace("\r\n", "\n"))
    assert proc.returncode == 0, got
    return got[0], got[1]


UNSEEN = ("\x1b]", "\x1b[2J", "\x07", "\u202e", "\u200b")
"""What the hostile tool sends that a terminal must not get (the CLI's own `\x1b[K` may)."""


def test_tools_lists_a_tools_description_escaped_and_json_exactly(hostile_hub: RunningHub) -> None:
    """A description that set the window title and cleared the screen of whoever listed the tools."""
    out = run("tools", "--hub", hostile_hub.grpc)
    assert out.returncode == 0, out.stderr
    line = next(line for line in out.stdout.splitlines() if line.startswith("hostile "))
    assert line.endswith("fine\\u001b]0;pwned\\u0007\\u001b[2J\\u202eevil  [read-only]"), line
    assert not any(c in out.stdout for c in UNSEEN), out.stdout
    as_json = run("tools", "--hub", hostile_hub.grpc, "--json")
    described = {t["name"]: t["description"] for t in json.loads(as_json.stdout)}
    assert described["hostile"] == hostile.DESCRIPTION


def test_call_escapes_a_tools_text_on_a_terminal_and_passes_its_data_exactly_down_a_pipe(
    hostile_hub: RunningHub,
) -> None:
    """Progress and status lines on stderr are escaped always; a result or a command's output is
    data: exact in a pipe or a file, escaped on a terminal (line breaks and tabs kept)."""
    progress = "[nan] \\u001b[31mRED\\u200b"
    piped = run("call", "hostile", "--hub", hostile_hub.grpc)
    assert (piped.returncode, piped.stdout) == (0, hostile.RESULT), piped
    assert progress in piped.stderr and not any(c in piped.stderr for c in UNSEEN), piped.stderr
    stdout, stderr = on_terminals("call", "hostile", "--hub", hostile_hub.grpc)
    assert stdout == "line one\\u001b[2J\nline\ttwo\\u202e\n", stdout
    assert progress in stderr and not any(c in stderr for c in UNSEEN), stderr

    # A command's own streams go live to ours, and its result (which repeats them) to stderr.
    output = ["call", "hostile", "--args", '{"output": true}', "--hub", hostile_hub.grpc]
    piped_bytes = subprocess.run(hub_command(*output), capture_output=True, timeout=60, cwd=REPO, check=False)
    assert piped_bytes.returncode == 0, piped_bytes
    assert piped_bytes.stdout == hostile.STDOUT + b"\n"
    assert hostile.STDERR + hostile.RESULT.encode() + b"\n" in piped_bytes.stderr
    stdout, stderr = on_terminals(*output)
    assert stdout == "out\\u001b]0;pwned\\u0007 \\u202e\n", stdout
    erased = stderr.replace("\r\x1b[K", "")  # the progress line, erased
    assert "err\\u001b[2J\nline one\\u001b[2J\nline\ttwo\\u202e\n" in erased, stderr
    assert not any(c in stdout + stderr for c in UNSEEN), (stdout, stderr)


def test_call_against_no_hub_says_how_to_start_one() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    out = run("call", "echo", "--args", '{"text": "x"}', "--hub", f"127.0.0.1:{free}", "--timeout", "5")
    assert out.returncode == 3
    assert "cannot reach a hub" in out.stderr and "mcphub serve" in out.stderr


def test_config_error_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "hub.yaml"
    config.write_text("grpc: 127.0.0.1:0\nprincipals:\n  - name: a\n    tokn: x\n")
    out = run("serve", "--config", str(config), "--state-dir", str(tmp_path / "s"))
    assert out.returncode == 2
    assert "principals.0.tokn: unknown key" in out.stderr


def test_non_loopback_without_principals_is_refused(tmp_path: Path) -> None:
    out = run("serve", "--grpc", "0.0.0.0:0", "--http", "off", "--state-dir", str(tmp_path))
    assert out.returncode == 2
    assert "grpc: binding 0.0.0.0:0 (not loopback) needs at least one entry under `principals`" in out.stderr


def test_env_overrides_and_bad_env_values_are_named(tmp_path: Path) -> None:
    out = run("serve", "--state-dir", str(tmp_path), env={"MCPHUB_GRPC": "nowhere"})
    assert out.returncode == 2
    assert "grpc" in out.stderr and "expected HOST:PORT" in out.stderr
    out = run("serve", "--http", "127.0.0.1:99999", "--state-dir", str(tmp_path))
    assert out.returncode == 2 and "port 99999 of '127.0.0.1:99999' is past 65535" in out.stderr, out.stderr
    assert "pydantic" not in out.stderr
    # Spelled as `logging` spells it, a level is taken.
    hub = start_hub(tmp_path / "hub", http=False, env={"MCPHUB_LOG_LEVEL": "DEBUG"})
    assert hub.stop() == 0
    assert " DEBUG " in (tmp_path / "hub" / "hub.log").read_text()


def test_busy_port_is_a_clear_error(tmp_path: Path, open_hub: RunningHub) -> None:
    out = run("serve", "--grpc", open_hub.grpc, "--http", "off", "--state-dir", str(tmp_path))
    assert out.returncode == 2
    assert f"cannot listen for gRPC on {open_hub.grpc}" in out.stderr


def test_short_tokens_are_refused(tmp_path: Path) -> None:
    out = serve_refused(tmp_path, {"principals": [{"name": "a", "token": "short"}]})
    assert out.returncode == 2
    assert "at least 16 characters" in out.stderr and "token: short" not in out.stderr


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["approve", ""], "give the id of the approval to approve"),
        (["deny", " ", "--reason", "no"], "give the id of the approval to deny"),
        (["deny", "apr_x", "--reason", "x" * 5000], "--reason is 5000 characters; at most 4096 are taken"),
    ],
    ids=["empty-id", "blank-id", "long-reason"],
)
def test_approval_decisions_the_hub_would_refuse_are_usage_errors(args: list[str], problem: str) -> None:
    """They were sent to the hub, whose invalid_argument came back as exit 3 (hub refused)."""
    out = run("approvals", *args, "--hub", "127.0.0.1:9", "--token", "x" * 20)
    assert out.returncode == 2 and problem in out.stderr, out.stderr


@pytest.mark.parametrize(
    ("args", "shape"),
    [
        (["approvals", "list", "--hub", "127.0.0.1:9", "--token", "x" * 20], ("unavailable", 3)),
        (["approvals", "approve", "apr_x", "--hub", "127.0.0.1:9", "--token", "x" * 20], ("unavailable", 3)),
        (["approvals", "approve", "", "--token", "x" * 20], ("invalid_argument", 2)),
        (["audit", "query", "--state-dir", "/nonexistent/state"], ("invalid_argument", 2)),
        (["audit", "verify", "--state-dir", "/nonexistent/state"], ("ok", 2)),
        (["serve", "--config", "/nonexistent/hub.yaml", "--http", "off"], ("invalid_argument", 2)),
    ],
    ids=["approvals-list", "approvals-approve", "approvals-usage", "audit-query", "audit-verify", "serve"],
)
def test_every_json_failure_is_one_json_document_on_stdout(args: list[str], shape: tuple[str, int]) -> None:
    """`call`, `tools` and `policy check` printed their --json failures as JSON; `approvals`,
    `audit` and `serve` printed nothing on stdout, and `approvals` said "cannot reach a hub" in
    other words than `tools`, without its hint."""
    out = run(*args, "--json")
    code, status = shape
    assert out.returncode == status, out.stderr
    message = out.stderr.removeprefix("mcphub: ").removesuffix("\n")
    assert message and "\n" not in message, out.stderr
    expected = (
        {"ok": False, "error": message} if code == "ok" else {"error": {"code": code, "message": message}}
    )
    assert json.loads(out.stdout) == expected, out.stdout
    if code == "unavailable":
        assert (
            message.startswith("cannot reach a hub at 127.0.0.1:9 (")
            and "start one with `mcphub serve`" in message
        )


def test_a_start_refused_for_its_config_creates_no_state(tmp_path: Path) -> None:
    """A config error (here a token variable not set) was found only after the state directory,
    its operator token and audit signing key were made: a mistyped state_dir was left behind."""
    config = {"principals": [{"name": "agent-1", "token_env": "MCPHUB_TEST_UNSET_TOKEN"}]}
    out = serve_refused(tmp_path, config)
    assert out.returncode == 2, out.stderr
    assert "environment variable MCPHUB_TEST_UNSET_TOKEN is not set" in out.stderr, out.stderr
    assert not (tmp_path / "state").exists()


def test_a_shared_token_is_a_config_error_and_an_unusable_state_directory_a_state_error(
    tmp_path: Path,
) -> None:
    """Exit 2 says: mend the config or the command line; 3: the state directory cannot be used as it is."""
    token = "shared-token-0123456789abcdef"
    twins = {"principals": [{"name": "a", "token": token}, {"name": "b", "token": token}]}
    out = serve_refused(tmp_path / "twins", twins)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "principals 'a' and 'b' share a token" in out.stderr and token not in out.stderr
    a_file = tmp_path / "not-a-directory"
    a_file.write_text("")
    out = run("serve", "--grpc", "127.0.0.1:0", "--http", "off", "--state-dir", str(a_file))
    assert out.returncode == 3 and "Traceback" not in out.stderr, out.stderr
    assert f"state directory {a_file}: File exists" in out.stderr
    used = tmp_path / "used"
    (used / "audit").mkdir(parents=True)
    (used / "audit" / "signing.key").mkdir()  # a directory where a file must be
    out = run("serve", "--grpc", "127.0.0.1:0", "--http", "off", "--state-dir", str(used))
    assert out.returncode == 3 and "Traceback" not in out.stderr, out.stderr
    assert f"state directory {used} ({used / 'audit' / 'signing.key'}): Is a directory" in out.stderr


@pytest.mark.parametrize(
    ("limit", "value", "words"),
    [
        ("RLIMIT_NOFILE", 16, "the open-file limit is 16 and cannot be raised"),
        ("RLIMIT_AS", 400 * 2**20, "the address-space limit is 400 MiB"),
    ],
    ids=["open-files", "address-space"],
)
def test_limits_too_low_for_a_hub_are_one_line_not_a_crash(
    tmp_path: Path, limit: str, value: int, words: str
) -> None:
    """Found by a tester: 16 open files crashed gRPC's core (a segfault), 32 gave a traceback,
    and a low address-space limit aborted the hub with pthread_create failures."""
    command = hub_command(
        "serve", "--grpc", "127.0.0.1:0", "--http", "off", "--state-dir", str(tmp_path / "s")
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPHUB_")}
    out = subprocess.run(
        exec_with(command, limits={limit: value}),
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    (line,) = out.stderr.splitlines()
    assert line.startswith(f"mcphub: {words}") and "raise it" in line, line


@pytest.mark.parametrize("name", ["operator.token", "audit/signing.key"])
def test_a_start_that_cannot_write_its_secrets_leaves_none_half_written(tmp_path: Path, name: str) -> None:
    """A disk that fills as the hub writes its token or key: that start fails, and the
    next one, the disk freed, makes the file afresh instead of taking an empty one for it.
    Exit 3: the state directory's disk, not the config, is what stops it."""
    state = tmp_path / "state"
    if name != "operator.token":
        state.mkdir()
        (state / "operator.token").write_text("op_" + "t" * 43 + "\n")
        (state / "operator.token").chmod(0o600)
    command = hub_command("serve", "--grpc", "127.0.0.1:0", "--http", "off", "--state-dir", str(state))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPHUB_")}
    env |= {"MCPHUB_PACKS": "diagnostics", "PYTHONDONTWRITEBYTECODE": "1"}
    # Writes past 8 bytes of a file fail (EFBIG), as on a full disk.
    full = subprocess.run(
        exec_with(command, limits={"RLIMIT_FSIZE": 8}, ignore=["SIGXFSZ"]),
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO,
    )
    assert full.returncode == 3 and "Traceback" not in full.stderr, full.stderr
    assert "File too large" in full.stderr
    assert not (state / name).exists()
    assert not [p.name for p in (state / name).parent.iterdir() if p.name.endswith(".tmp")]
    hub = start_hub(tmp_path, http=False)
    assert hub.stop() == 0
    assert len((state / name).read_text().strip()) >= 43


@pytest.mark.parametrize("name", ["operator.token", "audit/signing.key"])
def test_an_empty_secret_file_an_older_hub_left_is_made_afresh(tmp_path: Path, name: str) -> None:
    (tmp_path / "state" / "audit").mkdir(parents=True)
    (tmp_path / "state" / name).write_bytes(b"")
    hub = start_hub(tmp_path, http=False)
    assert hub.stop() == 0
    assert len((tmp_path / "state" / name).read_text().strip()) >= 43


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("operator.token", b"short\n", "not an operator token"),
        ("operator.token", b"\xff\xfe" * 20, "not an operator token"),
        ("audit/signing.key", b"garbage", "not an Ed25519 signing key (32 bytes in base64)"),
        ("audit/signing.key", b"YWJjZA==", "not an Ed25519 signing key (32 bytes in base64)"),
        ("audit/signing.pub", b"notbase64!!\n", "not an Ed25519 public key (32 bytes in base64)"),
    ],
    ids=["short-token", "binary-token", "garbage-key", "short-key", "garbage-public-key"],
)
def test_a_corrupt_secret_file_is_a_one_line_error_naming_it(
    tmp_path: Path, name: str, content: bytes, words: str
) -> None:
    (tmp_path / "state" / "audit").mkdir(parents=True)
    (tmp_path / "state" / name).write_bytes(content)
    (tmp_path / "state" / name).chmod(0o600)
    out = serve_refused(tmp_path, {"packs": ["diagnostics"]})
    assert out.returncode == 3 and "Traceback" not in out.stderr, out.stderr
    (line,) = out.stderr.splitlines()
    assert line.startswith(f"mcphub: {tmp_path / 'state' / name}: {words}"), line
    assert (tmp_path / "state" / name).read_bytes() == content  # left for the operator to look at


POLICY_HUB = """
principals:
  - {name: limited, token: limited-token-0123456789, tools: ["echo"]}
  - {name: alice, token: alice-token-0123456789ab, roles: [approver]}
policy:
  extends: default
  rules:
    - {name: prod, tools: [echo], args: {text: "prod*"}, decision: ask, approvers: [oncall]}
"""


def test_policy_explain_asks_the_principals_tools_before_the_policy(tmp_path: Path) -> None:
    config = tmp_path / "hub.yaml"
    config.write_text(POLICY_HUB)
    common = ["--config", str(config), "--state-dir", str(tmp_path / "s")]
    refused = run("policy", "explain", "sleep", "--principal", "limited", *common, "--json")
    assert refused.returncode == 0, refused.stderr
    out = json.loads(refused.stdout)
    assert (out["decision"], out["authorized"], out["status"]) == ("deny", False, "PERMISSION_DENIED")
    assert out["reason"] == "principal 'limited' may not call 'sleep' (its tools: echo)"
    allowed = run("policy", "explain", "echo", "--principal", "limited", "--args", '{"text": "x"}', *common)
    assert allowed.stdout.startswith("ALLOW: echo for limited"), allowed.stdout
    stranger = run("policy", "explain", "echo", "--principal", "nobody", *common)
    assert "no principal 'nobody' in the config (its principals: limited, alice)" in stranger.stdout
    assert "(UNAUTHENTICATED)" in stranger.stdout
    host = run("policy", "explain", "sleep", "--principal", "operator", *common)  # the host's own
    assert host.stdout.startswith("ALLOW: sleep for operator"), host.stdout


def test_policy_explain_says_when_the_tool_refuses_what_the_policy_would_ask(tmp_path: Path) -> None:
    """docs/cloud.md: a call its pack refuses before sending anything is refused at once, even
    where the policy asks; `explain` said ASK."""
    config = tmp_path / "hub.yaml"
    config.write_text("packs:\n  - {name: cloud, options: {examples: [github]}}\n")
    env = {"GITHUB_TOKEN": "ghp_" + "f" * 36}
    args = '{"service": "github", "method": "POST", "path": "/nope"}'
    out = run("policy", "explain", "http_request", "--config", str(config), "--args", args, env=env)
    assert out.returncode == 0 and out.stdout.startswith("REFUSED BY THE TOOL: http_request"), out
    assert "POST /nope is not allowed for service 'github'" in out.stdout
    as_json = run(
        "policy", "explain", "http_request", "--config", str(config), "--args", args, "--json", env=env
    )
    assert json.loads(as_json.stdout)["tool_refuses"].startswith("POST /nope is not allowed")
    allowed = '{"service": "github", "method": "GET", "path": "/user"}'
    out = run("policy", "explain", "http_request", "--config", str(config), "--args", allowed, env=env)
    assert out.stdout.startswith("ALLOW: http_request"), out.stdout


def test_policy_explain_reads_each_http_requests_own_risk(tmp_path: Path) -> None:
    """As the gate does: the render example has destructive routes, so http_request is listed
    destructive; `explain` said ASK (rule `destructive tools`) for a plain GET."""
    config = tmp_path / "hub.yaml"
    config.write_text("packs:\n  - {name: cloud, options: {examples: [render]}}\n")
    env = {"RENDER_API_KEY": "rnd_" + "f" * 24}
    read = '{"service": "render", "method": "GET", "path": "/services"}'
    out = run("policy", "explain", "http_request", "--config", str(config), "--args", read, env=env)
    assert out.stdout.startswith("ALLOW: http_request") and "reading cloud APIs" in out.stdout, out
    suspend = '{"service": "render", "method": "POST", "path": "/services/srv-1/suspend"}'
    out = run("policy", "explain", "http_request", "--config", str(config), "--args", suspend, env=env)
    assert out.stdout.startswith("ASK: http_request") and "destructive tools" in out.stdout, out


def test_policy_check_names_duplicate_rules_and_rules_nobody_can_approve(tmp_path: Path) -> None:
    twice = tmp_path / "twice.yaml"
    twice.write_text("rules:\n  - {name: a, decision: allow}\n  - {name: a, decision: deny}\n")
    out = run("policy", "check", str(twice))
    assert out.returncode == 2 and "rules.1.name: 'a' is also the name of rules.0" in out.stderr, out.stderr
    out = run("policy", "check", str(twice), "--json")
    assert out.returncode == 2 and json.loads(out.stdout)["ok"] is False
    hub = tmp_path / "hub.yaml"
    hub.write_text(POLICY_HUB)
    out = run("policy", "check", str(hub), "--json")
    assert out.returncode == 0, out.stderr
    (warning,) = json.loads(out.stdout)["warnings"]
    assert warning.startswith("rule 'prod' asks an approver in oncall, and no principal with the role")
    oncall = POLICY_HUB.replace("roles: [approver]}", "roles: [approver], groups: [oncall]}")
    hub.write_text(oncall)
    assert json.loads(run("policy", "check", str(hub), "--json").stdout)["warnings"] == []
    # A hub config with no principals at all: nobody can approve, as the hub says at start.
    nobody = tmp_path / "nobody.yaml"
    nobody.write_text("policy:" + POLICY_HUB.split("policy:", 1)[1])
    (warning,) = json.loads(run("policy", "check", str(nobody), "--json").stdout)["warnings"]
    assert warning.startswith("rule 'prod' asks an approver in oncall"), warning
    # A hub config that leaves the policy to the default checks as the default, not as a policy
    # document full of unknown keys.
    plain = tmp_path / "plain.yaml"
    plain.write_text("grpc: 127.0.0.1:0\npacks: [diagnostics]\n")
    out = run("policy", "check", str(plain))
    assert out.returncode == 0 and "without `policy:`, so the shipped default" in out.stdout, out
    broad = tmp_path / "broad.yaml"
    broad.write_text("extends: default\nrules:\n  - {name: all, tools: ['*'], decision: allow}\n")
    out = run("policy", "check", str(broad))
    assert "warning: rule 'all' allows every tool no rule of the default policy names" in out.stderr
    started = start_hub(tmp_path / "hub", config=yaml.safe_load(POLICY_HUB), http=False)
    tokenless = run("call", "echo", "--hub", started.grpc, "--args", '{"text": "x"}')
    assert tokenless.returncode == 3, tokenless.stderr
    assert "(give mcphub a token with --token or $MCPHUB_TOKEN)" in tokenless.stderr
    assert started.stop() == 0
    log = (tmp_path / "hub" / "hub.log").read_text()
    assert "WARNING mcp_remote.hub: policy: rule 'prod' asks an approver in oncall" in log, log


def test_policy_check_checks_a_hub_config_as_serve_reads_it(tmp_path: Path) -> None:
    """`policy check hub.yaml --json` said {"ok": true} of a config `serve` refuses (an unknown
    key, a token too short): a CI step validating a config before SIGHUP could not trust it."""
    hub = tmp_path / "hub.yaml"
    for text, problem in (
        (POLICY_HUB + "grpcc: 1\n", "grpcc: unknown key (check the spelling"),
        ("principals:\n  - {name: a, token: short}\n", "principals[a]: the token must be at least 16"),
        ("grpc: 127.0.0.1:99999\npolicy: {rules: []}\n", "port 99999"),
    ):
        hub.write_text(text)
        refused = run("serve", "--config", str(hub), env={"HOME": str(tmp_path)})
        assert refused.returncode == 2 and problem in refused.stderr, refused.stderr
        out = run("policy", "check", str(hub), "--json")
        assert out.returncode == 2, out.stdout
        verdict = json.loads(out.stdout)
        assert verdict["ok"] is False and problem in verdict["error"] and str(hub) in verdict["error"]
        out = run("policy", "check", str(hub))
        assert out.returncode == 2 and problem in out.stderr, out.stderr
    # Tokens a hub reads from a variable or a file are read where it runs, not here.
    hub.write_text("principals:\n  - {name: a, token_env: NOT_SET_HERE}\n")
    assert json.loads(run("policy", "check", str(hub), "--json").stdout)["ok"] is True


def test_unknown_pack_lists_the_installed_ones(tmp_path: Path) -> None:
    out = serve_refused(tmp_path, None, "--pack", "nosuchpack")
    assert out.returncode == 2
    assert "pack 'nosuchpack': no such pack (installed packs:" in out.stderr and "diagnostics" in out.stderr


def test_stdio_bridge_requires_a_transport() -> None:
    out = run("bridge")
    assert out.returncode == 2 and "--stdio" in out.stderr


def test_sys_executable_is_the_venv() -> None:
    # The suite runs `python -m mcp_remote.cli`; make sure the console script exists too.
    script = Path(sys.executable).with_name("mcphub")
    assert script.exists()


def test_serve_help_names_every_config_key_and_environment_variable() -> None:
    from mcp_remote.config import (
        DEFAULT_PACKS,
        ENV_OVERRIDES,
        ApprovalsConfig,
        AuditConfig,
        HubConfig,
        PackConfig,
        PrincipalConfig,
    )

    out = subprocess.run(hub_command("serve", "--help"), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())  # argparse may wrap anywhere
    words = set(re.findall(r"[A-Za-z_]+", text))
    for model in (HubConfig, AuditConfig, ApprovalsConfig, PrincipalConfig, PackConfig):
        missing = set(model.model_fields) - words
        assert not missing, f"{model.__name__}: {sorted(missing)} not in `mcphub serve --help`"
    assert not set(ENV_OVERRIDES) - words
    assert all(name in words for name in DEFAULT_PACKS)


@pytest.mark.parametrize(
    ("command", "says"),
    [
        (["approvals", "list"], "print one JSON array of the approvals"),
        (["approvals", "watch"], "print each approval as a line of JSON"),
        (["approvals", "approve"], "print the decided approval as a JSON object"),
        (["sandboxes", "list"], "print one JSON array of the sandboxes"),
    ],
)
def test_json_help_says_what_is_printed(command: list[str], says: str) -> None:
    """`approvals list --help` said "one object per approval" of what is one array."""
    out = run(*command, "--help")
    assert out.returncode == 0, out.stderr
    assert says in " ".join(out.stdout.split())


def test_the_operators_token_is_not_sent_to_the_port_of_a_hub_that_died(tmp_path: Path) -> None:
    """A hub killed with -9 leaves its hub.json: whatever listens on its port now is not it."""
    import argparse

    from mcp_remote.cli_admin import operator_token
    from mcp_remote.statedir import write_hub_file

    (tmp_path / "operator.token").write_text("op_local-operator-token\n")
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    args = argparse.Namespace(token=None, state_dir=tmp_path)
    (tmp_path / "hub.json").write_text(json.dumps({"grpc": "127.0.0.1:7070", "pid": int(gone.stdout)}))
    assert operator_token(args, {}, "127.0.0.1:7070") is None
    # A live process under the pid is not enough: it must be the one that wrote the file.
    (tmp_path / "hub.json").write_text(json.dumps({"grpc": "127.0.0.1:7070", "pid": os.getpid()}))
    assert operator_token(args, {}, "127.0.0.1:7070") is None  # pytest's command line is no hub's
    write_hub_file(tmp_path, "127.0.0.1:7070", None)  # this process, with its start time
    assert operator_token(args, {}, "127.0.0.1:7070") == "op_local-operator-token"


def test_the_approvals_cli_says_why_it_sent_no_operator_token(tmp_path: Path) -> None:
    """The hub's answer to a caller without a token ("principal 'local' does not have the
    approver role") was all `approvals list --hub ADDR --state-dir DIR` said when DIR was not
    that hub's: not that mcphub had sent no token, nor why."""
    from mcp_remote.statedir import write_hub_file

    hub = start_hub(tmp_path / "hub", config={"packs": ["diagnostics"]}, http=False)
    other = tmp_path / "other"
    other.mkdir()
    try:

        def approvals(state_dir: Path) -> subprocess.CompletedProcess[str]:
            return run("approvals", "list", "--hub", hub.grpc, "--state-dir", str(state_dir))

        advice = "(pass --token or $MCPHUB_TOKEN, or --state-dir of the hub at that address)"
        not_sending = f"mcphub: not sending {other}'s operator token to {hub.grpc}"
        out = approvals(other)
        assert out.returncode == 3, out.stderr
        assert out.stderr.splitlines() == [
            f"{not_sending}: no hub is running from that state directory (it has no hub.json) {advice}",
            "mcphub: permission_denied: principal 'local' does not have the approver role",
        ]
        write_hub_file(other, "127.0.0.1:1", None)  # a live hub's file (this process's)
        out = approvals(other)
        assert out.stderr.splitlines()[0] == (
            f"{not_sending}: the hub running from that state directory listens on 127.0.0.1:1 {advice}"
        )
        own = approvals(hub.state_dir)
        assert (own.returncode, own.stderr) == (0, "0 approvals\n")
    finally:
        assert hub.stop() == 0


def test_which_hub_a_client_command_talks_to(tmp_path: Path) -> None:
    """--state-dir on the command line wins over $MCPHUB_HUB (the variable won); a hub.json whose
    hub died (-9) is not followed to a port that may be another hub's now (it was, blindly); and
    a --state-dir no hub runs from is said to be so (the default address was dialed instead)."""
    hub = start_hub(tmp_path / "hub", http=False)
    try:
        elsewhere = {"MCPHUB_HUB": "127.0.0.1:1"}
        out = run("tools", "--json", "--state-dir", str(hub.state_dir), env=elsewhere)
        assert out.returncode == 0 and "echo" in out.stdout, out.stderr
        assert run("tools", "--json", env=elsewhere).returncode == 3  # without --state-dir, the variable

        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
        stale = tmp_path / "stale"
        stale.mkdir()
        # Its port is the running hub's now: the old code reached it, under the dead hub's name.
        (stale / "hub.json").write_text(json.dumps({"grpc": hub.grpc, "pid": int(gone.stdout)}))
        for command in (["tools"], ["sandboxes", "list"], ["approvals", "list"]):
            out = run(*command, "--state-dir", str(stale))
            assert out.returncode == 3, out.stderr
            assert (
                f"mcphub: the hub that wrote {stale}/hub.json (pid {int(gone.stdout)}, at {hub.grpc}) "
                "is not running: start it again, or name a hub with --hub HOST:PORT"
            ) in out.stderr.splitlines(), out.stderr

        # A live pid that is not the hub that wrote the file (its pid reused after a kill -9, here
        # this test's own): it was followed, with the state directory's operator token.
        reused = tmp_path / "reused"
        reused.mkdir()
        (reused / "hub.json").write_text(json.dumps({"grpc": hub.grpc, "pid": os.getpid(), "started": 1}))
        (reused / "operator.token").write_text("not-to-be-sent-anywhere")
        for command in (["tools"], ["approvals", "list"]):
            out = run(*command, "--state-dir", str(reused))
            assert (
                out.returncode == 3 and f"(pid {os.getpid()}, at {hub.grpc}) is not running" in out.stderr
            ), out.stderr

        empty = tmp_path / "empty"
        empty.mkdir()
        out = run("tools", "--state-dir", str(empty))
        assert (out.returncode, out.stdout) == (3, ""), out.stderr
        assert out.stderr == (
            f"mcphub: no hub is running from {empty} (it has no hub.json); start one with "
            f"`mcphub serve --state-dir {empty}`, or name a hub with --hub HOST:PORT\n"
        )
    finally:
        assert hub.stop() == 0


@pytest.mark.parametrize(
    ("flag", "value", "problem"),
    [
        ("--grpc", "http://127.0.0.1:0", "expected HOST:PORT, without a scheme (e.g. 127.0.0.1:7070)"),
        ("--http", "https://localhost:0", "expected HOST:PORT, without a scheme (e.g. 127.0.0.1:7070)"),
        ("--grpc", "local host:0", "'local host' of 'local host:0' is no host name or IP address"),
    ],
)
def test_serve_refuses_an_address_that_is_no_host_and_port(
    tmp_path: Path, flag: str, value: str, problem: str
) -> None:
    """`serve --grpc http://127.0.0.1:7070` was taken as the host "http://127.0.0.1", and refused
    as a non-loopback bind without principals: its operator went looking at the wrong thing."""
    out = run("serve", flag, value, "--state-dir", str(tmp_path / "state"))
    assert out.returncode == 2 and f"argument {flag}: {problem}" in out.stderr, out.stderr
    assert "principals" not in out.stderr and not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    ("hub", "problem"),
    [
        ("127.0.0.1:99999", "port 99999 of '127.0.0.1:99999' is past 65535"),
        ("http://127.0.0.1:7070", "expected HOST:PORT, without a scheme (e.g. 127.0.0.1:7070), got 'http"),
        ("36413", "expected HOST:PORT (e.g. 127.0.0.1:7070), got '36413'"),
        ("127.0.0.1:0", "port 0 is no hub's port"),
    ],
)
def test_a_hub_address_that_is_no_address_is_bad_usage(hub: str, problem: str) -> None:
    """`--hub 127.0.0.1:99999` dialed port 34463 (wrapped), and the others "cannot reach a hub"
    (exit 3): a typo sent its operator looking for a hub that is down."""
    for command in (["tools"], ["sandboxes", "list"], ["approvals", "list"]):
        out = run(*command, "--hub", hub)
        assert out.returncode == 2 and problem in out.stderr, out.stderr
        assert "usage: mcphub" in out.stderr
    out = run("tools", env={"MCPHUB_HUB": hub})
    assert out.returncode == 2 and out.stderr.startswith("mcphub: $MCPHUB_HUB: ") and problem in out.stderr


@pytest.mark.parametrize(
    ("content", "problem"),
    [('{"grpc": 5', "not JSON: "), ('{"pid": 1}', "no gRPC address in it")],
    ids=["cut-short", "no-address"],
)
def test_a_hub_file_that_cannot_be_read_is_named(tmp_path: Path, content: str, problem: str) -> None:
    """`mcphub call --state-dir DIR` said only "cannot reach a hub at 127.0.0.1:7070 ... start one
    with `mcphub serve`", while the hub ran and its hub.json was what could not be read."""
    hub = start_hub(tmp_path, http=False)
    try:
        hub_file = hub.state_dir / "hub.json"
        hub_file.write_text(content)
        # Found through $MCPHUB_STATE_DIR, the default address is tried (it may be the hub).
        found = {"MCPHUB_STATE_DIR": str(hub.state_dir)}
        out = run("call", "echo", "--args", '{"text": "hi"}', env=found)
        first = out.stderr.splitlines()[0]
        assert first.startswith(f"mcphub: {hub_file}: not the file a hub writes ({problem}"), out.stderr
        assert first.endswith("; looking for the hub at 127.0.0.1:7070 (--hub ADDRESS names it)"), first
        # Given with --state-dir, it is not: the caller's token must not go to whoever listens there.
        out = run("call", "echo", "--args", '{"text": "hi"}', "--state-dir", str(hub.state_dir))
        assert out.returncode == 3 and out.stderr.startswith(f"mcphub: {hub_file}: not the file"), out.stderr
        assert out.stderr.rstrip().endswith("; name the hub with --hub HOST:PORT"), out.stderr
        named = run("call", "echo", "--args", '{"text": "hi"}', "--hub", hub.grpc)
        assert (named.returncode, named.stdout, named.stderr) == (0, "hi", "")
    finally:
        assert hub.stop() == 0


def test_a_yaml_syntax_error_names_the_line_but_never_prints_it(tmp_path: Path) -> None:
    # PyYAML's own message quotes the offending line: here, a principal's token.
    config = tmp_path / "bad.yaml"
    config.write_text('principals:\n  - {name: a, token: "InlineTok_AAAA1111bbbb}\n')
    for command in (["serve", "--config", str(config)], ["policy", "check", str(config)]):
        out = run(*command, env={"HOME": str(tmp_path)})
        assert out.returncode == 2, out.stderr
        assert "not valid YAML: line 3, column 1: found unexpected end of stream" in out.stderr
        assert "from line 2, column 22" in out.stderr
        assert "InlineTok" not in out.stderr + out.stdout


def test_a_file_that_is_not_utf8_is_a_one_line_error_naming_it(tmp_path: Path) -> None:
    """Found by a tester: a config file of other bytes gave a UnicodeDecodeError traceback."""
    config = tmp_path / "latin1.yaml"
    config.write_bytes(b"principals:\n  - {name: caf\xe9, token: secret-\x92-token}\n")
    for command in (["serve", "--config", str(config)], ["policy", "check", str(config)]):
        out = run(*command, env={"HOME": str(tmp_path)})
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert (
            f"{config}: the " in out.stderr
            and "file is not UTF-8 text (byte 26: 0xe9); save it as UTF-8" in out.stderr
        )
        assert "secret" not in out.stderr
    manifest = tmp_path / "manifest.yaml"
    manifest.write_bytes(b"packs: [diagnostics]\n# \xff\n")
    out = run("local", "check", "--manifest", str(manifest), env={"HOME": str(tmp_path)})
    assert out.returncode == 2 and "the manifest is not UTF-8 text (byte 23: 0xff)" in out.stderr, out.stderr


def faulty(events: Path, **options: str) -> dict[str, object]:
    """A pack entry of tests/packs/faulty.py, reporting its starts and stops to `events`."""
    return {"name": FAULTY_PACK, "options": {"events": str(events), **options}}


def test_a_pack_named_like_another_is_refused(tmp_path: Path) -> None:
    """It silently took over the other pack's tools: `echo` answered by the impostor."""
    config = {"packs": ["diagnostics", faulty(tmp_path / "events", name="diagnostics")]}
    out = serve_refused(tmp_path, config)
    assert out.returncode == 2, out.stderr
    assert out.stderr == (
        f"mcphub: packs[{FAULTY_PACK}]: pack {FAULTY_PACK!r} is named 'diagnostics', like the pack of "
        "packs[diagnostics]: two packs may not share a name (the second would take over the first one's "
        "tools); remove or rename one\n"
    )


@pytest.mark.parametrize("fail", ["create", "start", "start-oserror"])
def test_a_pack_that_fails_to_load_is_named_and_the_packs_before_it_stop(tmp_path: Path, fail: str) -> None:
    """A RuntimeError ended `mcphub serve` with a traceback and exit 1; an OSError printed
    "mcphub: svc down", naming no pack."""
    events = tmp_path / "events"
    out = serve_refused(tmp_path, {"packs": [faulty(events, name="first"), faulty(events, fail=fail)]})
    assert out.returncode == 2, out.stderr
    error = {"create": "creating it failed: RuntimeError", "start": "start() failed: RuntimeError"}
    what = error.get(fail, "start() failed: OSError: svc down")
    assert out.stderr.startswith(f"mcphub: packs[{FAULTY_PACK}]: pack {FAULTY_PACK!r}: {what}"), out.stderr
    assert "Traceback" not in out.stderr
    assert events.read_text().splitlines()[-1] == "stop first"


def test_a_signal_while_a_pack_starts_stops_the_hub(tmp_path: Path) -> None:
    """A pack whose start() never returned left a hub that ignored SIGTERM and SIGINT, with no
    line naming the pack: only SIGKILL ended it."""
    events = tmp_path / "events"
    config = tmp_path / "hub.yaml"
    packs = [faulty(events, name="first"), faulty(events, name="stuck", start="hang")]
    config.write_text(yaml.safe_dump({"packs": packs}))
    command = hub_command("serve", "--config", str(config), "--grpc", "127.0.0.1:0", "--http", "off")
    log_path = tmp_path / "hub.log"
    with log_path.open("wb") as log:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MCPHUB_")}
        env["MCPHUB_STATE_DIR"] = str(tmp_path / "state")
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while "starting for ever" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    stderr = log_path.read_text()
    assert f"packs[{FAULTY_PACK}]: stopped while pack 'stuck' was starting" in stderr, stderr
    assert stderr.endswith("mcphub: SIGTERM while starting: stopped before the hub was ready\n"), stderr
    assert events.read_text().splitlines() == ["start first", "start stuck", "stop first"]


def test_a_precheck_that_raises_leaves_the_call_to_the_gate(tmp_path: Path) -> None:
    """The gate asks a tool's precheck before it asks a person: one that raised ended the call
    with INTERNAL "internal error in the hub"."""
    hub = start_hub(tmp_path, config={"packs": [faulty(tmp_path / "events", tools="precheck")]}, http=False)
    try:
        out = run("call", "checked_tool", "--timeout", "2", "--hub", hub.grpc)
    finally:
        assert hub.stop() == 0
    assert out.returncode == 3, out.stderr
    assert "waiting for approval" in out.stderr and "internal" not in out.stderr, out.stderr
    assert "ERROR mcp_local.packs: the precheck of tool checked_tool raised" in hub.log()


def test_a_pack_that_never_stops_does_not_keep_the_hub_running(tmp_path: Path) -> None:
    """A stop() that never returned kept the hub alive after SIGTERM, and the packs before it
    were never stopped."""
    events = tmp_path / "events"
    packs = [faulty(events, name="first"), faulty(events, name="stuck", stop="hang")]
    hub = start_hub(tmp_path, config={"packs": packs}, http=False)
    began = time.monotonic()
    assert hub.stop(timeout=30) == 0
    assert time.monotonic() - began < 15
    assert events.read_text().splitlines()[2:] == ["stop stuck", "stop first"]
    assert "ERROR mcp_local.packs: pack stuck did not stop within 5s; stopping the others" in hub.log()


def test_a_result_no_caller_can_receive_is_recorded_as_the_tools_error(tmp_path: Path) -> None:
    """A handler returning 42 ended the call with INTERNAL "internal error in the hub", naming
    no tool, and the audit log recorded the call as ok."""
    hub = start_hub(tmp_path, config={"packs": [faulty(tmp_path / "events", tools="wrong")]}, http=False)
    try:
        out = run("call", "wrong_int", "--hub", hub.grpc)
        assert out.returncode == 1, out.stderr
        assert (
            out.stdout
            == "wrong_int failed: it returned int 42, not a ToolResult or a str (a bug in the tool)"
        )
    finally:
        assert hub.stop() == 0
    audit = run("audit", "query", "--state-dir", str(hub.state_dir), "--json", "--tool", "wrong_int")
    finished = [json.loads(line) for line in audit.stdout.splitlines() if '"finished"' in line]
    assert [r["body"]["status"] for r in finished] == ["tool_error"], audit.stdout
    assert "ERROR mcp_local.pipeline: tool wrong_int (pack:faulty) returned int 42" in hub.log()


def test_version_names_the_package_version_and_the_checkouts_commit(tmp_path: Path) -> None:
    """Both sides of an upgrade said 0.1.0 everywhere, and `mcphub --version` did not exist."""
    from importlib.metadata import version

    from mcp_remote.version import checkout_commit

    out = run("--version")
    assert out.returncode == 0, out.stderr
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO, check=False)
    expected = f"mcphub {version('mcphub')}"
    if head.returncode == 0:  # the suite runs from a checkout (a worktree's `.git` is a file)
        expected += f" (commit {head.stdout.strip()[:12]})"
    assert out.stdout == expected + "\n"
    assert checkout_commit(tmp_path) is None  # no checkout there: no commit, and no error


def test_a_method_the_hub_lacks_says_the_hub_may_be_older_than_the_cli(tmp_path: Path) -> None:
    """A newer CLI against an older hub (`sandboxes forget`) said only "unimplemented: Method
    not found!". A sidecar's gRPC server has no sandbox registry: it stands for such a hub."""
    from tests.support.sidecar import start_sidecar

    sidecar = start_sidecar(tmp_path, {"packs": ["diagnostics"]})
    try:
        out = run("sandboxes", "forget", "sbx-1", "--hub", sidecar.grpc, "--token", "t" * 20)
    finally:
        sidecar.stop()
    assert out.returncode == 3
    assert out.stderr.startswith("mcphub: unimplemented: Method not found!"), out.stderr
    assert f"the hub at {sidecar.grpc} may be older than this CLI, mcphub " in out.stderr
    assert out.stderr.count("\n") == 1

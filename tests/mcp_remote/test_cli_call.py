"""`mcphub call` and `mcphub tools` as a script uses them: which stream gets what, exact results,
arguments from a file or stdin, one-line errors with distinct exit codes, JSON errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TOKENS
from tests.mcp_remote.tools.conftest import SHELL_OPTIONS
from tests.support.execwith import exec_with
from tests.support.hub import PROBE_PACK, REPO, RunningHub, hub_command, start_hub

AGENT = TOKENS["agent-a"]


def run(
    *args: str, env: dict[str, str] | None = None, input: bytes | None = None, **popen: Any
) -> subprocess.CompletedProcess[bytes]:
    """`mcphub ARGS`, its output as bytes (what a file would hold)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MCPHUB_")}
    full_env.update(env or {})
    options: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE} | popen
    return subprocess.run(
        hub_command(*args), input=input, timeout=60, env=full_env, cwd=REPO, check=False, **options
    )


def one_line(stderr: bytes) -> str:
    """The single line of a one-line error (no traceback)."""
    text = stderr.decode()
    assert text.count("\n") == 1 and text.startswith("mcphub: "), text
    return text


@pytest.fixture(scope="module")
def shell_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    """The shell pack (jail), a deny rule, and principals, so that an approval stays pending."""
    config = {
        "policy": {
            "rules": [
                {
                    "name": "no force push",
                    "tools": ["shell_exec"],
                    "argv": [["git", "push", "--force|-f"]],
                    "decision": "deny",
                },
                {"name": "everything else, for these tests", "decision": "allow"},
            ]
        },
        "principals": [
            {"name": "agent-a", "token": AGENT},
            {"name": "approver", "token": TOKENS["approver"], "roles": ["approver"]},
        ],
        "packs": [{"name": "diagnostics"}, {"name": "shell", "options": SHELL_OPTIONS}],
    }
    hub = start_hub(tmp_path_factory.mktemp("cli-shell-hub"), config=config, packs=[PROBE_PACK], http=False)
    yield hub
    hub.stop()


def call(
    hub: RunningHub, tool: str, arguments: dict[str, Any], *extra: str
) -> subprocess.CompletedProcess[bytes]:
    return run("call", tool, "--args", json.dumps(arguments), "--hub", hub.grpc, "--token", AGENT, *extra)


def test_only_a_commands_result_goes_to_stderr(shell_hub: RunningHub) -> None:
    """shell_start, shell_status and shell_read answer with an exit code in their result (null
    while running): their answer is not a command's output, and went to stderr, stdout empty."""
    started = call(shell_hub, "shell_start", {"command": "echo started-line"})
    assert started.returncode == 0, started
    assert started.stdout.startswith(b"started proc_"), started
    process_id = json.loads(call(shell_hub, "shell_start", {"command": "true"}, "--json").stdout)[
        "structuredContent"
    ]["process_id"]
    status = call(shell_hub, "shell_status", {"process_id": process_id})
    assert status.returncode == 0 and b'"exit_code"' in status.stdout, status
    read = call(shell_hub, "shell_read", {"process_id": process_id, "offset": 0})
    assert read.returncode == 0 and read.stdout, read
    # A command that printed nothing: its result ("[exit code 0; ...]") on stderr still.
    quiet = call(shell_hub, "shell_exec", {"command": "true"})
    assert (quiet.returncode, quiet.stdout) == (0, b""), quiet
    assert b"[exit code 0;" in quiet.stderr


def test_a_refused_command_leaves_stdout_to_what_it_would_have_printed(shell_hub: RunningHub) -> None:
    denied = call(shell_hub, "shell_exec", {"command": "git push --force"})
    assert (denied.returncode, denied.stdout) == (3, b""), denied
    assert b"refused by policy rule 'no force push'" in denied.stderr
    # --json: the refusal is the MCP result, on stdout.
    as_json = call(shell_hub, "shell_exec", {"command": "git push --force"}, "--json")
    assert as_json.returncode == 3
    assert json.loads(as_json.stdout)["_meta"]["dev.mcphub/refused"] == "policy"


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ('{"seconds": 123456789012345678901234567890}', "beyond the 64-bit range"),
        ('{"seconds": NaN}', "NaN is not a JSON number"),
        ('{"seconds": -Infinity}', "-Infinity is not a JSON number"),
        ('{"seconds": 1e999}', "too large"),
    ],
)
def test_arguments_the_hub_cannot_read_are_usage_errors(arguments: str, problem: str) -> None:
    out = run("call", "sleep", "--args", arguments, "--hub", "127.0.0.1:1")
    assert out.returncode == 2 and problem in one_line(out.stderr), out


def test_a_timeout_beyond_a_day_is_a_usage_error() -> None:
    out = run("call", "sleep", "--timeout", "1e10", "--hub", "127.0.0.1:1")
    assert out.returncode == 2 and b"at most 86400" in out.stderr, out
    assert b"Traceback" not in out.stderr


def test_arguments_from_a_file_or_stdin(tmp_path: Path, open_hub: RunningHub) -> None:
    big = "x" * 300_000  # past what a shell can pass as one argument
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"text": big}))
    from_file = run("call", "echo", "--args", f"@{path}", "--hub", open_hub.grpc)
    assert (from_file.returncode, from_file.stdout) == (0, big.encode()), from_file.stderr
    from_stdin = run("call", "echo", "--args", "-", "--hub", open_hub.grpc, input=b'{"text": "piped"}')
    assert (from_stdin.returncode, from_stdin.stdout) == (0, b"piped"), from_stdin.stderr
    missing = run("call", "echo", "--args", f"@{tmp_path / 'nosuch'}", "--hub", open_hub.grpc)
    assert missing.returncode == 2 and "No such file" in one_line(missing.stderr)


def test_a_request_id_is_recorded_in_the_audit_log(open_hub: RunningHub) -> None:
    out = run(
        "call", "echo", "--args", '{"text": "id"}', "--request-id", "script-7f3", "--hub", open_hub.grpc
    )
    assert out.returncode == 0, out.stderr
    query = run("audit", "query", "--state-dir", str(open_hub.state_dir), "--tool", "echo", "--json")
    records = [json.loads(line) for line in query.stdout.splitlines()]
    assert any(r["kind"] == "requested" and r["body"].get("request_id") == "script-7f3" for r in records)


def test_a_result_is_exact_in_a_file(open_hub: RunningHub) -> None:
    """No line end added to a text that has none: `> file` holds what the tool returned."""
    out = run("call", "echo", "--args", '{"text": "eleven byte"}', "--hub", open_hub.grpc)
    assert (out.returncode, out.stdout) == (0, b"eleven byte"), out
    ends = run("call", "echo", "--args", '{"text": "line\\n"}', "--hub", open_hub.grpc)
    assert ends.stdout == b"line\n"


def test_a_locale_without_the_characters_neither_crashes_nor_changes_a_result(open_hub: RunningHub) -> None:
    """An ASCII stdout: the result's bytes are UTF-8 as they came; a person's text is escaped."""
    ascii_out = {"PYTHONIOENCODING": "ascii"}
    out = run("call", "echo", "--args", '{"text": "snow \\u2603"}', "--hub", open_hub.grpc, env=ascii_out)
    assert (out.returncode, out.stdout) == (0, "snow \u2603".encode()), out
    query = run("audit", "query", "--state-dir", str(open_hub.state_dir), "--tool", "echo", env=ascii_out)
    assert query.returncode == 0 and b"Traceback" not in query.stderr, query.stderr
    assert b"\\u2603" in query.stdout


def test_output_that_cannot_be_written_is_one_line_and_exit_4(open_hub: RunningHub) -> None:
    with open("/dev/full", "wb") as full:
        out = run("call", "echo", "--args", '{"text": "x"}', "--hub", open_hub.grpc, stdout=full)
    assert out.returncode == 4 and "No space left" in one_line(out.stderr), out.stderr


def test_a_closed_stdout_does_not_abort(open_hub: RunningHub) -> None:
    """uvloop aborted (exit 134) when the descriptor it opened took the number of stdout."""
    for args in (["tools", "--json"], ["call", "echo", "--args", '{"text": "x"}']):
        command = exec_with(hub_command(*args, "--hub", open_hub.grpc), close=[1])
        env = {k: v for k, v in os.environ.items() if not k.startswith("MCPHUB_")}
        out = subprocess.run(command, stderr=subprocess.PIPE, timeout=60, cwd=REPO, env=env, check=False)
        assert (out.returncode, out.stderr) == (0, b""), (args, out.stderr)


@pytest.mark.parametrize(("given", "source"), [("env", "$MCPHUB_TOKEN"), ("option", "--token")])
@pytest.mark.parametrize("token", ["token-of-agent-a-0123456789\r", "tok\ten"])
def test_a_token_that_cannot_be_sent_is_refused_before_dialing(
    shell_hub: RunningHub, given: str, source: str, token: str
) -> None:
    env = {"MCPHUB_TOKEN": token} if given == "env" else {}
    option = ["--token", token] if given == "option" else []
    for command in (["tools"], ["call", "echo"], ["approvals", "list"], ["bridge", "--stdio"]):
        out = run(*command, "--hub", shell_hub.grpc, *option, env=env, input=b"")
        line = one_line(out.stderr)
        assert out.returncode == 2 and source in line and "tok" not in line.replace("token", ""), line


def test_json_failures_print_one_json_error_on_stdout(shell_hub: RunningHub) -> None:
    unknown = call(shell_hub, "nosuch", {}, "--json")
    assert unknown.returncode == 3 and b"unknown tool" in unknown.stderr
    assert json.loads(unknown.stdout)["error"]["code"] == "not_found"
    unauthenticated = run(
        "call", "echo", "--json", "--hub", shell_hub.grpc, "--token", "wrong-token-0123456789"
    )
    assert unauthenticated.returncode == 3
    assert json.loads(unauthenticated.stdout)["error"]["code"] == "unauthenticated"
    # A compound command waits for a person; the caller gives up first.
    waited = call(shell_hub, "shell_exec", {"command": "echo a; echo b"}, "--json", "--timeout", "2")
    assert waited.returncode == 3, waited
    error = json.loads(waited.stdout)["error"]
    assert error["code"] == "deadline_exceeded" and error["approval_id"].startswith("apr_"), error
    assert error["approval_id"] in waited.stderr.decode()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = f"127.0.0.1:{s.getsockname()[1]}"
    for command in (["tools", "--json"], ["call", "echo", "--json", "--timeout", "5"]):
        nobody = run(*command, "--hub", free)
        assert nobody.returncode == 3 and b"cannot reach a hub" in nobody.stderr
        assert json.loads(nobody.stdout)["error"]["code"] == "unavailable", command


def test_the_hubs_own_unavailable_is_not_taken_for_no_hub() -> None:
    """`mcphub call` read the words of an UNAVAILABLE: a hub answering with its store's "Connection
    refused" was said to be a hub that is not there ("start one with `mcphub serve`")."""
    import grpc

    from mcp_remote.cli import _rpc_problem
    from mcphub_proto.metadata import ERROR_FROM, FROM_HUB

    said = "the PostgreSQL store (db:5432/audit) cannot be reached: connection failed: Connection refused"
    marked = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata((ERROR_FROM, FROM_HUB)),
        details=said,
    )
    assert _rpc_problem(marked, "hub:7070") == ("unavailable", f"the hub at hub:7070 is unavailable: {said}")
    # Without the mark, the same words are the connection's.
    unmarked = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="Connection refused"
    )
    code, message = _rpc_problem(unmarked, "hub:7070")
    assert code == "unavailable" and message.startswith("cannot reach a hub at hub:7070"), message

"""Injection: shell syntax, option-looking values and newlines in every argument that ends up on a
command line must arrive as plain data.

Each payload tries to create a canary file; none may ever appear. The command of shell_exec is the
one argument that *is* shell (that is the tool's point); everything else is data.
"""

from __future__ import annotations

import posixpath
import shlex
import subprocess
from pathlib import Path

import pytest

from mcp_local.errors import ToolError
from mcp_remote.tools.shell.fs import grep_command, parse_grep
from mcp_remote.tools.shell.options import SshLimits
from mcp_remote.tools.shell.sandbox import ExecSpec
from mcp_remote.tools.shell.ssh import remote_command
from tests.mcp_remote.tools.conftest import ShellClient, workspace_dir
from tests.support.hub import RunningHub

pytestmark = pytest.mark.anyio

CANARY = "pwned"
PAYLOADS = [
    f"; touch {CANARY}",
    f"$(touch {CANARY})",
    f"`touch {CANARY}`",
    f"| touch {CANARY}",
    f"&& touch {CANARY}",
    f"' ; touch {CANARY} ; '",
    f'" ; touch {CANARY} ; "',
    f"x\ntouch {CANARY}",
    "-rf",
    "--help",
    "--bind / /",
    "-e",
    "; id",
    "$(id)",
]


@pytest.fixture(autouse=True)
def no_canary(jail_hub: RunningHub) -> None:
    for principal in ("agent-a", "agent-b"):
        (workspace_dir(jail_hub, principal) / CANARY).unlink(missing_ok=True)


def _assert_no_canary(hub: RunningHub) -> None:
    for principal in ("agent-a", "agent-b"):
        assert not (workspace_dir(hub, principal) / CANARY).exists(), "an injected command ran"


@pytest.mark.parametrize("payload", PAYLOADS)
async def test_cwd_is_a_path_not_shell(agent_a: ShellClient, jail_hub: RunningHub, payload: str) -> None:
    made = await agent_a.exec('mkdir -p -- "$DIR"', env={"DIR": payload})
    assert made.structured["exit_code"] == 0, made.text
    outcome = await agent_a.exec("pwd", cwd=payload)
    assert outcome.structured["stdout"] == posixpath.normpath(f"/workspace/{payload}") + "\n"
    _assert_no_canary(jail_hub)
    missing = await agent_a.exec("pwd", cwd=payload + "-missing")
    assert missing.structured["exit_code"] != 0 and "uid=" not in missing.text
    _assert_no_canary(jail_hub)


@pytest.mark.parametrize("payload", PAYLOADS)
async def test_env_values_are_data(agent_a: ShellClient, jail_hub: RunningHub, payload: str) -> None:
    outcome = await agent_a.exec('printf %s "$VALUE"', env={"VALUE": payload})
    assert outcome.structured["stdout"] == payload
    _assert_no_canary(jail_hub)


@pytest.mark.parametrize("name", ["A;touch pwned", "$(touch pwned)", "-u", "A B", "1A", "A\nB", ""])
async def test_env_names_must_be_names(agent_a: ShellClient, jail_hub: RunningHub, name: str) -> None:
    outcome = await agent_a.exec("true", env={name: "x"})
    assert outcome.is_error and "not a variable name" in outcome.text
    _assert_no_canary(jail_hub)


async def test_nul_bytes_are_refused(agent_a: ShellClient) -> None:
    for arguments in (
        {"command": "echo a\x00b"},
        {"command": "true", "cwd": "a\x00b"},
        {"command": "true", "env": {"A": "\x00"}},
    ):
        outcome = await agent_a.call("shell_exec", arguments)
        assert outcome.is_error and "NUL" in outcome.text


@pytest.mark.parametrize("payload", PAYLOADS)
async def test_file_names_are_data(agent_a: ShellClient, jail_hub: RunningHub, payload: str) -> None:
    name = payload.replace("/", "_")
    written = await agent_a.call("fs_write", {"path": f"names/{name}", "content": "payload"})
    assert not written.is_error, written.text
    assert (workspace_dir(jail_hub, "agent-a") / "names" / name).read_text() == "payload"
    assert (await agent_a.call("fs_read", {"path": f"names/{name}"})).structured["content"] == "payload"
    listing = await agent_a.call("fs_list", {"path": "names"})
    assert f"names/{name}" in [e["path"] for e in listing.structured["entries"]]
    _assert_no_canary(jail_hub)


@pytest.mark.parametrize("payload", [p for p in PAYLOADS if "\n" not in p])
async def test_search_arguments_are_data(agent_a: ShellClient, jail_hub: RunningHub, payload: str) -> None:
    await agent_a.call("fs_write", {"path": "haystack/match.txt", "content": f"before\n{payload}\nafter\n"})
    await agent_a.call("fs_write", {"path": "haystack/other.txt", "content": "nothing here\n"})
    found = await agent_a.call("fs_search", {"pattern": payload, "path": "haystack"})
    assert not found.is_error, found.text
    assert found.structured["matches"] == [{"path": "haystack/match.txt", "line": 2, "text": payload}]
    for glob in (payload, f"*{payload}"):
        assert not (
            await agent_a.call("fs_search", {"pattern": "x", "path": "haystack", "glob": glob})
        ).is_error
    dirs = await agent_a.call("fs_search", {"pattern": "x", "path": payload})
    assert dirs.is_error or dirs.structured["matches"] == []
    _assert_no_canary(jail_hub)


async def test_a_pattern_with_a_newline_is_refused(agent_a: ShellClient, jail_hub: RunningHub) -> None:
    outcome = await agent_a.call("fs_search", {"pattern": f"a\ntouch {CANARY}"})
    assert outcome.is_error and "one line" in outcome.text
    _assert_no_canary(jail_hub)


async def test_process_ids_are_checked_before_use(agent_a: ShellClient) -> None:
    for tool in ("shell_status", "shell_read", "shell_kill"):
        for payload in PAYLOADS:
            outcome = await agent_a.call(tool, {"process_id": payload})
            assert outcome.is_error and "does not match" in outcome.text, (tool, payload)


# --- the command lines themselves, run by a real /bin/sh as the remote login shell would --------


LOGIN_SHELLS = [sh for sh in ("/bin/sh", "/bin/bash", "/bin/zsh") if Path(sh).exists()]


@pytest.mark.parametrize("shell", LOGIN_SHELLS)
@pytest.mark.parametrize("payload", PAYLOADS)
def test_the_ssh_command_line_keeps_every_part_as_data(tmp_path: Path, payload: str, shell: str) -> None:
    cwd = tmp_path / payload.replace("/", "_")
    cwd.mkdir()
    spec = ExecSpec(command='printf "%s|%s" "$V" "$(pwd)"', env={"V": payload}, timeout_s=30)
    line, on_stdin = remote_command(spec, str(cwd), SshLimits(), "0123abcd")
    assert on_stdin is None
    result = subprocess.run([shell, "-c", line], capture_output=True, cwd=tmp_path, timeout=30)
    assert result.stdout.decode() == f"{payload}|{cwd}", result.stderr
    assert result.stderr.startswith(b"mcphub-pgid-0123abcd:")
    assert not (tmp_path / CANARY).exists() and not (cwd / CANARY).exists()


@pytest.mark.parametrize("shell", LOGIN_SHELLS)
def test_a_long_ssh_command_goes_on_stdin_ahead_of_the_input(tmp_path: Path, shell: str) -> None:
    body = "; ".join(f": {shlex.quote(p)}" for p in PAYLOADS)
    command = f"{body}; " * (200_000 // len(body)) + "cat; printf '|%s' \"$#\""
    spec = ExecSpec(command=command, stdin=b"the input", timeout_s=30)
    line, on_stdin = remote_command(spec, str(tmp_path), SshLimits(), "0123abcd")
    assert on_stdin is not None and on_stdin.startswith(command.encode()) and len(line) < 4096
    feed = on_stdin + b"the input"
    result = subprocess.run([shell, "-c", line], input=feed, capture_output=True, cwd=tmp_path, timeout=60)
    assert result.stdout == b"the input|0", result.stderr[-500:]
    assert not (tmp_path / CANARY).exists()


def test_a_long_ssh_command_that_cannot_arrive_whole_runs_nothing_and_says_why(tmp_path: Path) -> None:
    """Found in review: with no `dd` on the remote PATH (or a short read) the command read from
    stdin was empty, ran nothing, and reported exit 0."""
    command = f"touch {CANARY}; exit 7 #" + "x" * 70_000
    spec = ExecSpec(command=command, timeout_s=30)
    line, on_stdin = remote_command(spec, str(tmp_path), SshLimits(), "0123abcd")
    assert on_stdin is not None
    bare = tmp_path / "bin"
    bare.mkdir()
    no_dd = {"PATH": str(bare)}
    out = subprocess.run(
        ["/bin/sh", "-c", line], input=on_stdin, capture_output=True, cwd=tmp_path, env=no_dd
    )
    assert out.returncode == 125 and b"the SSH sandbox has no dd" in out.stderr, out.stderr[-300:]
    short = subprocess.run(["/bin/sh", "-c", line], input=on_stdin[:-40], capture_output=True, cwd=tmp_path)
    assert short.returncode == 125 and b"did not arrive whole" in short.stderr, short.stderr[-300:]
    assert not (tmp_path / CANARY).exists()
    whole = subprocess.run(["/bin/sh", "-c", line], input=on_stdin, capture_output=True, cwd=tmp_path)
    assert whole.returncode == 7 and (tmp_path / CANARY).exists(), whole.stderr[-300:]


def test_a_huge_environment_moves_the_command_to_stdin_or_is_refused(tmp_path: Path) -> None:
    """Found in review: only the command's size decided, though env and cwd share its argument: a
    60 KB command with an 80 KB variable failed as "Argument list too long", exit 1."""
    spec = ExecSpec(command="printf %s ${#BIG} #" + "y" * 60_000, env={"BIG": "z" * 80_000}, timeout_s=30)
    line, on_stdin = remote_command(spec, str(tmp_path), SshLimits(), "0123abcd")
    assert on_stdin is not None
    out = subprocess.run(["/bin/bash", "-c", line], input=on_stdin, capture_output=True, cwd=tmp_path)
    assert out.stdout == b"80000", out.stderr[-300:]
    with pytest.raises(ToolError, match="more than the 131,071 one argument may have"):
        remote_command(ExecSpec(command="true", env={"BIG": "z" * 140_000}), str(tmp_path), SshLimits(), "n")


@pytest.mark.parametrize("payload", PAYLOADS)
def test_the_ssh_command_line_with_a_missing_directory_runs_nothing(tmp_path: Path, payload: str) -> None:
    spec = ExecSpec(command=f"touch {CANARY}", timeout_s=None)
    line, _ = remote_command(
        spec, str(tmp_path / "missing" / payload), SshLimits(cpu_s=None, open_files=None), "0123abcd"
    )
    result = subprocess.run(["/bin/sh", "-c", line], capture_output=True, cwd=tmp_path, timeout=30)
    assert result.returncode == 126
    assert not list(tmp_path.rglob(CANARY))


@pytest.mark.parametrize("payload", [p for p in PAYLOADS if "\n" not in p])
def test_the_grep_command_line_keeps_every_part_as_data(tmp_path: Path, payload: str) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "hit.txt").write_text(f"{payload}\n")
    (tmp_path / "dir" / "miss.txt").write_text("nothing\n")
    line = grep_command(payload, str(tmp_path / "dir"), regex=False, case_sensitive=True, glob=None)
    assert shlex.split(line)[-3:] == ["-e", payload, "--"] or shlex.split(line)[-4:-1] == [
        "-e",
        payload,
        "--",
    ]
    result = subprocess.run(["/bin/sh", "-c", line], capture_output=True, cwd=tmp_path, timeout=30)
    hits = parse_grep(result.stdout, str(tmp_path / "dir"))
    assert hits == [{"path": "hit.txt", "line": 1, "text": payload}], result.stderr
    assert not list(tmp_path.rglob(CANARY))


@pytest.mark.parametrize("before", [497, 498, 499, 500])
def test_a_long_grep_hit_is_cut_on_a_character(before: int) -> None:
    text = "a" * before + "€" * 10
    hits = parse_grep(f"/ws/f.txt\x007:{text}\n".encode(), "/ws")
    assert hits == [{"path": "f.txt", "line": 7, "text": "a" * before + "€" * ((500 - before) // 3)}]

"""The git pack on a real repository: status, diff, log, commit; odd refs and outside paths refused."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from pathlib import Path

import grpc
import pytest

from bridge.hubclient import HubClient
from mcp_local.errors import DeadlineExceeded
from mcphub_proto.v1 import toolhub_pb2 as pb
from tests.support.packs import PackUnderTest, make_pack, text
from tests.support.sidecar import start_sidecar

pytestmark = pytest.mark.anyio

AUTHOR = {"name": "Sandbox Agent", "email": "agent@sandbox.invalid"}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    ws = tmp_path / "repo"
    ws.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main", str(ws)], check=True)
    (ws / "app.py").write_text("print('v1')\n")
    return ws


@pytest.fixture
def git(repo: Path) -> PackUnderTest:
    return make_pack("git", {"author": AUTHOR}, repo)


async def test_commit_then_log_diff_and_status(git: PackUnderTest, repo: Path) -> None:
    assert "?? app.py" in text(await git.call("git_status"))
    committed = await git.call("git_commit", message="first commit", all=True)
    assert not committed.is_error, text(committed)
    assert "committed" in text(committed) and "first commit" in text(committed)
    (repo / "app.py").write_text("print('v2')\n")
    diff = text(await git.call("git_diff"))
    assert "-print('v1')" in diff and "+print('v2')" in diff
    assert " M app.py" in text(await git.call("git_status"))
    await git.call("git_commit", message="second", paths=["app.py"])
    log = text(await git.call("git_log", max_count=5))
    assert log.index("second") < log.index("first commit") and "Sandbox Agent" in log
    between = text(await git.call("git_diff", ref="HEAD~1", paths=["app.py"]))
    assert "+print('v2')" in between
    assert git.tools["git_commit"].annotations.read_only is False
    assert git.tools["git_log"].annotations.read_only is True


@pytest.mark.parametrize("ref", ["--output=/tmp/pwned", "-p", "HEAD;rm -rf /", "a b"])
async def test_option_looking_refs_are_refused(git: PackUnderTest, ref: str, tmp_path: Path) -> None:
    result = await git.call("git_log", ref=ref)
    assert result.is_error and "is not a revision name" in text(result)
    assert not Path("/tmp/pwned").exists()


async def test_paths_must_stay_inside_the_workspace(git: PackUnderTest) -> None:
    result = await git.call("git_diff", paths=["../../etc/passwd"])
    assert result.is_error and "'..' is not allowed" in text(result)


async def test_a_path_named_like_an_option_is_a_path(git: PackUnderTest, repo: Path) -> None:
    (repo / "--version").write_text("not an option\n")
    await git.call("git_commit", message="odd file", paths=["--version"])
    assert "odd file" in text(await git.call("git_log", paths=["--version"]))


async def test_commit_hooks_do_not_run(git: PackUnderTest, repo: Path, tmp_path: Path) -> None:
    hook = repo / ".git" / "hooks" / "post-commit"
    marker = tmp_path / "hook-ran"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    await git.call("git_commit", message="with hook", all=True)
    assert not marker.exists()


async def test_git_errors_are_tool_errors(tmp_path: Path) -> None:
    plain = tmp_path / "not-a-repo"
    plain.mkdir()
    git = make_pack("git", {}, plain)
    result = await git.call("git_status")
    assert result.is_error and "not a git repository" in text(result)


def _init(path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(path)], check=True)


def _git_config(repo: Path, *lines: str) -> None:
    with (repo / ".git" / "config").open("a") as f:
        f.write("\n".join(lines) + "\n")


async def test_config_named_programs_do_not_run(git: PackUnderTest, repo: Path, tmp_path: Path) -> None:
    """textconv, external diff, signing: programs a repository's config names for git to run."""
    marker = tmp_path / "ran"
    script = tmp_path / "prog.sh"
    script.write_text(f'#!/bin/sh\necho $0 >> {marker}\ncat "$1" 2>/dev/null\n')
    script.chmod(0o755)
    await git.call("git_commit", message="first", all=True)
    _git_config(
        repo,
        '[diff "conv"]',
        f"    textconv = {script}",
        f"    command = {script}",
        "[commit]",
        "    gpgSign = true",
        "[gpg]",
        f"    program = {script}",
        "[gc]",
        "    auto = 1",
    )
    (repo / ".gitattributes").write_text("*.py diff=conv\n")
    (repo / "app.py").write_text("print('v2')\n")
    assert "+print('v2')" in text(await git.call("git_diff"))
    assert "+print('v2')" in text(await git.call("git_diff", ref="HEAD"))
    committed = await git.call("git_commit", message="second", all=True)
    assert not committed.is_error, text(committed)
    assert not marker.exists()


async def test_pathspec_magic_is_not_magic(git: PackUnderTest, repo: Path) -> None:
    """`:/` and `:(top)` would name paths from the repository's top, wherever the workspace is."""
    (repo / "secret.txt").write_text("top secret\n")
    await git.call("git_commit", message="first", all=True)
    (repo / "secret.txt").write_text("changed\n")
    for path in (":/secret.txt", ":(top)secret.txt", "*.txt"):
        assert text(await git.call("git_diff", paths=[path])) == "no differences"
    assert "+changed" in text(await git.call("git_diff", paths=["secret.txt"]))


async def test_only_the_workspace_repository_is_used(tmp_path: Path) -> None:
    """A workspace inside a larger repository does not reach it, nor does a core.worktree outside."""
    outer = tmp_path / "outer"
    (outer / "app").mkdir(parents=True)
    _init(outer)
    (outer / "secret.txt").write_text("outside the workspace\n")
    inner = make_pack("git", {"author": AUTHOR}, outer / "app")
    for tool, args in (("git_status", {}), ("git_diff", {"paths": [":/secret.txt"]})):
        result = await inner.call(tool, **args)
        assert result.is_error and "is not a git repository (no .git at its root)" in text(result)

    ws = tmp_path / "ws"
    ws.mkdir()
    _init(ws)
    (ws / "mine.txt").write_text("in the workspace\n")
    _git_config(ws, "[core]", f"    worktree = {outer}")
    status = text(await make_pack("git", {"author": AUTHOR}, ws).call("git_status"))
    assert "mine.txt" in status and "secret.txt" not in status


async def test_a_commit_message_with_nul_is_refused_clearly(git: PackUnderTest) -> None:
    result = await git.call("git_commit", message="a\x00b", all=True)
    assert result.is_error and text(result) == "message contains a NUL byte, which git cannot store"


async def test_a_ref_with_a_trailing_newline_is_refused(git: PackUnderTest) -> None:
    result = await git.call("git_log", ref="HEAD\n")
    assert result.is_error and "is not a revision name" in text(result)


def test_git_is_found_only_in_absolute_path_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mcp_local.packs.git import _find_program

    planted = tmp_path / "git"
    planted.write_text("#!/bin/sh\necho planted\n")
    planted.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    # An empty entry and `.` mean the current directory (perhaps the workspace): never searched.
    assert _find_program("git", os.pathsep.join(["", ".", "/usr/bin"])) == "/usr/bin/git"
    assert _find_program("git", os.pathsep.join([".", "bin"])) is None
    assert _find_program("git", str(tmp_path)) == str(planted)


def _running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


async def _gone(pid: int, seconds: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while _running(pid):
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _slow_filter(repo: Path, pid_file: Path) -> None:
    """A clean filter that git runs for `git diff` of a modified file, and that runs 60 s."""
    _git_config(repo, '[filter "slow"]', f'    clean = "echo $$ > {pid_file}; exec sleep 60"')
    (repo / ".gitattributes").write_text("* filter=slow\n")
    (repo / "app.py").write_text("print('v2')\n")


@pytest.mark.parametrize("how", ["cancelled", "timed out"])
async def test_what_git_started_is_killed_with_it(repo: Path, tmp_path: Path, how: str) -> None:
    """Only git was killed: a filter it ran lived on (its parent PID 1), holding git's pipes, and
    the sidecar's stop printed `Exception ignored in: BaseSubprocessTransport.__del__` per call."""
    git = make_pack("git", {"author": AUTHOR, "timeout_s": 1}, repo)
    await git.call("git_commit", message="first", all=True)
    pid_file = tmp_path / "filter.pid"
    _slow_filter(repo, pid_file)
    call = asyncio.ensure_future(git.call("git_diff"))
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert not call.done(), f"git's filter did not start: {call.result()}"
        await asyncio.sleep(0.02)
    pid = int(pid_file.read_text())
    try:
        if how == "cancelled":
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        else:
            with pytest.raises(DeadlineExceeded, match="tool 'git_diff' did not finish before the deadline"):
                await call
        assert await _gone(pid, 10), f"git's filter (pid {pid}) outlived git"
    finally:
        if _running(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("how", ["cancelled", "timed out"])
async def test_a_call_ends_though_a_process_that_left_the_group_holds_its_pipes(
    repo: Path, tmp_path: Path, how: str
) -> None:
    """The end of a killed git waited for its pipes to close: a filter's `setsid` child kept them
    open, so the call (and the cancels after it, a sidecar's stop too) lasted as long as that child.
    The child itself lives on, as docs/sidecar.md says."""
    git = make_pack("git", {"author": AUTHOR, "timeout_s": 1 if how == "timed out" else 600}, repo)
    await git.call("git_commit", message="first", all=True)
    pid_file = tmp_path / "escaped.pid"
    _git_config(
        repo, '[filter "escaping"]', f"    clean = \"setsid sh -c 'echo $$ > {pid_file}; exec sleep 60'\""
    )
    (repo / ".gitattributes").write_text("* filter=escaping\n")
    (repo / "app.py").write_text("print('v2')\n")
    call = asyncio.ensure_future(git.call("git_diff"))
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert not call.done(), f"git's filter did not start: {call.result()}"
        await asyncio.sleep(0.02)
    escaped = int(pid_file.read_text())
    try:
        if how == "cancelled":
            call.cancel()
            await asyncio.sleep(0.1)
            call.cancel()  # as the hub's cancel does after the sidecar's: it must not undo the first
        done, _ = await asyncio.wait([call], timeout=20)
        assert done, "the call waited for the process that left git's process group (60 s)"
        assert _running(escaped), "the test's setsid child should outlive git, as documented"
        if how == "cancelled":
            assert call.cancelled()
        else:
            with pytest.raises(DeadlineExceeded, match="tool 'git_diff' did not finish before the deadline"):
                call.result()
    finally:
        if _running(escaped):
            os.kill(escaped, signal.SIGKILL)
        with contextlib.suppress(BaseException):
            await call


async def test_a_sidecar_stopped_after_a_call_past_its_deadline_leaves_nothing_behind(
    repo: Path, tmp_path: Path
) -> None:
    """Each such call used to leave git's filter running and print `Exception ignored in:
    BaseSubprocessTransport.__del__ ... RuntimeError: Event loop is closed` at the stop."""
    await make_pack("git", {"author": AUTHOR}, repo).call("git_commit", message="first", all=True)
    pid_file = tmp_path / "filter.pid"
    _slow_filter(repo, pid_file)
    sidecar = start_sidecar(tmp_path / "sidecar", {"workspace": str(repo), "packs": ["git"]})
    client = HubClient(sidecar.grpc)
    try:
        request = pb.CallToolRequest(name="git_diff", arguments_json=b"{}")
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await client.call_tool(None, request, timeout=1.0)
        assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        pid = int(pid_file.read_text())
        assert await _gone(pid, 10), f"git's filter (pid {pid}) outlived git"
    finally:
        await client.close()
        assert await asyncio.to_thread(sidecar.stop) == 0
        if pid_file.exists() and _running(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert "Exception ignored" not in sidecar.log(), sidecar.log()

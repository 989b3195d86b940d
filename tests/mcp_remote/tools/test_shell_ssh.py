"""The SSH target against OpenSSH's sshd, started by the tests on 127.0.0.1 with generated keys."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest

from bridge.hubclient import HubClient
from mcp_local.redaction import Redactor
from mcp_remote.tools.shell.options import SshTargetOptions
from mcp_remote.tools.shell.sandbox import ExecSpec
from mcp_remote.tools.shell.ssh import SshTarget
from tests.conftest import TOKENS
from tests.mcp_remote.tools.conftest import ShellClient, processes_running, shell_hub_config, wait_until
from tests.support.hub import RunningHub, start_hub
from tests.support.sshd import RunningSshd, start_sshd

pytestmark = pytest.mark.anyio


@dataclass
class SshSetup:
    sshd: RunningSshd
    hub: RunningHub
    remote_workspace: Path


def _ssh_target(sshd: RunningSshd, workspace: Path, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "ssh",
        "host": "127.0.0.1",
        "port": sshd.port,
        "user": sshd.user,
        "key_file": str(sshd.user_key),
        "known_host_key": sshd.host_key_pub,
        "workspace": str(workspace),
        "sessions_per_connection": 4,
        "max_connections": 3,
        **extra,
    }


@pytest.fixture(scope="module")
def ssh_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshSetup]:
    base = tmp_path_factory.mktemp("ssh")
    sshd = start_sshd(base / "sshd")
    workspace = base / "remote-workspace"
    options = {
        "default_target": {"kind": "jail"},
        "targets": {
            "agent-b": _ssh_target(sshd, workspace),
            # The same server, pinned to a key it does not have.
            "agent-a": _ssh_target(sshd, workspace, known_host_key=_other_host_key(base)),
        },
        "preview_bytes": 4096,
    }
    hub = start_hub(base / "hub", config=shell_hub_config(options), http=False)
    yield SshSetup(sshd, hub, workspace)
    hub.stop()
    sshd.stop()


def _other_host_key(base: Path) -> str:
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / "other")], check=True)
    return (base / "other.pub").read_text().strip()


@pytest.fixture
async def remote(ssh_setup: SshSetup) -> AsyncIterator[ShellClient]:
    client = HubClient(ssh_setup.hub.grpc)
    yield ShellClient(client, TOKENS["agent-b"])
    await client.close()


@pytest.fixture
async def wrongly_pinned(ssh_setup: SshSetup) -> AsyncIterator[ShellClient]:
    client = HubClient(ssh_setup.hub.grpc)
    yield ShellClient(client, TOKENS["agent-a"])
    await client.close()


async def test_exec_over_ssh(remote: ShellClient, ssh_setup: SshSetup) -> None:
    outcome = await remote.exec("pwd; echo err >&2; exit 5")
    s = outcome.structured
    assert (s["exit_code"], s["stdout"], s["stderr"]) == (5, f"{ssh_setup.remote_workspace}\n", "err\n")
    assert (await remote.exec("cat", stdin="piped")).structured["stdout"] == "piped"
    env = await remote.exec('printf "%s" "$WHO"', env={"WHO": "it's me; $(id)"})
    assert env.structured["stdout"] == "it's me; $(id)"
    await remote.exec("mkdir -p 'a dir'")
    assert (await remote.exec("pwd", cwd="a dir")).structured[
        "stdout"
    ] == f"{ssh_setup.remote_workspace}/a dir\n"


async def test_connections_are_pooled_and_reused(remote: ShellClient, ssh_setup: SshSetup) -> None:
    await remote.exec("true")
    before = ssh_setup.sshd.logins()
    for _ in range(6):
        assert (await remote.exec("true")).structured["exit_code"] == 0
    assert ssh_setup.sshd.logins() == before, "sequential calls reuse the pooled connection"
    results = await asyncio.gather(*(remote.exec(f"echo {i}; sleep 0.5") for i in range(10)))
    assert sorted(int(r.structured["stdout"]) for r in results) == list(range(10))
    # 10 at once with 4 sessions per connection and at most 3 connections: some waited, none failed.
    assert ssh_setup.sshd.logins() - before <= 2


async def test_output_streams_over_ssh(remote: ShellClient) -> None:
    go = f"go-{secrets.token_hex(4)}"
    command = f"echo first; while [ ! -e {go} ]; do sleep 0.05; done; echo second"
    seen = b""
    result = None
    async for event in remote.stream("shell_exec", {"command": command, "timeout_s": 30}):
        kind = event.WhichOneof("event")
        if kind == "output":
            first = not seen
            seen += event.output.data
            if first:
                assert seen == b"first\n"
                assert not (await remote.call("fs_write", {"path": go, "content": ""})).is_error
        elif kind == "result":
            result = event.result
    assert result is not None and seen == b"first\nsecond\n"
    assert orjson.loads(result.structured_content_json)["stderr"] == "", "the hub's pgid line is not output"


async def test_timeout_kills_the_remote_process_group(remote: ShellClient) -> None:
    marker = f"{secrets.randbelow(10_000) + 70_000}.{secrets.randbelow(1000)}"
    outcome = await remote.exec(f"sleep {marker} & sleep {marker}", timeout_s=1)
    assert outcome.is_error and outcome.structured["timed_out"]
    await wait_until(lambda: not processes_running("sleep", marker), what="the remote sleeps to be killed")


async def test_cancellation_kills_the_remote_command(remote: ShellClient) -> None:
    marker = f"{secrets.randbelow(10_000) + 80_000}.{secrets.randbelow(1000)}"
    started = asyncio.Event()

    async def consume() -> None:
        async for event in remote.stream("shell_exec", {"command": f"echo go; sleep {marker}"}):
            if event.WhichOneof("event") == "output":
                started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 30)
    await wait_until(lambda: bool(processes_running("sleep", marker)), what="the remote command to run")
    task.cancel()
    with pytest.raises((asyncio.CancelledError, grpc.aio.AioRpcError)):
        await task
    await wait_until(
        lambda: not processes_running("sleep", marker), what="the cancelled remote command to die"
    )


async def test_background_processes_over_ssh(remote: ShellClient) -> None:
    started = await remote.call("shell_start", {"command": "echo hello; echo oops >&2; sleep 600"})
    pid = started.structured["process_id"]
    text = ""

    async def greeted() -> bool:
        nonlocal text
        text = (await remote.call("shell_read", {"process_id": pid, "wait_s": 1})).structured["output"]
        return "hello" in text and "oops" in text

    await wait_until(greeted, what="the background output")
    assert (await remote.call("shell_kill", {"process_id": pid})).structured["state"] == "killed"


async def test_a_host_key_that_is_not_the_pinned_one_is_refused(
    wrongly_pinned: ShellClient, ssh_setup: SshSetup
) -> None:
    marker = secrets.token_hex(6)
    outcome = await wrongly_pinned.exec(f"touch {marker}")
    assert outcome.is_error
    assert "host key" in outcome.text and "pinned" in outcome.text
    assert not (ssh_setup.remote_workspace / marker).exists()


async def test_files_over_sftp(remote: ShellClient, ssh_setup: SshSetup) -> None:
    ws = ssh_setup.remote_workspace
    written = await remote.call("fs_write", {"path": "notes/today.txt", "content": "héllo\nworld\n"})
    assert not written.is_error, written.text
    assert (ws / "notes" / "today.txt").read_text() == "héllo\nworld\n"
    read = await remote.call("fs_read", {"path": "notes/today.txt"})
    assert read.structured["content"] == "héllo\nworld\n"
    assert (await remote.call("fs_read", {"path": f"{ws}/notes/today.txt", "offset": 7})).structured[
        "content"
    ] == "world\n"
    await remote.call("fs_write", {"path": "notes/today.txt", "content": "again\n", "append": True})
    assert (ws / "notes" / "today.txt").read_text().endswith("world\nagain\n")
    listing = await remote.call("fs_list", {"path": "notes"})
    assert [e["path"] for e in listing.structured["entries"]] == ["notes/today.txt"]
    found = await remote.call("fs_search", {"pattern": "WORLD", "case_sensitive": False})
    assert {"path": "notes/today.txt", "line": 2, "text": "world"} in found.structured["matches"]


async def test_sftp_paths_stay_in_the_workspace(remote: ShellClient, ssh_setup: SshSetup) -> None:
    ws = ssh_setup.remote_workspace
    outside = ws.parent / f"outside-{secrets.token_hex(4)}.txt"
    outside.write_text("not yours\n")
    (ws / "link-out").unlink(missing_ok=True)
    (ws / "link-out").symlink_to(outside)
    for path in ("../" + outside.name, str(outside), "link-out", f"{ws}-evil/x", f"{ws}/../{outside.name}"):
        outcome = await remote.call("fs_read", {"path": path})
        assert outcome.is_error and "outside the workspace" in outcome.text, (path, outcome.text)
    refused = await remote.call("fs_write", {"path": "link-out", "content": "overwrite"})
    assert refused.is_error and outside.read_text() == "not yours\n"


@pytest.mark.parametrize(
    "payload", ["; touch pwned", "$(touch pwned)", "`touch pwned`", "-rf", "a\ntouch pwned"]
)
async def test_injection_over_ssh_does_nothing(
    remote: ShellClient, ssh_setup: SshSetup, payload: str
) -> None:
    ws = ssh_setup.remote_workspace
    (ws / payload.replace("/", "_")).mkdir(exist_ok=True)
    moved = await remote.exec("pwd", cwd=payload)
    assert moved.structured["stdout"] == f"{ws}/{payload}\n", moved.text
    env = await remote.exec('printf %s "$V"', env={"V": payload})
    assert env.structured["stdout"] == payload
    written = await remote.call("fs_write", {"path": f"files/{payload}", "content": "x"})
    assert not written.is_error and (ws / "files" / payload).read_text() == "x"
    found = await remote.call("fs_search", {"pattern": payload.split("\n")[0], "path": "files"})
    assert not found.is_error, found.text
    assert not list(ws.rglob("pwned")), "an injected command ran on the remote"


async def test_output_before_the_pgid_line_is_kept_and_the_kill_still_works(remote: ShellClient) -> None:
    # The loader complains about LD_PRELOAD on stderr before the hub's script prints anything.
    marker = f"{secrets.randbelow(10_000) + 90_000}.{secrets.randbelow(1000)}"
    outcome = await remote.exec(f"sleep {marker}", env={"LD_PRELOAD": "/nonexist.so"}, timeout_s=1)
    assert outcome.is_error and outcome.structured["timed_out"], outcome.text
    stderr = outcome.structured["stderr"]
    assert "/nonexist.so" in stderr and "mcphub-pgid" not in stderr, stderr
    await wait_until(lambda: not processes_running("sleep", marker), what="the remote sleep to be killed")
    plain = await remote.exec("echo out; echo err >&2", env={"LD_PRELOAD": "/nonexist.so"})
    assert plain.structured["stdout"] == "out\n" and plain.structured["stderr"].endswith("err\n")
    assert "mcphub-pgid" not in plain.structured["stderr"]


async def test_the_exit_status_ends_the_call_though_a_child_holds_the_output(remote: ShellClient) -> None:
    marker = f"{secrets.randbelow(10_000) + 110_000}.{secrets.randbelow(1000)}"
    outcome = await remote.exec(f"sleep {marker} & echo main-done; exit 0", timeout_s=20)
    s = outcome.structured
    assert (s["exit_code"], s["timed_out"], s["stdout"]) == (0, False, "main-done\n"), outcome.text
    assert not outcome.is_error
    await wait_until(
        lambda: not processes_running("sleep", marker), what="the left-behind sleep to be killed"
    )


async def test_a_command_of_many_quotes_runs(remote: ShellClient) -> None:
    command = "echo ok # " + "'" * 30000
    outcome = await remote.exec(command)
    assert outcome.structured["exit_code"] == 0 and outcome.structured["stdout"] == "ok\n", outcome.text[:500]
    # Long enough to go on stdin, and the caller's own input still follows it.
    wide = await remote.exec("cat; echo ' " + "é" * 90000 + "' | wc -c", stdin="input\n")
    assert wide.structured["stdout"].split() == ["input", "180002"], wide.text[:500]


async def test_a_slow_reader_gets_all_of_a_finished_commands_output(ssh_setup: SshSetup) -> None:
    """Found in review: 0.5 s after the exit status, output the hub's own back-pressure still held
    (a caller reading slowly) was taken for a leftover's: the group was killed and the rest cut,
    with exit 0. Driven on the target itself: through the hub, gRPC's buffers absorb far more."""
    workspace = ssh_setup.remote_workspace
    target = SshTarget(
        SshTargetOptions.model_validate(_ssh_target(ssh_setup.sshd, workspace)), Redactor(), {}
    )
    await target.start()
    done = workspace / f"done-{secrets.token_hex(4)}"
    size = 20_000_000
    command = f"head -c {size} /dev/zero | tr '\\0' a; echo END; touch {done.name}"
    try:
        process = await target.spawn("agent-b", ExecSpec(command, timeout_s=60))
        got = 0
        tail = b""
        paused = False
        async for chunk in process.output():
            got += len(chunk.data)
            tail = (tail + chunk.data)[-4:]
            if not paused:
                # Slower than the command writes, so its output waits in the hub when it exits;
                # then, once it has, a pause well past the grace the leftovers get.
                await asyncio.sleep(0.01)
                if done.exists():
                    paused = True
                    await asyncio.sleep(1.5)
        status = await process.wait()
    finally:
        await target.stop()
    assert (got, tail, status.exit_code, status.killed) == (size + 4, b"END\n", 0, False)

"""The SSH target when the connection fails under a command: it stops answering (sshd stopped with
SIGSTOP) or drops (sshd killed). Each test has its own sshd and hub: these break connections."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from bridge.hubclient import HubClient
from bridge.translate import result_to_mcp
from mcphub_proto.v1 import toolhub_pb2 as pb
from mcphub_proto.v1 import toolhub_pb2_grpc as pb_grpc
from tests.conftest import TOKENS
from tests.mcp_remote.tools.conftest import ShellClient, processes_running, shell_hub_config, wait_until
from tests.mcp_remote.tools.test_shell_ssh import _ssh_target
from tests.support.clients import Outcome
from tests.support.hub import RunningHub, start_hub
from tests.support.sshd import RunningSshd, start_sshd

pytestmark = pytest.mark.anyio


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[tuple[RunningSshd, RunningHub]]:
    sshd = start_sshd(tmp_path / "sshd")
    options = {
        "default_target": {"kind": "jail"},
        "targets": {"agent-b": _ssh_target(sshd, tmp_path / "remote-workspace")},
    }
    hub = start_hub(tmp_path / "hub", config=shell_hub_config(options), http=False)
    yield sshd, hub
    for pid in _sshd_processes(sshd):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    hub.stop()
    sshd.stop()


@pytest.fixture
async def client(faulty: tuple[RunningSshd, RunningHub]) -> AsyncIterator[ShellClient]:
    hub = HubClient(faulty[1].grpc)
    yield ShellClient(hub, TOKENS["agent-b"])
    await hub.close()


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _sshd_processes(sshd: RunningSshd) -> list[int]:
    """Every live sshd process serving the hub's connections (not the commands they run)."""
    found = []
    todo = [p.pid for p in sshd.sessions if p.poll() is None]
    while todo:
        pid = todo.pop()
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() != "sshd":
                continue
        except OSError:
            continue
        found.append(pid)
        todo += _children(pid)
    return found


def _signal_sshd(sshd: RunningSshd, signum: int) -> None:
    pids = _sshd_processes(sshd)
    assert pids, "no sshd serves the hub"
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _cleanup(marker: str) -> None:
    for pid in processes_running("sleep", marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def test_a_connection_that_stops_answering_does_not_hold_the_call(
    client: ShellClient, faulty: tuple[RunningSshd, RunningHub]
) -> None:
    sshd = faulty[0]
    marker = f"{secrets.randbelow(10_000) + 120_000}.{secrets.randbelow(1000)}"
    started = False

    async def run() -> None:
        nonlocal started
        _signal_sshd(sshd, signal.SIGSTOP)
        started = True

    try:
        result = None
        # The call's own deadline (30 s) is far below the ~120 s the keepalives take to give up.
        async for event in client.stream("shell_exec", {"command": f"echo go; sleep {marker}",
                                                          "timeout_s": 3}, timeout=30):  # fmt: skip
            kind = event.WhichOneof("event")
            if kind == "output" and not started:
                await wait_until(lambda: bool(processes_running("sleep", marker)), what="the sleep")
                await run()
            elif kind == "result":
                result = event.result
        assert result is not None
        outcome = Outcome(result_to_mcp(result))
        text = outcome.text
        assert outcome.is_error, text
        assert "timed out" in text and "stopped answering" in text, text
        # The next call finds the connection stopped too: opening a session is bounded as well.
        # (The stopped connection was dropped; make the new one stop before any session opens.)
        assert not (await client.exec("true", timeout_s=5)).is_error
        _signal_sshd(sshd, signal.SIGSTOP)
        refused = await client.call("shell_exec", {"command": "true", "timeout_s": 3}, timeout=30)
        assert refused.is_error and "stopped answering" in refused.text and "refused" not in refused.text
    finally:
        _cleanup(marker)


async def test_a_dropped_connection_is_an_error_whose_outcome_is_unknown(
    client: ShellClient, faulty: tuple[RunningSshd, RunningHub]
) -> None:
    sshd = faulty[0]
    marker = f"{secrets.randbelow(10_000) + 130_000}.{secrets.randbelow(1000)}"
    background = await client.call("shell_start", {"command": f"sleep {marker}"})
    pid = background.structured["process_id"]
    killed = False
    try:
        result = None
        async for event in client.stream("shell_exec", {"command": f"echo go; sleep {marker}"}, timeout=30):
            kind = event.WhichOneof("event")
            if kind == "output" and not killed:
                await wait_until(lambda: len(processes_running("sleep", marker)) == 2, what="both sleeps")
                _signal_sshd(sshd, signal.SIGKILL)
                killed = True
            elif kind == "result":
                result = event.result
        assert result is not None
        outcome = Outcome(result_to_mcp(result))
        text = outcome.text
        assert outcome.is_error, text
        assert "connection" in text and "lost" in text and "unknown" in text, text
        assert "signal None" not in text

        async def ended() -> bool:
            return (await client.call("shell_status", {"process_id": pid})).structured["state"] != "running"

        await wait_until(ended, what="the background process to end")
        status = (await client.call("shell_status", {"process_id": pid})).structured
        assert status["state"] == "lost" and "unknown" in status["lost"], status
    finally:
        _cleanup(marker)


async def test_cancelled_commands_give_their_session_back(tmp_path: Path) -> None:
    """Found in review: a cancelled command was killed but its session slot never freed (only
    `wait` frees it), so after as many cancellations as the pool has sessions every call waited."""
    sshd = start_sshd(tmp_path / "sshd")
    target = _ssh_target(sshd, tmp_path / "remote-workspace", sessions_per_connection=2, max_connections=1)
    options = {"default_target": {"kind": "jail"}, "targets": {"agent-b": target}}
    hub = start_hub(tmp_path / "hub", config=shell_hub_config(options), http=False)
    client = HubClient(hub.grpc)
    agent = ShellClient(client, TOKENS["agent-b"])
    try:
        async with grpc.aio.insecure_channel(hub.grpc) as channel:
            stub = pb_grpc.ToolHubStub(channel)
            metadata = (("authorization", f"Bearer {TOKENS['agent-b']}"),)
            request = pb.CallToolRequest(name="shell_exec", arguments_json=b'{"command": "seq 1 100000000"}')
            for _ in range(4):  # twice the pool's two sessions
                # The caller leaves once the command runs: the hub cancels the call.
                call = stub.StreamCallTool(request, metadata=metadata)
                async for event in call:
                    if event.WhichOneof("event") == "output":
                        break
                call.cancel()
        after = await agent.call("shell_exec", {"command": "echo still served"}, timeout=20)
        assert after.structured["stdout"] == "still served\n", after.text
    finally:
        await client.close()
        hub.stop()
        sshd.stop()


async def test_a_kill_is_bounded_though_the_process_was_already_being_waited_for(
    client: ShellClient, faulty: tuple[RunningSshd, RunningHub]
) -> None:
    """Found in review: a background process whose output closed at once was already being
    waited for when shell_kill came; the wait looked for a kill only on entry, so on a connection
    that had stopped answering the kill took shell_kill's whole 10 s and left it `running`."""
    sshd = faulty[0]
    marker = f"{secrets.randbelow(10_000) + 140_000}.{secrets.randbelow(1000)}"
    started = await client.call("shell_start", {"command": f"exec >/dev/null 2>&1; sleep {marker}"})
    pid = started.structured["process_id"]
    try:
        await wait_until(lambda: bool(processes_running("sleep", marker)), what="the remote sleep")
        await asyncio.sleep(1)  # the hub reads the closed output and starts waiting for the exit
        _signal_sshd(sshd, signal.SIGSTOP)
        killed = (await client.call("shell_kill", {"process_id": pid}, timeout=60)).structured
        assert killed["state"] == "lost" and "stopped answering" in killed["lost"], killed
    finally:
        _signal_sshd(sshd, signal.SIGCONT)
        _cleanup(marker)

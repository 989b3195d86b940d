"""A real hub with the shell pack (jail target) for the shell tests, and helpers to watch processes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from bridge.hubclient import HubClient
from bridge.translate import result_to_mcp
from mcphub_proto.v1 import toolhub_pb2 as pb
from tests.conftest import TOKENS
from tests.support.approvals import decide
from tests.support.clients import Outcome
from tests.support.hub import RunningHub, start_hub

LIMITS = {"memory_mb": 192, "processes": 48, "cpu_s": 60, "cpus": 0.5, "file_size_mb": 64, "tmp_mb": 32}
UID_BASE = 300_000_000 + (os.getpid() % 1000) * 100_000
"""The jail's uids of this test process's hubs: tests run in parallel, and two hubs giving
agent-a the same uid shared its RLIMIT_NPROC budget ("Cannot fork" in one test while another
ran a fork bomb) and its processes (a test waiting for agent-a's processes to be gone waited
for the other test's too). Away from the default (200,000,000), which hubs on defaults use."""
SHELL_OPTIONS: dict[str, Any] = {
    "uid_base": UID_BASE,
    "default_target": {"kind": "jail", "limits": LIMITS},
    "default_timeout_s": 60,
    "preview_bytes": 4096,
    "max_output_bytes": 1024 * 1024,
}


def shell_hub_config(options: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        # The jail must contain whatever the gate lets through, so these tests let everything through;
        # compound commands still wait for a person (the gate's floor), and ShellClient approves them.
        "policy": {"rules": [{"name": "everything, for these tests", "decision": "allow"}]},
        "principals": [
            {"name": "agent-a", "token": TOKENS["agent-a"]},
            {"name": "agent-b", "token": TOKENS["agent-b"]},
            {"name": "approver", "token": TOKENS["approver"], "roles": ["approver"]},
        ],
        "packs": [
            {"name": "diagnostics"},
            {"name": "shell", "options": {"uid_base": UID_BASE, **(options or SHELL_OPTIONS)}},
        ],
    }


@pytest.fixture(scope="module")
def jail_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    hub = start_hub(tmp_path_factory.mktemp("jail-hub"), config=shell_hub_config(), http=True)
    yield hub
    hub.stop()


class ShellClient:
    """Calls over gRPC with a principal's token; results in MCP form (as the bridge gives them).

    A call the gate holds for a person (every compound command) is approved by the test's approver.
    """

    def __init__(self, hub: HubClient, token: str) -> None:
        self.hub = hub
        self.token = token

    async def call(self, name: str, arguments: dict[str, Any], timeout: float = 60) -> Outcome:
        async for event in self.stream(name, arguments, timeout):
            if event.WhichOneof("event") == "result":
                return Outcome(result_to_mcp(event.result))
        raise AssertionError("the call ended without a result")

    async def exec(self, command: str, **arguments: Any) -> Outcome:
        return await self.call("shell_exec", {"command": command, **arguments})

    async def stream(
        self, name: str, arguments: dict[str, Any], timeout: float = 60
    ) -> AsyncIterator[pb.CallToolEvent]:
        request = pb.CallToolRequest(name=name, arguments_json=orjson.dumps(arguments))
        async for event in self.hub.stream_call_tool(self.token, request, timeout=timeout):
            if event.WhichOneof("event") == "approval" and event.approval.state == pb.ApprovalState.PENDING:
                await decide(self.hub.target, TOKENS["approver"], event.approval.approval_id, True)
            yield event


@pytest.fixture
async def grpc_hub(jail_hub: RunningHub) -> AsyncIterator[HubClient]:
    client = HubClient(jail_hub.grpc)
    yield client
    await client.close()


@pytest.fixture
def agent_a(grpc_hub: HubClient) -> ShellClient:
    return ShellClient(grpc_hub, TOKENS["agent-a"])


@pytest.fixture
def agent_b(grpc_hub: HubClient) -> ShellClient:
    return ShellClient(grpc_hub, TOKENS["agent-b"])


def processes_running(*argv: str) -> list[int]:
    """Pids of live (not zombie) processes whose argv is exactly `argv` (not a shell or bwrap that
    merely carries it in its command line)."""
    found = []
    want = b"\0".join(a.encode() for a in argv) + b"\0"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if cmdline == want and state != "Z":
            found.append(int(entry.name))
    return found


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _descends_from(pid: int, ancestor: int) -> bool:
    try:
        while pid > 1:
            if pid == ancestor:
                return True
            pid = _parent(pid)
    except OSError:
        pass
    return False


def processes_of_uid(uid: int, under: int | None = None) -> list[int]:
    """The processes of `uid`; with `under`, only those descended from that pid (a shared uid
    such as `nobody` also runs other people's programs on this machine)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid and (under is None or _descends_from(int(entry.name), under)):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


async def wait_until(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float = 20.0, what: str = "condition"
) -> None:
    """Poll `check` until true; fail after `timeout` seconds (a deadline, not a timing assertion)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        outcome = check()
        if isinstance(outcome, Awaitable):
            outcome = await outcome
        if outcome:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


SYSCALL_PROBE = """python3 -c '
import ctypes, platform
numbers = {"x86_64": (250, 425), "aarch64": (219, 425)}[platform.machine()]
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(256)
calls = {
    "keyctl": (numbers[0], 0, ctypes.c_int(-3), 1),
    "io_uring_setup": (numbers[1], 4, params),
}
for name, args in calls.items():
    ok = libc.syscall(*args) >= 0
    print(name, "ok" if ok else ctypes.get_errno())
status = open("/proc/self/status").read().splitlines()
print("seccomp", next(line.split()[1] for line in status if line.startswith("Seccomp:")))
'"""
"""Two calls a command may make without privilege (a kernel keyring's id, an io_uring) and its
seccomp mode: `keyctl ok|ERRNO`, `io_uring_setup ok|ERRNO`, `seccomp 0|2`."""


def syscall_probe(outcome: Outcome) -> dict[str, str]:
    assert outcome.structured["exit_code"] == 0, outcome.structured
    return dict(line.split() for line in outcome.structured["stdout"].splitlines())


def workspace_dir(hub: RunningHub, principal: str) -> Path:
    return hub.state_dir / "workspaces" / principal

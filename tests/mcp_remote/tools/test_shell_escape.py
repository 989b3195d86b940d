"""Escape attempts from the jail: each must be contained, and the hub must keep answering meanwhile."""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
import signal
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import pytest

from bridge.hubclient import HubClient
from tests.conftest import TOKENS
from tests.mcp_remote.tools.conftest import (
    LIMITS,
    SYSCALL_PROBE,
    ShellClient,
    processes_of_uid,
    processes_running,
    shell_hub_config,
    syscall_probe,
    wait_until,
    workspace_dir,
)
from tests.support.clients import Outcome
from tests.support.hub import RunningHub, start_hub

pytestmark = pytest.mark.anyio

T = TypeVar("T")


async def while_hub_answers(
    agent: ShellClient, hazard: Awaitable[T], *, echoes: int = 3, outlives: bool = True
) -> T:
    """Run `hazard` and, while it is still running, make the hub answer `echoes` other calls."""
    task = asyncio.ensure_future(hazard)
    await asyncio.sleep(0.5)  # let the hazard get going (not a timing assertion)
    for i in range(echoes):
        answer = await agent.call("echo", {"text": f"still here {i}"}, timeout=30)
        assert answer.text == f"still here {i}"
    if outlives:
        assert not task.done(), "the hazard should still be running while the hub answers"
    return await task


def _only_fails(outcome: Outcome, *needles: str) -> None:
    s = outcome.structured
    assert s["exit_code"] != 0, s
    assert any(n in s["stderr"] + s["stdout"] for n in needles), s


async def test_host_secrets_are_not_in_the_jail(agent_a: ShellClient, jail_hub: RunningHub) -> None:
    for path in ("/etc/shadow", "/etc/gshadow", "/etc/ssh/ssh_host_ed25519_key", "/root/.bashrc"):
        _only_fails(await agent_a.exec(f"cat {path}"), "No such file")
    # World-readable, but where credentials are kept (proxies, git's http.extraheader).
    for name in ("environment", "gitconfig", "wgetrc", "profile.d"):
        if Path("/etc", name).exists():
            _only_fails(await agent_a.exec(f"ls -d /etc/{name}"), "No such file")
    # /proc is the sandbox's own: pid 1 is the command's shell, its root is the jail's root.
    _only_fails(await agent_a.exec("cat /proc/1/root/etc/shadow"), "No such file")
    s = (await agent_a.exec("ps -eo pid,comm --no-headers | wc -l")).structured
    assert int(s["stdout"]) <= 4, "only the sandbox's own processes are visible"


async def test_the_hub_state_directory_is_not_in_the_jail(agent_a: ShellClient, jail_hub: RunningHub) -> None:
    state = jail_hub.state_dir
    assert (state / "hub.json").exists()
    _only_fails(await agent_a.exec(f"cat {state / 'hub.json'}"), "No such file")
    _only_fails(await agent_a.exec(f"ls {state}"), "No such file")
    _only_fails(await agent_a.exec("ls /mnt"), "No such file")
    # mountinfo names where the bind mounts come from on the host; naming is not reaching.
    _only_fails(await agent_a.exec(f"cat {state}/workspaces/.jail-etc/passwd"), "No such file")


async def test_another_principals_workspace_is_out_of_reach(
    agent_a: ShellClient, agent_b: ShellClient, jail_hub: RunningHub
) -> None:
    secret = f"secret-{secrets.token_hex(8)}"
    assert not (await agent_b.exec(f"echo {secret} > {secret}.txt")).is_error
    assert (workspace_dir(jail_hub, "agent-b") / f"{secret}.txt").read_text() == secret + "\n"
    for attempt in (
        f"cat ../agent-b/{secret}.txt",
        f"cat /workspace/../agent-b/{secret}.txt",
        f"cat {workspace_dir(jail_hub, 'agent-b')}/{secret}.txt",
        f"cat /mnt/agent-b/{secret}.txt",
    ):
        outcome = await agent_a.exec(attempt)
        assert secret not in outcome.structured["stdout"], attempt
        assert outcome.structured["exit_code"] != 0, attempt
    found = await agent_a.exec(
        # /usr is the host's read-only system tree and /proc, /sys, /dev are not files: grepping
        # them only burns the sandbox's CPU time.
        f"find / -name '{secret}*' 2>/dev/null; "
        "grep -rs --exclude-dir=usr --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev "
        f"{secret} / | head -1"
    )
    assert secret not in found.structured["stdout"]


async def test_the_hubs_own_ports_are_unreachable(agent_a: ShellClient, jail_hub: RunningHub) -> None:
    assert jail_hub.mcp_url is not None
    ports = [jail_hub.grpc.rsplit(":", 1)[1], jail_hub.mcp_url.split(":")[2].split("/")[0]]
    for port in ports:
        connect = f"import socket; socket.create_connection(('127.0.0.1', {port}), 3); print('connected')"
        outcome = await agent_a.exec(f'python3 -c "{connect}"')
        assert "connected" not in outcome.structured["stdout"]
        assert (
            "Connection refused" in outcome.structured["stderr"]
            or "unreachable" in outcome.structured["stderr"]
        )
    interfaces = (await agent_a.exec("ls /sys/class/net 2>/dev/null || cat /proc/net/dev")).structured[
        "stdout"
    ]
    assert "eth" not in interfaces and "lo" in interfaces


async def test_a_fork_bomb_is_contained(agent_a: ShellClient, jail_hub: RunningHub) -> None:
    # Running long enough for the hub to answer three calls meanwhile on a loaded machine.
    bomb = "bomb() { bomb | bomb & }; bomb; sleep 8"
    outcome = await while_hub_answers(agent_a, agent_a.exec(bomb, timeout_s=9))
    assert outcome.structured["timed_out"] or outcome.structured["exit_code"] is not None
    uid = workspace_dir(jail_hub, "agent-a").stat().st_uid
    await wait_until(lambda: not processes_of_uid(uid), what="the bomb's processes to be gone")
    after = await agent_a.exec("echo recovered")
    assert after.structured["stdout"] == "recovered\n", "the principal can run commands again"


async def test_a_memory_hog_is_killed_at_the_limit(agent_a: ShellClient) -> None:
    hog = "python3 -c 'x = []\nwhile True: x.append(bytearray(8 * 1024 * 1024))'"
    outcome = await while_hub_answers(agent_a, agent_a.exec(hog, timeout_s=60), echoes=1, outlives=False)
    s = outcome.structured
    # The memory cgroup's OOM killer (SIGKILL: 128 + 9) or the address-space rlimit (MemoryError).
    assert s["exit_code"] == 137 or "MemoryError" in s["stderr"], s
    assert not s["timed_out"]


async def test_an_output_flood_is_bounded_and_the_hub_answers(agent_a: ShellClient) -> None:
    outcome = await while_hub_answers(agent_a, agent_a.exec("yes flood", timeout_s=4))
    s = outcome.structured
    assert s["timed_out"] and s["truncated"]
    assert s["stdout_bytes"] > 1024 * 1024, "the flood produced more than the store keeps"
    kept = await agent_a.call("output_read", {"output_id": s["stdout_output_id"], "offset": 1024 * 1024 - 10})
    assert "end of what was kept" in kept.text.partition("\n")[0] and "kept" in outcome.text


async def test_cpu_is_throttled_and_the_hub_answers(agent_a: ShellClient, jail_hub: RunningHub) -> None:
    outcome = await while_hub_answers(agent_a, agent_a.exec("while :; do :; done", timeout_s=3))
    assert outcome.structured["timed_out"]
    stats = list(Path("/sys/fs/cgroup/cpu").glob(f"mcphub-{jail_hub.process.pid}/agent-a/cpu.stat"))
    if stats:  # cgroup v1 cpu controller (this machine); elsewhere the rlimit bounds CPU time
        throttled = dict(line.split() for line in stats[0].read_text().splitlines())
        assert int(throttled["nr_throttled"]) > 0
        quota = int((stats[0].parent / "cpu.cfs_quota_us").read_text())
        period = int((stats[0].parent / "cpu.cfs_period_us").read_text())
        assert quota == int(LIMITS["cpus"] * period)


async def test_files_are_limited_in_size(agent_a: ShellClient) -> None:
    outcome = await agent_a.exec("head -c 100M /dev/zero > big; ls -l big | awk '{print $5}'; rm -f big")
    s = outcome.structured
    assert "File size limit exceeded" in s["stderr"] or "File too large" in s["stderr"], s
    assert int(s["stdout"]) <= LIMITS["file_size_mb"] * 1024 * 1024


async def test_only_the_workspace_and_two_bounded_tmpfs_mounts_are_writable(agent_a: ShellClient) -> None:
    """/ and /dev are tmpfs mounts bwrap builds, as large as half the host's memory: a command
    that could write there would not be bounded by tmp_mb."""
    outcome = await agent_a.exec(
        "for d in / /dev /var /usr; do if touch $d/probe 2>/dev/null; then echo $d writable; "
        "else echo $d read-only; fi; done; for d in /tmp /dev/shm /var/tmp; do "
        "head -c 40M /dev/zero > $d/fill 2>/dev/null; echo $d $(wc -c < $d/fill); rm -f $d/fill; done"
    )
    lines = outcome.structured["stdout"].splitlines()
    assert lines[:4] == ["/ read-only", "/dev read-only", "/var read-only", "/usr read-only"], lines
    tmp_bytes = LIMITS["tmp_mb"] * 1024 * 1024
    filled = {line.split()[0]: int(line.split()[1]) for line in lines[4:]}
    assert set(filled) == {"/tmp", "/dev/shm", "/var/tmp"}, lines
    assert all(tmp_bytes - 1024 * 1024 < size <= tmp_bytes for size in filled.values()), filled
    again = await agent_a.exec("echo kept > /workspace/kept && cat kept && rm kept && echo x > /dev/null")
    assert again.structured["stdout"] == "kept\n", again.structured


async def test_system_calls_a_command_has_no_use_for_are_refused(agent_a: ShellClient) -> None:
    # Both succeed in a jail without the filter (test_shell_options turns it off).
    assert syscall_probe(await agent_a.exec(SYSCALL_PROBE)) == {
        "keyctl": str(errno.EPERM),
        "io_uring_setup": str(errno.EPERM),
        "seccomp": "2",
    }
    status = (await agent_a.call("shell_status", {})).structured["sandbox"]
    assert status["syscall_filter"].endswith("system calls refused (EPERM)"), status


async def test_nested_user_namespaces_are_refused(agent_a: ShellClient) -> None:
    outcome = await agent_a.exec("unshare --user --map-root-user id")
    assert outcome.structured["exit_code"] != 0 and "uid=0" not in outcome.structured["stdout"]


def _alive(pids: list[int]) -> set[int]:
    """Those of `pids` that are running: a zombie has died, whoever is yet to reap it."""
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _cgroup_dirs_of(hub_pid: int) -> list[Path]:
    """The `mcphub-<pid>` groups a hub made, in every hierarchy (they sit below the hub's own group)."""
    found = []
    for top, dirs, _ in os.walk("/sys/fs/cgroup"):
        if top.count("/") > 6:
            dirs[:] = []
            continue
        found += [Path(top) / d for d in dirs if d == f"mcphub-{hub_pid}"]
    return found


async def test_sandbox_processes_die_with_the_hub(tmp_path: Path) -> None:
    """SIGKILL the hub: its jailed processes must not outlive it, and the next hub removes the
    cgroups the dead one left."""
    hub = start_hub(tmp_path / "first", config=shell_hub_config(), http=False)
    client = HubClient(hub.grpc)
    marker = f"{secrets.randbelow(10_000) + 60_000}.{secrets.randbelow(1000)}"
    try:
        agent = ShellClient(client, TOKENS["agent-a"])
        for n in range(3):
            started = await agent.call("shell_start", {"command": f"sleep {marker}{n}"})
            assert not started.is_error, started.text
        await wait_until(lambda: bool(processes_running("sleep", f"{marker}0")), what="a background sleep")
        uid = (hub.state_dir / "workspaces" / "agent-a").stat().st_uid
        # This hub's sandboxes: another test's hub may run agent-a's processes under the same uid.
        ours = set(processes_of_uid(uid, under=hub.process.pid))
        assert ours
        made = _cgroup_dirs_of(hub.process.pid)
        hub.process.send_signal(signal.SIGKILL)
        hub.process.wait()
        await wait_until(
            lambda: not ours & _alive(processes_of_uid(uid)), what="the sandboxes to die with the hub"
        )
    finally:
        await client.close()
        hub.stop()
    if os.geteuid() == 0 and Path("/sys/fs/cgroup/pids/cgroup.procs").exists():
        assert made, "the hub ran its sandboxes in no cgroup of its own"
    # A hub killed outright cannot remove its own cgroups: the next hub to start does. That may
    # be one another test started meanwhile (tests run in parallel); if none has, this one.
    left = _cgroup_dirs_of(hub.process.pid)
    if left:
        successor = start_hub(tmp_path / "second", config=shell_hub_config(), http=False)
        successor.stop()
        assert not _cgroup_dirs_of(hub.process.pid)

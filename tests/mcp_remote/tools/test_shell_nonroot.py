"""The jail when the hub is not root (a developer's own account): the same bubblewrap sandbox,
run as the hub's user, one uid for every principal.

The tests of the root hub that do not depend on a uid per principal or on cgroups run here
again, against a hub started as `nobody`; the rest are this mode's own.
"""

from __future__ import annotations

import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_remote.tools.shell.jail import counts_processes_per_user_namespace
from tests.mcp_remote.tools.conftest import (
    LIMITS,
    ShellClient,
    processes_of_uid,
    processes_running,
    shell_hub_config,
    wait_until,
    workspace_dir,
)
from tests.mcp_remote.tools.test_shell_escape import (  # noqa: F401 - collected again, against this module's hub
    test_a_memory_hog_is_killed_at_the_limit,
    test_an_output_flood_is_bounded_and_the_hub_answers,
    test_another_principals_workspace_is_out_of_reach,
    test_files_are_limited_in_size,
    test_host_secrets_are_not_in_the_jail,
    test_nested_user_namespaces_are_refused,
    test_system_calls_a_command_has_no_use_for_are_refused,
    test_the_hub_state_directory_is_not_in_the_jail,
    test_the_hubs_own_ports_are_unreachable,
    while_hub_answers,
)
from tests.mcp_remote.tools.test_shell_jail import (  # noqa: F401
    test_a_process_that_leaves_children_behind_does_not_hold_the_call,
    test_cancelling_the_call_kills_the_command,
    test_commands_run_as_an_unprivileged_user_in_the_workspace,
    test_exec_returns_exit_code_output_and_duration_over_every_transport,
    test_large_output_is_kept_whole_and_readable_by_id,
    test_output_ids_belong_to_their_principal,
    test_output_streams_while_the_command_runs,
    test_stdin_env_and_cwd,
    test_timeout_kills_the_command_and_everything_it_started,
)
from tests.support.hub import RunningHub, start_hub

pytestmark = pytest.mark.anyio

USER = "nobody"


@pytest.fixture(scope="module")
def jail_hub() -> Iterator[RunningHub]:
    # Not under pytest's own temporary directory: its root is private to root.
    workdir = Path(tempfile.mkdtemp(prefix="mcphub-nonroot-"))
    try:
        hub = start_hub(workdir, config=shell_hub_config(), http=True, user=USER)
        yield hub
        hub.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


async def test_the_hub_and_its_sandboxes_run_as_the_hubs_user(
    agent_a: ShellClient, jail_hub: RunningHub
) -> None:
    uid = pwd.getpwnam(USER).pw_uid
    assert _uid_of(jail_hub.process.pid) == uid
    marker = f"{secrets.randbelow(10_000) + 70_000}.{secrets.randbelow(1000)}"
    started = await agent_a.call("shell_start", {"command": f"sleep {marker}"})
    assert not started.is_error, started.text
    try:
        await wait_until(lambda: bool(processes_running("sleep", marker)), what="the background sleep")
        assert [_uid_of(pid) for pid in processes_running("sleep", marker)] == [uid]
        status = (await agent_a.call("shell_status", {})).structured["sandbox"]
        assert status["separate_uid"] is False
        assert status["process_limit"] == "per command (its own user namespace)"
    finally:
        await agent_a.call("shell_kill", {"process_id": started.structured["process_id"]})
    await agent_a.exec("echo mine > owned")
    owned = workspace_dir(jail_hub, "agent-a") / "owned"
    assert owned.read_text() == "mine\n" and owned.stat().st_uid == uid
    assert owned.parent.stat().st_mode & 0o777 == 0o700


FORKS = """python3 -c '
import os, sys, time
started = 0
for _ in range({n}):
    try:
        if os.fork() == 0:
            time.sleep({hold})
            os._exit(0)
    except OSError:
        break
    started += 1
print(started, flush=True)
time.sleep({hold})
'"""


async def test_each_command_has_its_own_process_limit(
    agent_a: ShellClient, agent_b: ShellClient, jail_hub: RunningHub
) -> None:
    limit = LIMITS["processes"]
    greedy = await agent_a.exec(FORKS.format(n=limit * 3, hold=0.2))
    assert 10 < int(greedy.structured["stdout"]) < limit, greedy.structured
    # While one command holds more than half the limit, another gets more than half too: the
    # limit counts each sandbox's own processes (its user namespace), not every process of
    # the hub's uid.
    uid = pwd.getpwnam(USER).pw_uid
    hub = jail_hub.process.pid
    before = len(processes_of_uid(uid, under=hub))
    half = limit // 2 + 5
    holding = await agent_a.call("shell_start", {"command": FORKS.format(n=half, hold=60)})
    assert not holding.is_error, holding.text
    try:
        await wait_until(
            lambda: len(processes_of_uid(uid, under=hub)) > before + half,
            what="the first command's processes",
        )
        second = await agent_b.exec(FORKS.format(n=half, hold=0.1))
        assert int(second.structured["stdout"]) == half, second.structured
    finally:
        await agent_a.call("shell_kill", {"process_id": holding.structured["process_id"]})


async def test_a_fork_bomb_is_contained(agent_a: ShellClient, jail_hub: RunningHub) -> None:
    uid = pwd.getpwnam(USER).pw_uid
    hub = jail_hub.process.pid
    before = set(processes_of_uid(uid, under=hub))  # the hub's spawner
    bomb = "bomb() { bomb | bomb & }; bomb; sleep 3"
    outcome = await while_hub_answers(agent_a, agent_a.exec(bomb, timeout_s=4))
    assert outcome.structured["timed_out"] or outcome.structured["exit_code"] is not None
    await wait_until(
        lambda: set(processes_of_uid(uid, under=hub)) <= before, what="the bomb's processes to be gone"
    )
    after = await agent_a.exec("echo recovered")
    assert after.structured["stdout"] == "recovered\n", "the principal can run commands again"


@pytest.mark.parametrize(
    ("release", "expected"),
    [
        ("6.18.44-fc-v657", True),
        ("5.14.0-362.el9", True),
        ("5.13.19", False),
        ("4.19.0-26-amd64", False),
        ("x", False),
    ],
)
def test_which_kernels_count_processes_per_user_namespace(release: str, expected: bool) -> None:
    assert counts_processes_per_user_namespace(release) is expected


def test_no_process_of_the_hubs_user_reads_its_environment(jail_hub: RunningHub) -> None:
    """The variables the hub read secrets from leave its environment, but the kernel's copy in
    /proc/PID/environ kept them, readable by every process of the hub's uid."""
    pid = jail_hub.process.pid
    out = subprocess.run(
        ["runuser", "-u", USER, "--", "cat", f"/proc/{pid}/environ"], capture_output=True, timeout=20
    )
    assert out.returncode != 0 and b"Permission denied" in out.stderr, out

"""What the shell pack holds on to is bounded: finished background processes' logs, and a hub whose
own limits are below the jail's says so rather than failing every command in silence."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.hubclient import HubClient
from tests.conftest import TOKENS
from tests.mcp_remote.tools.conftest import SHELL_OPTIONS, ShellClient, shell_hub_config, wait_until
from tests.support.hub import start_hub

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def _agent(tmp_path: Path, **options: object) -> AsyncIterator[ShellClient]:
    hub = start_hub(tmp_path / "hub", config=shell_hub_config({**SHELL_OPTIONS, **options}), http=False)
    client = HubClient(hub.grpc)
    try:
        yield ShellClient(client, TOKENS["agent-a"])
    finally:
        await client.close()
        hub.stop()


async def _finished(agent: ShellClient, command: str) -> str:
    pid: str = (await agent.call("shell_start", {"command": command})).structured["process_id"]

    async def exited() -> bool:
        state: str = (await agent.call("shell_status", {"process_id": pid})).structured["state"]
        return state == "exited"

    await wait_until(exited, what=f"{command!r} to exit")
    return pid


async def test_finished_processes_keep_a_bounded_amount_of_output(tmp_path: Path) -> None:
    """Found by a tester: each principal kept the logs of its last 32 finished processes (4 MiB
    each) until it started more; now 4 logs' worth in all, the oldest dropped first."""
    async with _agent(tmp_path, background_log_bytes=1024) as agent:
        pids = [await _finished(agent, "printf '%01024d' 0") for _ in range(6)]
        status = (await agent.call("shell_status", {})).structured["processes"]
        dropped = {p["process_id"]: p.get("output_dropped", False) for p in status}
        assert [dropped[pid] for pid in pids] == [True, True, False, False, False, False], status
        assert all(p["state"] == "exited" and p["exit_code"] == 0 for p in status)

        gone = await agent.call("shell_read", {"process_id": pids[0]})
        assert not gone.is_error and gone.structured["output"] == "", gone.text
        assert gone.structured["output_dropped"] is True and gone.structured["end"] == 1024
        assert "exited with exit code 0" in gone.text and "none are kept any longer" in gone.text, gone.text
        kept = await agent.call("shell_read", {"process_id": pids[-1]})
        assert kept.structured["output"] == "0" * 1024, kept.text


async def test_a_finished_processs_output_is_dropped_after_a_while(tmp_path: Path) -> None:
    async with _agent(tmp_path, background_keep_s=1) as agent:
        pid = await _finished(agent, "echo bye")

        async def dropped() -> bool:
            read = await agent.call("shell_read", {"process_id": pid})
            return bool(read.structured.get("output_dropped"))

        await wait_until(dropped, what="the log to be dropped")
        status = (await agent.call("shell_status", {"process_id": pid})).structured
        assert status["state"] == "exited" and status["output_dropped"] is True, status
        assert status["output_bytes"] == 4


async def test_a_hub_whose_open_file_limit_is_below_the_jails_says_why(tmp_path: Path) -> None:
    """Found by a tester: a hub (not root) whose hard RLIMIT_NOFILE was below the jail's
    `open_files` (1024) failed every command with exit code 125 and no word anywhere: the
    spawner wrote why to its own stderr, before the command's pipes were in place."""
    hub = start_hub(
        tmp_path, config=shell_hub_config(), http=False, module="tests.mcp_remote.tools.lowfiles_hub"
    )
    client = HubClient(hub.grpc)
    try:
        outcome = await ShellClient(client, TOKENS["agent-a"]).exec("true")
        s = outcome.structured
        assert s["exit_code"] == 125, s
        assert "cannot set RLIMIT_NOFILE to 1024: the hub's own hard limit is 512" in s["stderr"], s
        assert "above the hub's own hard limit, 512" in hub.log() and "limits.open_files" in hub.log()
    finally:
        await client.close()
        hub.stop()


async def test_status_shows_the_address_space_limit_the_commands_run_under(tmp_path: Path) -> None:
    """Found by a tester: `limits.address_space_mb` read null, as if unbounded, while every
    command ran under one derived from `memory_mb`."""
    async with _agent(tmp_path) as agent:
        sandbox = (await agent.call("shell_status", {})).structured
        shown = sandbox["sandbox"]["limits"]["address_space_mb"]
        seen = await agent.call("shell_exec", {"command": "ulimit -v"})
        assert not seen.is_error, seen.text
        assert isinstance(shown, int) and int(seen.structured["stdout"]) == shown * 1024, (shown, seen.text)

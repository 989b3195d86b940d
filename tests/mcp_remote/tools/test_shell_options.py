"""The pack's options: errors that name the key, a missing bubblewrap, the explicit unjailed target."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from bridge.hubclient import HubClient
from mcp_local.errors import ConfigError
from mcp_remote.tools.shell.options import parse_options
from tests.conftest import TOKENS
from tests.mcp_remote.tools.conftest import SYSCALL_PROBE, ShellClient, shell_hub_config, syscall_probe
from tests.support.hub import serve_refused, start_hub

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"defualt_target": {}}, "shell.options.defualt_target: unknown key"),
        ({"default_target": {"kind": "docker"}}, "shell.options.default_target: unknown kind"),
        (
            {"default_target": {"limits": {"memory_mb": 1}}},
            "shell.options.default_target.jail.limits.memory_mb",
        ),
        ({"default_target": {"network": "maybe"}}, "shell.options.default_target.jail.network"),
        (
            {"targets": {"agent-b": {"kind": "ssh", "host": "h", "user": "u", "key_file": "/k"}}},
            "known_host_key",
        ),
        ({"targets": {"agent-b": {"kind": "ssh", "host": "h", "user": "u"}}}, "targets.agent-b.ssh.key_file"),
        ({"default_timeout_s": 100, "max_timeout_s": 10}, "must not exceed"),
        (
            {"preview_bytes": 4096, "max_output_bytes": 1024},
            "preview_bytes (4096) must not exceed max_output_bytes",
        ),
        ({"default_target": {"ro_paths": ["relative/path"]}}, "expected an absolute host path"),
    ],
)
def test_bad_options_name_the_key(options: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_options(options)
    assert expected in str(info.value)


def test_an_unset_default_follows_the_bound_set_below_it() -> None:
    """Options valid before the preview was checked against the output's bound
    (`max_output_bytes: 8192` alone) were refused for a default they never set: "preview_bytes
    (16384) must not exceed max_output_bytes (8192)". Set explicitly, the contradiction is still
    refused (`test_bad_options_name_the_key`)."""
    assert parse_options({"max_output_bytes": 8192}).preview_bytes == 8192
    assert parse_options({"max_output_bytes": 1 << 20}).preview_bytes == 16 * 1024
    assert parse_options({"max_timeout_s": 60}).default_timeout_s == 60
    assert parse_options({"max_timeout_s": 600}).default_timeout_s == 120


def test_a_target_without_kind_is_the_jail() -> None:
    parsed = parse_options({"default_target": {"network": True}, "targets": {"x": {"limits": {"cpus": 2}}}})
    assert parsed.default_target.kind == "jail" and parsed.target_for("x").kind == "jail"
    assert parsed.target_for("someone-else").kind == "jail"


def test_the_hub_refuses_to_start_with_bad_options(tmp_path: Path) -> None:
    options = {"default_target": {"limits": {"cpus": -1}}}
    result = serve_refused(tmp_path, {"packs": [{"name": "shell", "options": options}]})
    assert result.returncode == 2
    assert "shell.options.default_target.jail.limits.cpus" in result.stderr


async def test_without_bubblewrap_the_hub_says_so_and_runs_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "bwrap"
    options = {"default_target": {"kind": "jail", "bwrap_path": str(missing)}}
    hub = start_hub(tmp_path / "hub", config=shell_hub_config(options), http=False)
    client = HubClient(hub.grpc)
    try:
        agent = ShellClient(client, TOKENS["agent-a"])
        for tool, arguments in (
            ("shell_exec", {"command": "touch ran"}),
            ("shell_start", {"command": "touch ran"}),
            ("fs_search", {"pattern": "x"}),
        ):
            outcome = await agent.call(tool, arguments)
            assert outcome.is_error, tool
            assert (
                "bubblewrap is not installed" in outcome.text and "apt-get install bubblewrap" in outcome.text
            )
            assert "never run unjailed" in outcome.text
        status = await agent.call("shell_status", {})
        assert status.structured["sandbox"]["available"] is False
        assert not list((hub.state_dir / "workspaces").rglob("ran"))
        assert "bubblewrap is not installed" in hub.log()
    finally:
        await client.close()
        hub.stop()


async def test_the_unjailed_target_is_explicit_and_named(tmp_path: Path) -> None:
    options = {"targets": {"agent-b": {"kind": "unjailed", "limits": {"cpu_s": 5}}}}
    hub = start_hub(tmp_path / "hub", config=shell_hub_config(options), http=False)
    client = HubClient(hub.grpc)
    try:
        trusted = ShellClient(client, TOKENS["agent-b"])
        s = (await trusted.exec("id -u; pwd; ulimit -t")).structured
        uid, cwd, cpu = s["stdout"].split()
        assert (
            uid == str(os.geteuid()) and cwd == str(hub.state_dir / "workspaces" / "agent-b") and cpu == "5"
        )
        status = (await trusted.call("shell_status", {})).structured["sandbox"]
        assert status["target"] == "unjailed" and "without a jail" in status["warning"]
        jailed = ShellClient(client, TOKENS["agent-a"])
        assert (await jailed.exec("id -un")).structured["stdout"] == "sandbox\n"
        # Unjailed, a timeout kills the process group, not "everything it started" (setsid escapes).
        late = await trusted.exec("sleep 30", timeout_s=0.5)
        assert late.structured["timed_out"] and "the command's process group was killed" in late.text
    finally:
        await client.close()
        hub.stop()


async def test_the_system_call_filter_can_be_turned_off_for_a_target(tmp_path: Path) -> None:
    options = {"targets": {"agent-b": {"kind": "jail", "seccomp": False}}}
    hub = start_hub(tmp_path / "hub", config=shell_hub_config(options), http=False)
    client = HubClient(hub.grpc)
    try:
        unfiltered = ShellClient(client, TOKENS["agent-b"])
        assert syscall_probe(await unfiltered.exec(SYSCALL_PROBE)) == {
            "keyctl": "ok",
            "io_uring_setup": "ok",
            "seccomp": "0",
        }
        status = (await unfiltered.call("shell_status", {})).structured["sandbox"]
        assert status["syscall_filter"] == "off (seccomp: false)"
        filtered = ShellClient(client, TOKENS["agent-a"])
        assert syscall_probe(await filtered.exec(SYSCALL_PROBE))["seccomp"] == "2"
    finally:
        await client.close()
        hub.stop()


def test_an_unreadable_ssh_key_stops_the_hub_at_start(tmp_path: Path) -> None:
    target = {
        "kind": "ssh",
        "host": "127.0.0.1",
        "user": "sandbox",
        "key_file": str(tmp_path / "missing-key"),
        "known_host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG0Aw3dQW8v6h0b8m0yTfW3mX0e6Q1kqk5Kc4Yq3s9b1",
    }
    result = serve_refused(
        tmp_path, {"packs": [{"name": "shell", "options": {"targets": {"agent-b": target}}}]}
    )
    assert result.returncode == 2
    assert "ssh target sandbox@127.0.0.1:22" in result.stderr and "missing-key" in result.stderr

"""The sandbox images. There is no Docker engine here: the Dockerfiles are parsed and checked, and the
entrypoint runs inside a bubblewrap jail (new user, PID, IPC, UTS and mount namespaces; the host's
network, so the hub on loopback is reachable) as a non-root user with the repository's venv read-only."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.hubclient import HubClient
from mcp_local.manifest import parse_manifest
from tests.support.clients import connect
from tests.support.hub import REPO, RunningHub, start_hub

pytestmark = pytest.mark.anyio

IMAGES = REPO / "sandbox_images"
VARIANTS = ["base", "python", "node"]
ENTRYPOINT = IMAGES / "entrypoint.sh"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str

    def exec_form(self) -> list[str] | None:
        text = self.args
        if self.keyword == "HEALTHCHECK":
            text = text.split("CMD", 1)[1].strip() if "CMD" in text else ""
        try:
            value = json.loads(text)
        except ValueError:
            return None
        return value if isinstance(value, list) else None


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped (enough for these files)."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        keyword, _, args = pending.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    assert not pending, f"{path}: a continuation runs off the end"
    return instructions


def _last(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert found, f"no {keyword}"
    return found[-1]


@pytest.mark.parametrize("variant", VARIANTS)
def test_dockerfile_runs_the_sidecar_as_a_non_root_user(variant: str) -> None:
    dockerfile = IMAGES / variant / "Dockerfile"
    instructions = parse_dockerfile(dockerfile)
    assert instructions[0].keyword in ("FROM", "ARG")
    user = _last(instructions, "USER").args
    assert user not in ("root", "0") and not user.startswith("0:")
    assert [i.keyword for i in instructions].index("USER") < len(instructions)
    health = _last(instructions, "HEALTHCHECK")
    assert health.exec_form() == ["mcphub", "local", "health"]
    assert "--interval" in health.args
    entrypoint = _last(instructions, "ENTRYPOINT").exec_form()
    assert entrypoint is not None and entrypoint[-1] == "/usr/local/bin/mcphub-entrypoint"
    copies = [i.args.split() for i in instructions if i.keyword == "COPY"]
    manifest = f"sandbox_images/{variant}/manifest.yaml"
    assert [manifest, "/etc/mcphub/manifest.yaml"] in [c[-2:] for c in copies]
    for copy in copies:  # the build context is the repository root: every source must exist there
        for source in [c for c in copy[:-1] if not c.startswith("--")]:
            assert (REPO / source).exists(), f"{dockerfile}: COPY source {source} is not in the repository"


def test_the_base_image_copies_every_package_it_installs() -> None:
    # `pip install /src/mcphub` builds what pyproject's package list finds there: a package the
    # image does not copy would be missing from the sidecar, and only a real build would notice.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    instructions = parse_dockerfile(IMAGES / "base" / "Dockerfile")
    copied = {i.args.split()[0] for i in instructions if i.keyword == "COPY"}
    assert packages <= copied, f"the base image does not copy {sorted(packages - copied)}"


def test_the_base_image_installs_only_the_sidecar_extra() -> None:
    runs = " ".join(i.args for i in parse_dockerfile(IMAGES / "base" / "Dockerfile") if i.keyword == "RUN")
    assert '"/src/mcphub[local]"' in runs
    assert (
        "[remote]" not in runs and "[all]" not in runs and "playwright" not in runs and "asyncssh" not in runs
    )
    assert "tini" in runs and "git" in runs


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_manifest_is_valid_and_loads(variant: str, tmp_path: Path) -> None:
    data = yaml.safe_load((IMAGES / variant / "manifest.yaml").read_text())
    manifest = parse_manifest(data, source=f"{variant}/manifest.yaml")
    assert str(manifest.workspace) == "/workspace"
    data["workspace"] = str(tmp_path)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    local = tmp_path / "manifest.yaml"
    local.write_text(yaml.safe_dump(data))
    out = subprocess.run(
        [sys.executable, "-m", "mcp_local", "check", "--manifest", str(local)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "files_read" in out.stdout and "git_status" in out.stdout


def test_the_entrypoint_is_posix_sh() -> None:
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n")
    assert os.access(ENTRYPOINT, os.X_OK)
    dash = shutil.which("dash") or "/bin/sh"
    assert subprocess.run([dash, "-n", str(ENTRYPOINT)], capture_output=True).returncode == 0


# --- the entrypoint in a jail ----------------------------------------------------------------

TOKEN = "token-of-sandbox-jail-0123456789"
AGENT = "agent-of-jail-token-0123456789"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    config = {
        "principals": [
            {"name": "sbx-jail", "token": TOKEN, "roles": ["sandbox"]},
            {"name": "agent", "token": AGENT, "tools": ["sbx-jail__*"]},
        ],
        # A sandbox's tools ask by default; this operator trusts the image under test.
        "policy": {
            "extends": "default",
            "rules": [{"name": "the image under test", "tools": ["sbx-jail__*"], "decision": "allow"}],
        },
    }
    running = start_hub(tmp_path_factory.mktemp("jail-hub"), config=config)
    yield running
    running.stop()


def jail_command(workspace: Path, manifest: Path, env: dict[str, str], command: list[str]) -> list[str]:
    base = Path(sys.base_prefix)
    venv_bin = Path(sys.executable).parent
    args = [
        "bwrap", "--unshare-all", "--share-net", "--die-with-parent", "--new-session",
        # /tmp first: bwrap mounts in order, and the checkout may itself live under /tmp.
        "--tmpfs", "/tmp",
        "--ro-bind", "/usr", "/usr",
        "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
        "--dir", "/etc",
        "--ro-bind", "/etc/passwd", "/etc/passwd", "--ro-bind", "/etc/group", "/etc/group",
        "--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache",
        "--ro-bind", str(base), str(base),
        "--ro-bind", str(REPO), str(REPO),
        # The venv may live outside the checkout (a git worktree shares the main one's venv,
        # whose editable install points at the main checkout): bind it, and put this checkout
        # first on the path (PYTHONPATH below) so that the jail runs the code under test.
        "--ro-bind", sys.prefix, sys.prefix,
        "--ro-bind", str(manifest), "/etc/mcphub/manifest.yaml",
        "--ro-bind", str(ENTRYPOINT), "/opt/mcphub/entrypoint",
        "--bind", str(workspace), "/workspace",
        "--proc", "/proc", "--dev", "/dev",
        "--uid", "1000", "--gid", "1000",
        "--chdir", "/workspace",
        "--clearenv",
        "--setenv", "PATH", f"{venv_bin}:/usr/bin:/bin",
        "--setenv", "HOME", "/workspace",
        "--setenv", "LC_ALL", "C.UTF-8",
        "--setenv", "PYTHONPATH", str(REPO),
    ]  # fmt: skip
    for key, value in env.items():
        args += ["--setenv", key, value]
    return [*args, "/opt/mcphub/entrypoint", *command]


@pytest.fixture
def jail_workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "hello.txt").write_text("hello from inside the jail\n")
    subprocess.run(["git", "init", "-q", str(ws)], check=True)
    os.chown(ws, 1000, 1000) if os.getuid() == 0 else None
    for path in ws.rglob("*"):
        if os.getuid() == 0:
            os.chown(path, 1000, 1000, follow_symlinks=False)
    return ws


async def _tools(hub: RunningHub, token: str) -> set[str]:
    client = HubClient(hub.grpc)
    try:
        return {t.name for t in await client.all_tools(token)}
    finally:
        await client.close()


async def _wait(predicate: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def _start_jail(command: list[str], out_path: Path) -> subprocess.Popen[bytes]:
    with out_path.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")
async def test_the_entrypoint_registers_the_sandbox_then_runs_the_agent(
    hub: RunningHub, jail_workspace: Path, tmp_path: Path
) -> None:
    manifest = IMAGES / "base" / "manifest.yaml"
    out_path = tmp_path / "jail.out"
    agent = [
        "sh",
        "-c",
        'echo "agent uid=$(id -u) token=${MCPHUB_TOKEN:-none} mcp=${MCPHUB_SIDECAR_MCP:-none}"; '
        "exec sleep 300",
    ]
    env = {
        "MCPHUB_HUB": hub.grpc,
        "MCPHUB_TOKEN": TOKEN,
        "MCPHUB_LOCAL_HTTP": "127.0.0.1:0",
        "MCPHUB_LOCAL_GRPC": "127.0.0.1:0",
    }
    jail = _start_jail(jail_command(jail_workspace, manifest, env, agent), out_path)
    try:

        async def registered() -> bool:
            assert jail.poll() is None, out_path.read_text()
            return "sbx-jail__files_read" in await _tools(hub, AGENT)

        await _wait(registered, "the jailed sidecar to register")
        async with connect("grpc", hub.grpc, hub.mcp_url, AGENT) as client:
            outcome = await client.call("sbx-jail__files_read", {"path": "hello.txt"})
            assert outcome.text == "hello from inside the jail\n"
            procs = await client.call("sbx-jail__process_list", {})
            commands = [p["cmdline"] for p in procs.structured["processes"]]
            assert any("mcphub local serve" in c for c in commands) and any(
                "sleep 300" in c for c in commands
            )
            assert all(p["uid"] == 1000 for p in procs.structured["processes"])

        async def agent_started() -> bool:
            return "agent uid=" in out_path.read_text()

        await _wait(agent_started, "the agent command to start")
        line = next(li for li in out_path.read_text().splitlines() if li.startswith("agent uid="))
        assert line.startswith("agent uid=1000 token=none mcp=http://127.0.0.1:")
        assert not line.endswith(":0/mcp") and line.endswith("/mcp")
    finally:
        jail.send_signal(signal.SIGKILL)  # the jail's PID namespace ends, taking the sidecar with it
        jail.wait(30)

    async def gone() -> bool:
        return "sbx-jail__files_read" not in await _tools(hub, AGENT)

    await _wait(gone, "the sandbox's tools to go with the jail")


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")
def test_a_sidecar_that_cannot_start_stops_the_container(jail_workspace: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("packs: [files]\nworkspace: /no/such/dir\n")
    result = subprocess.run(
        jail_command(jail_workspace, bad, {"MCPHUB_LOCAL_HTTP": "off"}, ["echo", "agent ran"]),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "the sidecar exited (status 2) before it was ready" in result.stderr
    assert "/no/such/dir is not a directory" in result.stderr
    assert "agent ran" not in result.stdout


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")
@pytest.mark.parametrize("grpc", ["127.0.0.1:0", "off"])
def test_the_healthcheck_finds_a_sidecar_on_a_port_it_chose(
    grpc: str, jail_workspace: Path, tmp_path: Path
) -> None:
    """The images' HEALTHCHECK (`mcphub local health`, run with the container's environment) was
    exit 2 "expected HOST:PORT" for MCPHUB_LOCAL_GRPC=127.0.0.1:0 or off: it now asks the address
    the entrypoint's ready file says the sidecar bound."""
    manifest = IMAGES / "base" / "manifest.yaml"
    env = {"MCPHUB_LOCAL_HTTP": "127.0.0.1:0", "MCPHUB_LOCAL_GRPC": grpc}
    agent = ["sh", "-c", "mcphub local health --json; echo health-rc=$?"]
    result = subprocess.run(
        jail_command(jail_workspace, manifest, env, agent), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    said, rc = result.stdout.strip().splitlines()[-2:]
    assert rc == "health-rc=0", (result.stdout, result.stderr)
    health = json.loads(said)
    assert health["healthy"] is True and health["sidecar"].startswith("127.0.0.1:")
    assert not health["sidecar"].endswith(":0")


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")
@pytest.mark.parametrize("value", ["abc", "1.5", "", "-3", "0", "08", "010", "99999999999999999999"])
def test_a_bad_ready_timeout_is_named_and_starts_nothing(
    value: str, jail_workspace: Path, tmp_path: Path
) -> None:
    manifest = IMAGES / "base" / "manifest.yaml"
    env = {"MCPHUB_LOCAL_HTTP": "off", "MCPHUB_READY_TIMEOUT": value}
    result = subprocess.run(
        jail_command(jail_workspace, manifest, env, ["echo", "agent ran"]),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if value == "":  # empty means the default, as unset does
        assert result.returncode == 0 and "agent ran" in result.stdout, result.stderr
        return
    assert result.returncode == 2, result.stderr
    # One line naming the variable, and nothing from a sidecar: none was started.
    assert result.stderr.strip() == (
        "mcphub-entrypoint: MCPHUB_READY_TIMEOUT must be a whole number of seconds "
        f"(1 to 999999, no leading zero), not '{value}'"
    )
    assert "agent ran" not in result.stdout


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")
async def test_the_agent_cannot_read_the_sidecars_token_from_proc(
    hub: RunningHub, jail_workspace: Path, tmp_path: Path
) -> None:
    # The agent runs as the sidecar's user; without PR_SET_DUMPABLE=0 it could read the token
    # from /proc/<sidecar>/environ (or the memfd the settings travel in, through /proc/PID/fd).
    manifest = IMAGES / "base" / "manifest.yaml"
    out_path = tmp_path / "jail.out"
    scan = (
        "for p in /proc/[0-9]*; do tr '\\0' '\\n' <$p/environ 2>/dev/null | grep TOKEN; "
        "for f in $p/fd/*; do grep -a -l " + TOKEN + " $f 2>/dev/null; done; done; "
        "echo scanned $(ls -d /proc/[0-9]* | wc -l) processes; exec sleep 300"
    )
    env = {"MCPHUB_HUB": hub.grpc, "MCPHUB_TOKEN": TOKEN, "MCPHUB_LOCAL_HTTP": "127.0.0.1:0"}
    env["MCPHUB_LOCAL_GRPC"] = "127.0.0.1:0"
    jail = _start_jail(jail_command(jail_workspace, manifest, env, ["sh", "-c", scan]), out_path)
    try:

        async def scanned() -> bool:
            assert jail.poll() is None, out_path.read_text()
            return "scanned" in out_path.read_text()

        await _wait(scanned, "the agent's scan of /proc")
        out = out_path.read_text()
        assert TOKEN not in out and "MCPHUB_TOKEN" not in out, out

        # Still a working sidecar: registered, and its own process listed by its process pack.
        async def registered() -> bool:
            return "sbx-jail__files_read" in await _tools(hub, AGENT)

        await _wait(registered, "the jailed sidecar to register")
        async with connect("grpc", hub.grpc, hub.mcp_url, AGENT) as client:
            assert (await client.call("sbx-jail__files_read", {"path": "hello.txt"})).text.startswith("hello")
            procs = await client.call("sbx-jail__process_list", {})
            commands = [p["cmdline"] for p in procs.structured["processes"]]
            assert any("mcphub local serve" in c for c in commands), commands
    finally:
        jail.send_signal(signal.SIGKILL)
        jail.wait(30)

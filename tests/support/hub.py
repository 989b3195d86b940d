"""Start a real `mcphub serve` in a subprocess on 127.0.0.1 port 0 and read its ready line."""

from __future__ import annotations

import json
import os
import pwd
import selectors
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
PROBE_PACK = str(REPO / "tests" / "packs" / "probe.py")
CONFORMANCE_PACK = str(REPO / "tests" / "conformance_pack.py")
FAULTY_PACK = str(REPO / "tests" / "packs" / "faulty.py")


class ServerProcess:
    """A server the tests started: its log, and stopping it (SIGTERM, then SIGKILL)."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


@dataclass
class RunningHub(ServerProcess):
    process: subprocess.Popen[bytes]
    grpc: str
    mcp_url: str | None
    state_dir: Path
    log_path: Path
    ready_after_s: float
    env: dict[str, str] = field(default_factory=dict)

    @property
    def http_base(self) -> str:
        assert self.mcp_url is not None
        return self.mcp_url.removesuffix("/mcp")


def hub_command(*args: str, module: str = "mcp_remote.cli") -> list[str]:
    return [sys.executable, "-m", module, *args]


def serve_refused(
    workdir: Path, config: Mapping[str, Any] | None = None, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`mcphub serve` for a hub that must refuse to start: the same ports (0, gRPC only), state
    directory (`workdir/state`) and config file (`workdir/hub.yaml`) as `start_hub`, and `args`
    after them; `env` is added to the environment. Returns its exit status and output; a hub
    that starts instead times out."""
    workdir.mkdir(parents=True, exist_ok=True)
    command = ["serve", "--grpc", "127.0.0.1:0", "--http", "off", "--state-dir", str(workdir / "state")]
    if config is not None:
        path = workdir / "hub.yaml"
        path.write_text(yaml.safe_dump(dict(config)))
        command += ["--config", str(path)]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MCPHUB_")} | dict(env or {})
    return subprocess.run(
        hub_command(*command, *args), capture_output=True, text=True, timeout=60, env=full_env, cwd=REPO
    )


def start_hub(
    workdir: Path,
    *,
    config: Mapping[str, Any] | None = None,
    packs: Iterable[str] = (),
    extra_args: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    http: bool = True,
    timeout: float = 30.0,
    module: str = "mcp_remote.cli",
    user: str | None = None,
) -> RunningHub:
    """`user`: run the hub as that (non-root) user, which must be able to reach `workdir`;
    the test process must be root."""
    workdir.mkdir(parents=True, exist_ok=True)
    state_dir = workdir / "state"
    args = ["serve", "--json", "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0" if http else "off"]
    args += ["--state-dir", str(state_dir)]
    if config is not None:
        path = workdir / "hub.yaml"
        path.write_text(yaml.safe_dump(dict(config)))
        args += ["--config", str(path)]
    for pack in packs:
        args += ["--pack", pack]
    args += list(extra_args)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MCPHUB_")}
    if config is None or "packs" not in config:
        # The embedded default also starts the shell and the browser; most tests need neither.
        full_env["MCPHUB_PACKS"] = "diagnostics"
    command = hub_command(*args, module=module)
    if user is not None:
        account = pwd.getpwnam(user)
        for path in (workdir, *workdir.iterdir()):  # the config file among them
            os.chown(path, account.pw_uid, account.pw_gid)
        as_user = [
            "setpriv",
            f"--reuid={account.pw_uid}",
            f"--regid={account.pw_gid}",
            "--clear-groups",
            "--",
        ]
        interpreter, extra = _interpreter_for(as_user, workdir)
        command = [*as_user, interpreter, *command[1:]]
        full_env.update(HOME=str(workdir), USER=user, LOGNAME=user, PYTHONDONTWRITEBYTECODE="1", **extra)
    full_env.update(env or {})
    log_path = workdir / "hub.log"
    started = time.monotonic()
    cwd = workdir if user is not None else REPO
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, env=full_env, cwd=cwd)
    assert process.stdout is not None
    line = _read_line(process, timeout)
    if not line:
        process.kill()
        process.wait()
        process.stdout.close()
        raise RuntimeError(
            f"hub did not become ready; exit {process.returncode}; log:\n{log_path.read_text()}"
        )
    ready = json.loads(line)
    return RunningHub(
        process, ready["grpc"], ready["mcp"], state_dir, log_path, time.monotonic() - started, full_env
    )


PROJECT_PACKAGES = ("bridge", "mcp_local", "mcp_remote", "mcphub_proto")


def _interpreter_for(as_user: list[str], workdir: Path) -> tuple[str, dict[str, str]]:
    """A Python the user can run with this environment's packages: this one, or, when it lives
    where the user cannot reach (a root-only pyenv), the system's Python of the same version
    with this environment's site-packages on its path (extension modules share the ABI).

    When the checkout or the environment itself lies where the user cannot reach (a clone under
    /root, or in a private temporary directory), the user gets a view of them in `workdir`:
    hard links to the same files (a copy across file systems), the project's packages first."""
    purelib = Path(sysconfig.get_paths()["purelib"])

    def reaches(path: Path, test: str = "-r") -> bool:
        probe = [*as_user, "/bin/sh", "-c", f'test {test} "$1"', "-", str(path)]
        return subprocess.run(probe, check=False).returncode == 0

    if reaches(Path(sys.executable), "-x") and reaches(REPO / "mcp_remote" / "cli.py"):
        return sys.executable, {}
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if not os.access(system, os.X_OK):
        raise RuntimeError(f"neither {sys.executable} nor {system} can be run by the hub's user")
    if reaches(REPO / "mcp_remote" / "cli.py") and reaches(purelib / "grpc" / "__init__.py"):
        return system, {
            "PYTHONPATH": f"{REPO}:{purelib}"
        }  # .pth files (the editable install) count only in site
    view = workdir / "python"
    view.mkdir()
    for name in PROJECT_PACKAGES:
        _link_tree(REPO / name, view / "src" / name)
    _link_tree(purelib, view / "site-packages")
    return system, {"PYTHONPATH": f"{view / 'src'}:{view / 'site-packages'}"}


def _link_tree(source: Path, target: Path) -> None:
    """`target` as a tree of hard links to `source`'s files (copies when they cannot be linked)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    linked = subprocess.run(["cp", "-al", str(source), str(target)], capture_output=True, check=False)
    if linked.returncode != 0:
        subprocess.run(["rm", "-rf", str(target)], check=True)
        subprocess.run(["cp", "-a", str(source), str(target)], check=True)


def _read_line(process: subprocess.Popen[bytes], timeout: float) -> bytes:
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or (process.poll() is not None and not selector.select(0)):
            return b""
        if selector.select(remaining):
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                return b""
            buf += chunk
    return buf.split(b"\n", 1)[0]

"""Start a real `mcphub local serve` in a subprocess (on 127.0.0.1 port 0) and read its ready line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.hub import ServerProcess, _read_line


@dataclass
class RunningSidecar(ServerProcess):
    process: subprocess.Popen[bytes]
    grpc: str
    mcp_url: str | None
    log_path: Path
    ready_after_s: float


def sidecar_command(*args: str, module: bool = False) -> list[str]:
    """`python -m mcp_local ...` (module=True), or `python -m mcp_remote.cli local ...` (as `mcphub`)."""
    if module:
        return [sys.executable, "-m", "mcp_local", *args]
    return [sys.executable, "-m", "mcp_remote.cli", "local", *args]


def write_manifest(workdir: Path, manifest: Mapping[str, Any]) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "manifest.yaml"
    path.write_text(yaml.safe_dump(dict(manifest)))
    return path


def start_sidecar(
    workdir: Path,
    manifest: Mapping[str, Any],
    *,
    http: bool = False,
    hub: str | None = None,
    token: str | None = None,
    extra_args: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    log_name: str = "sidecar.log",
) -> RunningSidecar:
    path = write_manifest(workdir, manifest)
    args = [
        "serve",
        "--json",
        "--manifest",
        str(path),
        "--grpc",
        "127.0.0.1:0",
        "--state-dir",
        str(workdir / "state"),
    ]
    if http:
        args += ["--http", "127.0.0.1:0"]
    if hub:
        args += ["--hub", hub, "--reconnect-max", "0.5"]
    args += list(extra_args)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MCPHUB_")}
    if token:
        full_env["MCPHUB_TOKEN"] = token
    full_env.update(env or {})
    log_path = workdir / log_name
    started = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            sidecar_command(*args), stdout=subprocess.PIPE, stderr=log, env=full_env, cwd=workdir
        )
    line = _read_line(process, timeout)
    if not line:
        process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()
        raise RuntimeError(
            f"sidecar did not become ready; exit {process.returncode}; log:\n{log_path.read_text()}"
        )
    ready = json.loads(line)
    return RunningSidecar(process, ready["grpc"], ready["mcp"], log_path, time.monotonic() - started)

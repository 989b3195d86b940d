"""The systems under test: which server process answers each row, and the call that drives it.

Every server is its own process on 127.0.0.1 port 0, started here and pinned to the
server CPU; the load generator is another process on the other CPUs.

A hub variant is just another hub config (`HUB_CONFIGS`): the rows name the variant
they run against, so measuring the hub with a stage switched off is one entry there
and one row in `SYSTEMS`.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tests.support.hub import REPO, start_hub

from . import wire
from .machine import pin

__all__ = [
    "HUB_CONFIGS",
    "SYSTEMS",
    "Server",
    "System",
    "full_pipeline_config",
    "make_call",
    "start_server",
]


def full_pipeline_config(token: str) -> dict[str, Any]:
    """The hub as a deployment runs it: callers present a token naming a principal, the
    shipped default policy allows `echo` and `sleep` (read-only tools), and every call's
    records are durable in the SQLite audit log before its result goes back: auth +
    policy allow + durable audit, as the issue asks.
    """
    return {
        "principals": [{"name": "bench", "token": token, "tools": ["echo", "sleep"]}],
    }


HUB_CONFIGS: dict[str, Callable[[str], dict[str, Any]]] = {
    "full": full_pipeline_config,
}

Kind = Literal["mcp", "mcp-session", "grpc-call", "grpc-stream"]


@dataclass(frozen=True, slots=True)
class System:
    key: str
    title: str
    server: str
    """`sdk-fastest`, `sdk-default`, `grpc-bare`, `grpclib-bare`, `hub:<variant>` or `ungated:<variant>` (the
    hub without its gate and audit trail, tests/bench/ungated_hub.py)."""
    kind: Kind


SYSTEMS: tuple[System, ...] = (
    System("sdk-fastest", "SDK MCPServer, fastest mode (stateless, JSON)", "sdk-fastest", "mcp"),
    System("sdk-default", "SDK MCPServer, default mode", "sdk-default", "mcp"),
    System("bridge", "mcphub bridge -> hub -> echo (MCP)", "hub:full", "mcp"),
    System("grpc-call", "mcphub gRPC CallTool, full pipeline", "hub:full", "grpc-call"),
    System(
        "grpc-call-ungated",
        "mcphub gRPC CallTool without gate and audit (bench-only build)",
        "ungated:full",
        "grpc-call",
    ),
    System("grpc-stream", "mcphub gRPC StreamCallTool, full pipeline", "hub:full", "grpc-stream"),
    System("grpc-bare", "bare grpc.aio echo (CallTool), the ceiling", "grpc-bare", "grpc-call"),
)
"""The rows, in report order. `sdk-fastest` is the reference every ratio is taken against."""

OPTIONAL_SYSTEMS: tuple[System, ...] = (
    System(
        "bridge-ungated", "mcphub bridge without gate and audit (bench-only build)", "ungated:full", "mcp"
    ),
    System("grpc-bare-stream", "bare grpc.aio echo (StreamCallTool)", "grpc-bare", "grpc-stream"),
    System(
        "grpclib-bare",
        "bare grpclib echo (CallTool), another Python gRPC server",
        "grpclib-bare",
        "grpc-call",
    ),
    System(
        "sdk-default-session",
        "SDK MCPServer, default mode, in a 2025-11-25 session",
        "sdk-default",
        "mcp-session",
    ),
    System(
        "bridge-session", "mcphub bridge -> hub -> echo, in a 2025-11-25 session", "hub:full", "mcp-session"
    ),
)
"""Rows run only when named with --systems."""


@dataclass
class Server:
    key: str
    process: subprocess.Popen[bytes]
    ready: dict[str, Any]
    log_path: Path
    _stop: Callable[[], object] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def _spawn(key: str, module: str, args: list[str], workdir: Path, timeout: float = 30.0) -> Server:
    log_path = workdir / f"{key}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPHUB_")}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, *args], stdout=subprocess.PIPE, stderr=log, cwd=REPO, env=env
        )
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf and time.monotonic() < deadline and process.poll() is None:
        if selector.select(max(0.0, deadline - time.monotonic())):
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
    selector.close()
    if b"\n" not in buf:
        process.kill()
        process.wait()
        process.stdout.close()
        raise RuntimeError(
            f"{key} did not print its ready line; log:\n{log_path.read_text(errors='replace')}"
        )
    return Server(key, process, json.loads(buf.split(b"\n", 1)[0]), log_path)


def start_server(key: str, workdir: Path, token: str, cpus: tuple[int, ...] | None) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    if key.startswith(("hub:", "ungated:")):
        kind, variant = key.split(":", 1)
        module = "tests.bench.ungated_hub" if kind == "ungated" else "mcp_remote.cli"
        hub = start_hub(workdir / key.replace(":", "-"), config=HUB_CONFIGS[variant](token), module=module)
        server = Server(key, hub.process, {"grpc": hub.grpc, "mcp": hub.mcp_url}, hub.log_path, hub.stop)
    elif key.startswith("sdk-"):
        server = _spawn(key, "tests.bench.sdk_echo", ["--mode", key.removeprefix("sdk-")], workdir)
    elif key == "grpc-bare":
        server = _spawn(key, "tests.bench.grpc_echo", [], workdir)
    elif key == "grpclib-bare":
        server = _spawn(key, "tests.bench.grpclib_echo", [], workdir)
    else:
        raise ValueError(
            f"unknown server {key!r}; expected sdk-fastest, sdk-default, grpc-bare, grpclib-bare, "
            "hub:<variant> or ungated:<variant>"
        )
    pin(server.pid, cpus)
    return server


def make_call(system: System, server: Server, token: str) -> wire.HttpCall | wire.GrpcCall:
    """The unvalidated call for a row. Every row sends the same bytes, token included (the SDK
    and the bare echo ignore it), so the requests differ only in where they go."""
    if system.kind == "mcp":
        return wire.mcp_call(server.ready.get("mcp") or server.ready["url"], token)
    if system.kind == "mcp-session":
        return wire.mcp_session_call(server.ready.get("mcp") or server.ready["url"], token)
    path = wire.CALL_TOOL_PATH if system.kind == "grpc-call" else wire.STREAM_CALL_TOOL_PATH
    return wire.grpc_call(server.ready["grpc"], path, token)

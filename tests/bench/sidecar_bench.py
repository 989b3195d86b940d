"""The sidecar's footprint: start-up time to ready and idle memory of `mcphub local serve`.

    python -m tests.bench.sidecar_bench [--runs 5] [--idle 5] [--calls 300]

Prints one JSON object. Start-up is wall time from spawning the process to its ready line
(packs loaded, gRPC bound), median of `--runs`, for both entry points. Memory is read from
/proc after `--idle` seconds with nothing to do: RSS (the goal: under 40 MB), and PSS and
private memory (RSS counts shared libraries in full, so it overstates what one more sidecar
costs a machine). Configurations: gRPC only; registered with a hub; with the MCP bridge;
and, for scale, `grpc_floor` (grpc.aio serving the same gRPC services with nothing
behind them: what grpcio, protobuf and asyncio cost before any sidecar code).
A short serial call loop gives the sidecar's own call latency over gRPC.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from tests.support.hub import REPO, _read_line, start_hub

TOKEN = "bench-sandbox-token-0123456789"


def _memory(pid: int) -> dict[str, float]:
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            fields[key] = float(value.split()[0]) / 1024
    private = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    threads = len(os.listdir(f"/proc/{pid}/task"))
    return {
        "rss_mb": round(fields["Rss"], 1),
        "pss_mb": round(fields["Pss"], 1),
        "private_mb": round(private, 1),
        "threads": threads,
    }


def _workspace(root: Path) -> Path:
    ws = root / "workspace"
    ws.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", str(ws)], check=True)
    (ws / "README.md").write_text("bench\n")
    conn = sqlite3.connect(ws / "app.db")
    with conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
        conn.executemany("INSERT INTO t (v) VALUES (?)", [(f"v{i}",) for i in range(100)])
    conn.close()
    manifest = root / "manifest.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "workspace": str(ws),
                "packs": [
                    "files",
                    "git",
                    "process",
                    {"name": "sql", "options": {"databases": {"app": {"sqlite": "app.db"}}}},
                ],
            }
        )
    )
    return manifest


def floor(root: Path, idle_s: float) -> dict[str, Any]:
    """The same memory figures for `grpc_floor`: grpc.aio serving the sidecar's services, no sidecar."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPHUB_")}
    env["PYTHONPATH"] = str(REPO)
    process, _ready, _ = _start([sys.executable, "-m", "tests.bench.grpc_floor"], root, env)
    try:
        time.sleep(idle_s)
        if process.poll() is not None:
            raise RuntimeError(f"grpc_floor exited: {(root / 'sidecar.log').read_text()[-2000:]}")
        return _memory(process.pid)
    finally:
        _stop(process)


def _command(module: bool, *args: str) -> list[str]:
    if module:
        return [sys.executable, "-m", "mcp_local", *args]
    return [str(Path(sys.executable).parent / "mcphub"), "local", *args]


def _start(
    command: list[str], root: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], dict[str, Any], float]:
    started = time.perf_counter()
    with (root / "sidecar.log").open("ab") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, cwd=root, env=env)
    line = _read_line(process, 60)
    elapsed = time.perf_counter() - started
    if not line:
        process.kill()
        raise RuntimeError(f"the sidecar did not start: {(root / 'sidecar.log').read_text()[-2000:]}")
    return process, json.loads(line), elapsed


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


def startup(manifest: Path, root: Path, runs: int, module: bool) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPHUB_")}
    times = []
    for _ in range(runs):
        process, _ready, elapsed = _start(
            _command(module, "serve", "--json", "--manifest", str(manifest), "--grpc", "127.0.0.1:0"),
            root,
            env,
        )
        _stop(process)
        times.append(elapsed)
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3), "runs": runs}


def idle(
    manifest: Path, root: Path, idle_s: float, extra: list[str], env_extra: dict[str, str]
) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPHUB_")}
    env.update(env_extra)
    args = ["serve", "--json", "--manifest", str(manifest), "--grpc", "127.0.0.1:0", *extra]
    process, ready, _ = _start(_command(False, *args), root, env)
    try:
        time.sleep(idle_s)
        if process.poll() is not None:
            raise RuntimeError(f"the sidecar exited: {(root / 'sidecar.log').read_text()[-2000:]}")
        return {**_memory(process.pid), "ready": {k: ready[k] for k in ("grpc", "mcp", "hub", "tools")}}
    finally:
        _stop(process)


async def _latency(target: str, calls: int) -> dict[str, Any]:
    from bridge.hubclient import HubClient
    from mcphub_proto.v1 import toolhub_pb2 as pb

    client = HubClient(target)
    request = pb.CallToolRequest(
        name="sql_query", arguments_json=b'{"sql": "SELECT v FROM t WHERE id = ?", "params": [7]}'
    )
    samples = []
    try:
        for _ in range(20):
            await client.call_tool(None, request)
        for _ in range(calls):
            started = time.perf_counter()
            result = await client.call_tool(None, request)
            samples.append(time.perf_counter() - started)
            assert not result.is_error
    finally:
        await client.close()
    samples.sort()
    return {
        "tool": "sql_query (SQLite)",
        "calls": calls,
        "p50_ms": round(samples[len(samples) // 2] * 1000, 2),
        "p99_ms": round(samples[int(len(samples) * 0.99) - 1] * 1000, 2),
    }


def latency(manifest: Path, root: Path, calls: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPHUB_")}
    process, ready, _ = _start(
        _command(False, "serve", "--json", "--manifest", str(manifest), "--grpc", "127.0.0.1:0"), root, env
    )
    try:
        return asyncio.run(_latency(ready["grpc"], calls))
    finally:
        _stop(process)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="start-ups to time (median reported)")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds idle before memory is read")
    parser.add_argument(
        "--calls", type=int, default=300, help="serial calls for the latency figure (0: skip)"
    )
    opts = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mcphub-sidecar-bench-") as tmp:
        root = Path(tmp)
        manifest = _workspace(root)
        hub = start_hub(
            root / "hub",
            config={"principals": [{"name": "sbx-bench", "token": TOKEN, "roles": ["sandbox"]}]},
            http=False,
        )
        try:
            report: dict[str, Any] = {
                "machine": {
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "kernel": platform.release(),
                },
                "manifest_packs": ["files", "git", "process", "sql"],
                "startup": {
                    "mcphub_local_serve": startup(manifest, root, opts.runs, module=False),
                    "python_m_mcp_local": startup(manifest, root, opts.runs, module=True),
                },
                "idle_memory": {
                    "grpc_only": idle(manifest, root, opts.idle, [], {}),
                    "registered_with_hub": idle(
                        manifest, root, opts.idle, ["--hub", hub.grpc], {"MCPHUB_TOKEN": TOKEN}
                    ),
                    "with_mcp_bridge": idle(manifest, root, opts.idle, ["--http", "127.0.0.1:0"], {}),
                    # Not a sidecar: grpc.aio serving the same services with nothing behind them.
                    "floor_bare_grpc_aio": floor(root, opts.idle),
                },
                "goal_idle_rss_mb": 40,
            }
            if opts.calls:
                report["latency"] = latency(manifest, root, opts.calls)
        finally:
            hub.stop()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    os.chdir(REPO)
    raise SystemExit(main())

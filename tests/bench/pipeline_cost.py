"""What the hub's dispatch stages add to one allowed call, measured in-process (no sockets).

    python -m tests.bench.pipeline_cost --config hub.yaml --state-dir DIR --token T --calls 20000

Builds the hub from the config exactly as `mcphub serve` does (its `stages()` are the
ones every call passes: audit trail, authenticate, resolve, authorize, validate, gate),
then alternates three measurements call by call so drift hits all alike:

- `pipeline`: `hub.pipeline(call)` for an `echo` call carrying the bearer token, each
  call waiting (as in the hub) until its audit records are durable in the store;
- `ungated`: the same stages without the audit trail and the gate;
- `execute`: the same call already resolved and validated, straight to `execute`.

Between calls the loop runs its other tasks, untimed, as a serving hub's loop does between
requests: that is where the audit writer folds its journal into SQLite, so the fold's cost
is in the end-to-end CPU figures of the benchmark, not in these medians.

`gate_audit_p50_us` (pipeline minus ungated) is what the gate and the audit log add to
one allowed call; `overhead_p50_us` (pipeline minus execute) is every stage's cost.

Then the process's CPU time (all threads) is taken over `calls` calls through the pipeline
back to back, and over as many without the gate and the audit trail: `gate_audit_cpu_us`,
the difference per call, is the mean and includes the writer task's folds into SQLite and its
log checkpoints, which the medians leave out.

`--sweep-kb N` overwrites an N KB buffer before every timed call (its own time is taken out),
so each call starts with the CPU caches holding something else, as in a serving hub, where
gRPC's core, the kernel and the other calls run between one call's stages and the next's.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import uvloop

from mcp_local.pipeline import Pipeline, execute
from mcp_local.tools import ToolCall
from mcp_remote.config import load_config
from mcp_remote.hub import Hub

from .loadgen import percentile

__all__ = ["main", "measure"]


class _Sweep:
    """Evicts the CPU caches between calls (see `--sweep-kb`), keeping count of its own CPU time."""

    def __init__(self, kb: int) -> None:
        self._buffer = bytearray(kb * 1024)
        self._zeros = bytes(kb * 1024)
        self.cpu_ns = 0

    def __call__(self) -> None:
        if self._buffer:
            started = time.process_time_ns()
            self._buffer[:] = self._zeros
            self.cpu_ns += time.process_time_ns() - started


async def _cpu_per_call(pipeline: Pipeline, make_call: Any, calls: int, sweep: _Sweep) -> float:
    """Mean CPU us per call of the whole process over `calls` calls back to back, with whatever
    the loop runs between them (the writer's folds), minus the sweeps."""
    sweep.cpu_ns = 0
    started = time.process_time_ns()
    for _ in range(calls):
        await asyncio.sleep(0)
        sweep()
        await pipeline(make_call())
    await asyncio.sleep(0.5)  # the last fold (FOLD_AFTER_S) runs, and is counted
    return (time.process_time_ns() - started - sweep.cpu_ns) / calls / 1000


async def measure(
    config_path: Path, state_dir: Path, token: str, calls: int, sweep_kb: int = 0
) -> dict[str, Any]:
    overrides = {"http": "off", "grpc": "127.0.0.1:0", "state_dir": state_dir}
    config = load_config(config_path, os.environ, overrides)
    hub = Hub(config, os.environ)
    await hub.start()
    try:
        registered = hub.registry.get("echo")
        if registered is None:
            raise RuntimeError("the hub has no echo tool; the diagnostics pack must be loaded")
        tool = registered.tool
        arguments_json = b'{"text":"hello, mcphub"}'
        arguments = {"text": "hello, mcphub"}
        pipeline = hub.pipeline
        ungated = Pipeline([s for s in hub.stages() if s.name not in ("audit", "gate")])
        authorization = f"Bearer {token}"
        clock = time.perf_counter_ns
        through: list[int] = []
        bare: list[int] = []
        direct: list[int] = []
        sweep = _Sweep(sweep_kb)
        for _ in range(calls):
            await asyncio.sleep(0)
            sweep()
            call = ToolCall("echo", arguments_json, authorization=authorization)
            start = clock()
            result = await pipeline(call)
            through.append(clock() - start)
            if result.is_error:
                raise RuntimeError(f"echo through the pipeline failed: {result!r}")
            call = ToolCall("echo", arguments_json, authorization=authorization)
            sweep()
            start = clock()
            await ungated(call)
            bare.append(clock() - start)
            call = ToolCall("echo", arguments_json)
            call.tool = tool
            call.arguments = arguments
            sweep()
            start = clock()
            await execute(call)
            direct.append(clock() - start)
        stages = hub.pipeline.stage_names

        def make_call() -> ToolCall:
            return ToolCall("echo", arguments_json, authorization=authorization)

        cpu_through = await _cpu_per_call(pipeline, make_call, calls, sweep)
        cpu_bare = await _cpu_per_call(ungated, make_call, calls, sweep)
    finally:
        await hub.stop(0)
    through.sort()
    bare.sort()
    direct.sort()
    return {
        "calls": calls,
        "stages": stages,
        "pipeline_p50_us": percentile(through, 50) / 1000,
        "pipeline_p99_us": percentile(through, 99) / 1000,
        "ungated_p50_us": percentile(bare, 50) / 1000,
        "execute_p50_us": percentile(direct, 50) / 1000,
        "gate_audit_p50_us": round((statistics.median(through) - statistics.median(bare)) / 1000, 2),
        "overhead_p50_us": round((statistics.median(through) - statistics.median(direct)) / 1000, 2),
        "pipeline_cpu_us": round(cpu_through, 2),
        "ungated_cpu_us": round(cpu_bare, 2),
        "gate_audit_cpu_us": round(cpu_through - cpu_bare, 2),
        "sweep_kb": sweep_kb,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.pipeline_cost")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument(
        "--sweep-kb",
        type=int,
        default=0,
        metavar="N",
        help="overwrite an N KB buffer before each timed call, so it starts with cold CPU caches",
    )
    args = parser.parse_args(argv)
    if args.calls < 1 or args.sweep_kb < 0:
        parser.error("--calls must be at least 1 and --sweep-kb at least 0")
    result = measure(args.config, args.state_dir, args.token, args.calls, args.sweep_kb)
    print(json.dumps(uvloop.run(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

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


async def measure(config_path: Path, state_dir: Path, token: str, calls: int) -> dict[str, Any]:
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
        for _ in range(calls):
            await asyncio.sleep(0)
            call = ToolCall("echo", arguments_json, authorization=authorization)
            start = clock()
            result = await pipeline(call)
            through.append(clock() - start)
            if result.is_error:
                raise RuntimeError(f"echo through the pipeline failed: {result!r}")
            call = ToolCall("echo", arguments_json, authorization=authorization)
            start = clock()
            await ungated(call)
            bare.append(clock() - start)
            call = ToolCall("echo", arguments_json)
            call.tool = tool
            call.arguments = arguments
            start = clock()
            await execute(call)
            direct.append(clock() - start)
        stages = hub.pipeline.stage_names
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
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.pipeline_cost")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args(argv)
    print(json.dumps(uvloop.run(measure(args.config, args.state_dir, args.token, args.calls))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the hub's dispatch stages add to one allowed call, measured in-process (no sockets).

    python -m tests.bench.pipeline_cost --config hub.yaml --state-dir DIR --token T --calls 20000

Builds the hub from the config exactly as `mcphub serve` does (its `stages()` are the
ones every call passes: authenticate, resolve, authorize, and whatever later issues add,
such as the policy gate and the audit log), then alternates two measurements call by
call so drift hits both alike:

- `pipeline`: `hub.pipeline(call)` for an `echo` call carrying the bearer token;
- `execute`: the same call already resolved and validated, straight to `execute`.

The median difference is the cost of all the stages before the tool runs; it bounds
"gate + audit added per allowed call" from above. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import uvloop

from mcp_local.pipeline import execute
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
        clock = time.perf_counter_ns
        through: list[int] = []
        direct: list[int] = []
        for _ in range(calls):
            call = ToolCall("echo", arguments_json, token=token)
            start = clock()
            result = await pipeline(call)
            through.append(clock() - start)
            if result.is_error:
                raise RuntimeError(f"echo through the pipeline failed: {result!r}")
            call = ToolCall("echo", arguments_json, token=token)
            call.tool = tool
            call.arguments = arguments
            start = clock()
            await execute(call)
            direct.append(clock() - start)
        stages = hub.pipeline.stage_names
    finally:
        await hub.stop(0)
    through.sort()
    direct.sort()
    return {
        "calls": calls,
        "stages": stages,
        "pipeline_p50_us": percentile(through, 50) / 1000,
        "pipeline_p99_us": percentile(through, 99) / 1000,
        "execute_p50_us": percentile(direct, 50) / 1000,
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

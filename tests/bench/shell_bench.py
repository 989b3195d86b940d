"""Benchmark: `shell_exec` of `true` through a real hub over gRPC, in the jail.

    python -m tests.bench.shell_bench [--calls 200] [--concurrency 50] [--rounds 3]

Starts `mcphub serve` with the shell pack on 127.0.0.1 port 0, then measures
  - sequential: `calls` calls one after another (median, p90, p99 in ms),
  - concurrent: `concurrency` calls at once, `rounds` times (wall time per batch, per-call p50/p99),
  - the same sequential run of `echo` (the hub's own overhead, for comparison),
and prints one JSON object. The target is a median under 20 ms for the sequential run. The machine
may be shared: the load average before and after is part of the output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bridge.hubclient import HubClient
from mcphub_proto.v1 import toolhub_pb2 as pb
from tests.support.hub import start_hub


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[index] * 1000, 2)


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(values) * 1000, 2),
        "p90_ms": _ms(values, 0.90),
        "p99_ms": _ms(values, 0.99),
        "min_ms": _ms(values, 0.0),
        "max_ms": _ms(values, 1.0),
    }


async def _call(hub: HubClient, request: pb.CallToolRequest) -> float:
    started = time.perf_counter()
    result = await hub.call_tool(None, request, timeout=60)
    elapsed = time.perf_counter() - started
    if result.is_error:
        raise RuntimeError(f"{request.name} failed: {result.content[0].text.text if result.content else ''}")
    if request.name == "shell_exec" and orjson.loads(result.structured_content_json)["exit_code"] != 0:
        raise RuntimeError("shell_exec of true did not exit 0")
    return elapsed


async def run(calls: int, concurrency: int, rounds: int) -> dict[str, Any]:
    exec_true = pb.CallToolRequest(name="shell_exec", arguments_json=orjson.dumps({"command": "true"}))
    echo = pb.CallToolRequest(name="echo", arguments_json=orjson.dumps({"text": "x"}))
    with tempfile.TemporaryDirectory(prefix="mcphub-bench-") as workdir:
        config = {"packs": [{"name": "diagnostics"}, {"name": "shell"}]}
        hub = start_hub(Path(workdir), config=config, http=False)
        client = HubClient(hub.grpc)
        load_before = os.getloadavg()
        try:
            for _ in range(20):  # warm up: workspace, cgroups, mount namespace, channel
                await _call(client, exec_true)
                await _call(client, echo)
            sequential = [await _call(client, exec_true) for _ in range(calls)]
            echoes = [await _call(client, echo) for _ in range(calls)]
            batches = []
            per_call: list[float] = []
            for _ in range(rounds):
                started = time.perf_counter()
                done = await asyncio.gather(*(_call(client, exec_true) for _ in range(concurrency)))
                batches.append(time.perf_counter() - started)
                per_call.extend(done)
        finally:
            await client.close()
            hub.stop()
    return {
        "benchmark": "shell_exec true through the hub over gRPC (jail)",
        "machine": {"cpus": os.cpu_count(), "load_before": load_before, "load_after": os.getloadavg()},
        "sequential": {"calls": calls, **_summary(sequential), "target_median_ms": 20},
        "echo_for_comparison": {"calls": calls, **_summary(echoes)},
        "concurrent": {
            "concurrency": concurrency,
            "rounds": rounds,
            "all_succeeded": len(per_call) == concurrency * rounds,
            "batch_wall_ms": [round(b * 1000, 1) for b in batches],
            "per_call": _summary(per_call),
            "throughput_per_s": round(concurrency * rounds / sum(batches), 1),
        },
    }


def main(argv: list[str] | None = None) -> int:
    summary = (__doc__ or "").splitlines()[0]
    parser = argparse.ArgumentParser(prog="python -m tests.bench.shell_bench", description=summary)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.calls, args.concurrency, args.rounds))
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

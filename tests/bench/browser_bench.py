"""Browser benchmark: a new session (context) + navigate to a local page + snapshot, through a real hub.

    python -m tests.bench.browser_bench [--runs 40] [--warmup 5] [--transport grpc]

Starts a hub with the browser pack (loopback allowed) and a local website, warms
the browser, then times, per run: `browser_navigate` in a fresh session (which
creates its context; its result already carries the page snapshot), then
`browser_snapshot`, and reports the sum. Each session is closed afterwards and
the run pauses (`--pause-ms`, as an agent thinks between calls), both untimed.
The pause lets the pack top up its spare contexts (created ahead, `spare_contexts`,
default 2), so a new session usually starts from a spare; `--spare-contexts 0` times
context creation inside each run instead.
Prints one JSON object.
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

from tests.mcp_remote.tools.browser_site import serve_site
from tests.support.clients import connect
from tests.support.hub import start_hub

TARGET_MEDIAN_MS = 150.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def _run(
    grpc: str,
    mcp_url: str | None,
    url: str,
    runs: int,
    warmup: int,
    transport: str,
    pause_s: float,
    spare_contexts: int | None,
) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    totals: list[float] = []
    navigates: list[float] = []
    snapshots: list[float] = []
    async with connect(transport, grpc, mcp_url, None) as client:
        for i in range(warmup + runs):
            session = f"bench-{i}"
            start = time.perf_counter()
            nav = await client.call("browser_navigate", {"url": url, "session": session})
            mid = time.perf_counter()
            snap = await client.call("browser_snapshot", {"session": session})
            end = time.perf_counter()
            if nav.is_error or snap.is_error or "Bench page" not in snap.text:
                raise SystemExit(f"run {i} failed: {nav.text} {snap.text}")
            await client.call("browser_close", {"session": session})
            await asyncio.sleep(pause_s)  # an agent's think time; the hub tops up its spare context
            if i >= warmup:
                navigates.append((mid - start) * 1000)
                snapshots.append((end - mid) * 1000)
                totals.append((end - start) * 1000)
    median = statistics.median(totals)
    return {
        "benchmark": "browser: new context + navigate (local page) + snapshot",
        "transport": transport,
        "runs": runs,
        "pause_between_runs_ms": round(pause_s * 1000),
        "spare_contexts": "pack default" if spare_contexts is None else spare_contexts,
        "median_ms": round(median, 1),
        "p90_ms": round(_percentile(totals, 0.90), 1),
        "p99_ms": round(_percentile(totals, 0.99), 1),
        "min_ms": round(min(totals), 1),
        "navigate_median_ms": round(statistics.median(navigates), 1),
        "snapshot_median_ms": round(statistics.median(snapshots), 1),
        "target_median_ms": TARGET_MEDIAN_MS,
        "within_target": median < TARGET_MEDIAN_MS,
        "cpus": os.cpu_count(),
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.browser_bench", description=__doc__)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--transport", default="grpc", choices=["grpc", "mcp-2026", "mcp-2025"])
    parser.add_argument(
        "--pause-ms",
        type=float,
        default=300,
        help="untimed pause between runs, as an agent thinks between calls (default 300; 0 for back-to-back)",
    )
    parser.add_argument(
        "--spare-contexts",
        type=int,
        default=None,
        help="the browser pack's spare_contexts option (default: the pack's default, 2; 0 disables)",
    )
    args = parser.parse_args(argv)
    if not Path("/usr/bin/chromium").exists():
        print(json.dumps({"benchmark": "browser", "skipped": "no /usr/bin/chromium"}))
        return 0
    with tempfile.TemporaryDirectory(prefix="browser-bench-") as tmp, serve_site() as site:
        options: dict[str, Any] = {"allow": ["127.0.0.1"]}
        if args.spare_contexts is not None:
            options["spare_contexts"] = args.spare_contexts
        config = {"packs": [{"name": "browser", "options": options}]}
        hub = start_hub(Path(tmp), config=config)
        try:
            report = asyncio.run(
                _run(
                    hub.grpc,
                    hub.mcp_url,
                    site.url("/echo?n=Bench page"),
                    args.runs,
                    args.warmup,
                    args.transport,
                    args.pause_ms / 1000,
                    args.spare_contexts,
                )
            )
        finally:
            hub.stop()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

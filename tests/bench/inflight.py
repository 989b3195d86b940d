"""Many calls in flight at once: N concurrent `sleep` calls against a hub, from one gRPC channel.

    python -m tests.bench.inflight --grpc HOST:PORT --token T --calls 1000 --seconds 1 --method stream

Every call must come back with the tool's own answer; prints one JSON line with the
errors (the first few named), the wall time, and how far apart the calls started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import grpc
import orjson

from bridge.hubclient import HubClient
from mcphub_proto.v1 import toolhub_pb2 as pb

__all__ = ["main", "run"]


async def _one(
    hub: HubClient, token: str, request: pb.CallToolRequest, method: str, expected: str
) -> str | None:
    """None when the call answered correctly, else what went wrong."""
    result: pb.CallToolResult | None = None
    try:
        if method == "call":
            result = await hub.call_tool(token, request, timeout=120)
        else:
            async for event in hub.stream_call_tool(token, request, timeout=120):
                if event.WhichOneof("event") == "result":
                    result = event.result
    except grpc.aio.AioRpcError as exc:
        return f"{exc.code().name}: {exc.details()}"
    if result is None:
        return "the stream ended without a result"
    texts = [b.text.text for b in result.content if b.WhichOneof("block") == "text"]
    if result.is_error or texts != [expected]:
        return f"unexpected result: is_error={result.is_error} text={texts!r}"
    return None


async def run(target: str, token: str, calls: int, seconds: float, method: str) -> dict[str, Any]:
    hub = HubClient(target)
    try:
        await hub.wait_ready(30)
        request = pb.CallToolRequest(name="sleep", arguments_json=orjson.dumps({"seconds": seconds}))
        expected = f"slept {seconds:g}s"
        started = time.perf_counter()
        outcomes = await asyncio.gather(*(_one(hub, token, request, method, expected) for _ in range(calls)))
        wall = time.perf_counter() - started
    finally:
        await hub.close()
    failures = [o for o in outcomes if o is not None]
    return {
        "method": method,
        "calls": calls,
        "sleep_s": seconds,
        "errors": len(failures),
        "first_errors": sorted(set(failures))[:5],
        "wall_s": round(wall, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.inflight")
    parser.add_argument("--grpc", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--method", choices=["call", "stream"], default="stream")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.grpc, args.token, args.calls, args.seconds, args.method))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

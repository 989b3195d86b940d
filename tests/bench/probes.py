"""The figures that are not calls per second: in-flight calls, memory, start-up, stage cost.

Each probe runs its own process (a client, or a hub) and returns a plain dict for the report.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from mcp_remote.config import DEFAULT_PACKS
from tests.support.hub import REPO, start_hub

from .machine import rss_kib, rss_mb

__all__ = ["inflight", "pipeline_cost", "sidecar_rss", "startup"]


def _pinned(command: list[str], cpus: tuple[int, ...] | None) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, cpus)), *command] if cpus else command


def _clean_env() -> dict[str, str]:
    """The environment without MCPHUB_* settings, which would override the bench's config."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MCPHUB_")}


def _run_json(command: list[str], timeout: float) -> dict[str, Any]:
    done = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=timeout, cwd=REPO, env=_clean_env()
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(command[:4])} failed (exit {done.returncode}): {done.stderr[-1500:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def inflight(
    grpc_target: str, token: str, calls: int, seconds: float, method: str, cpus: tuple[int, ...] | None
) -> dict[str, Any]:
    """`calls` concurrent `sleep` calls from a separate client process."""
    command = [sys.executable, "-m", "tests.bench.inflight", "--grpc", grpc_target, f"--token={token}"]
    command += ["--calls", str(calls), "--seconds", str(seconds), "--method", method]
    return _run_json(_pinned(command, cpus), timeout=seconds + 120)


def pipeline_cost(
    config: dict[str, Any], token: str, calls: int, workdir: Path, cpus: tuple[int, ...] | None
) -> dict[str, Any]:
    """The hub's stages measured in-process (see pipeline_cost.py), on the server CPU."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "hub.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "tests.bench.pipeline_cost", "--config", str(path)]
    command += ["--state-dir", str(workdir / "state"), f"--token={token}", "--calls", str(calls)]
    return _run_json(_pinned(command, cpus), timeout=600)


def _first_mcp_request(mcp_url: str) -> None:
    """One stateless 2026-07-28 `tools/list`: what a hub holds once it has served MCP."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "mcphub-bench", "version": "1"},
    }
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}})
    request = urllib.request.Request(
        mcp_url,
        data=body.encode(),
        headers={
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": "2026-07-28",
            "mcp-method": "tools/list",
        },
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    if "result" not in answer:
        raise RuntimeError(f"tools/list through the bridge failed: {answer}")


def startup(runs: int, idle_s: float, workdir: Path) -> dict[str, Any]:
    """`mcphub serve` with the embedded defaults (its default packs, ports 0, a fresh state dir):
    time to the ready line, then its RSS after `idle_s` of idling, the time its first MCP
    request takes (the bridge imports the MCP SDK for it), and the RSS again `idle_s` after
    it. `runs` fresh processes; medians quoted."""
    ready_s: list[float] = []
    rss: list[int] = []
    anon: list[int] = []
    after_mcp: list[int] = []
    first_mcp_s: list[float] = []
    # start_hub narrows the packs to `diagnostics` unless told otherwise; these are the real defaults.
    env = {"MCPHUB_PACKS": ",".join(DEFAULT_PACKS)}
    for i in range(runs):
        hub = start_hub(workdir / f"startup-{i}", env=env)
        try:
            ready_s.append(hub.ready_after_s)
            time.sleep(idle_s)
            rss.append(rss_kib(hub.process.pid))
            anon.append(rss_kib(hub.process.pid, "RssAnon"))
            assert hub.mcp_url is not None
            started = time.perf_counter()
            _first_mcp_request(hub.mcp_url)
            first_mcp_s.append(time.perf_counter() - started)
            time.sleep(idle_s)
            after_mcp.append(rss_kib(hub.process.pid))
        finally:
            hub.stop()
    return {
        "runs": runs,
        "packs": list(DEFAULT_PACKS),
        "ready_s": [round(s, 3) for s in ready_s],
        "ready_s_median": round(statistics.median(ready_s), 3),
        "idle_rss_mb": [rss_mb(r) for r in rss],
        "idle_rss_mb_median": rss_mb(round(statistics.median(rss))),
        "idle_rss_anon_mb_median": rss_mb(round(statistics.median(anon))),
        "after_first_mcp_rss_mb_median": rss_mb(round(statistics.median(after_mcp))),
        "first_mcp_request_s_median": round(statistics.median(first_mcp_s), 3),
        "idle_s": idle_s,
    }


def sidecar_rss(idle_s: float, workdir: Path) -> dict[str, Any]:
    """Idle memory of `mcphub local serve`, the in-sandbox sidecar, as a sandbox runs it: the
    packs of a sandbox image (files, git, process, sql on a SQLite file) and registered with
    a hub, which this probe starts with a sandbox principal. The same measurement as
    `python -m tests.bench.sidecar_bench` (its "registered_with_hub"), which also reports
    the sidecar serving gRPC only and with the MCP bridge. `floor_rss_mb` is grpc.aio serving
    the same services with nothing behind them (`grpc_floor`), for scale."""
    from . import sidecar_bench

    workdir.mkdir(parents=True, exist_ok=True)
    manifest = sidecar_bench._workspace(workdir)
    principal = {"name": "sbx-bench", "token": sidecar_bench.TOKEN, "roles": ["sandbox"]}
    hub = start_hub(workdir / "hub", config={"principals": [principal]}, http=False)
    try:
        memory = sidecar_bench.idle(
            manifest, workdir, max(idle_s, 3.0), ["--hub", hub.grpc], {"MCPHUB_TOKEN": sidecar_bench.TOKEN}
        )
        floor = sidecar_bench.floor(workdir, max(idle_s, 3.0))
    except RuntimeError as exc:
        return {"available": False, "reason": str(exc)[-800:]}
    finally:
        hub.stop()
    log = (workdir / "sidecar.log").read_text(errors="replace")
    return {
        "available": True,
        "registered": "registered with the hub at" in log,
        "idle_rss_mb": memory["rss_mb"],
        "idle_pss_mb": memory["pss_mb"],
        "idle_private_mb": memory["private_mb"],
        # grpc.aio serving the same services with no sidecar behind them (tests/bench/grpc_floor.py)
        "floor_rss_mb": floor["rss_mb"],
    }

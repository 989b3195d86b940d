"""One benchmark run: start every system, check its answers, drive it, probe the rest, stop everything.

Rows are interleaved (run 1 of every row and caller count, then run 2, ...) so that a
change in the machine's background load during the run spreads over all rows alike
instead of landing on one.
"""

from __future__ import annotations

import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import loadgen, probes, wire
from .machine import cpu_ns, default_cpus, describe, load_average, rss_kib, rss_mb
from .settings import BenchSettings
from .systems import HUB_CONFIGS, OPTIONAL_SYSTEMS, SYSTEMS, Server, System, make_call, start_server

__all__ = ["Log", "run", "select_systems"]

Log = Callable[[str], None]
PROBE_HUB = "hub:full"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def select_systems(keys: tuple[str, ...]) -> list[System]:
    if not keys:
        return list(SYSTEMS)
    known = {s.key: s for s in (*SYSTEMS, *OPTIONAL_SYSTEMS)}
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise ValueError(f"unknown system {unknown[0]!r}; expected one of {', '.join(known)}")
    return [known[k] for k in keys]


def _validate(call: wire.HttpCall | wire.GrpcCall) -> wire.HttpCall | wire.GrpcCall:
    if isinstance(call, wire.HttpCall):
        return wire.validate_http(call)
    return wire.validate_grpc(call)


def _drive(
    call: wire.HttpCall | wire.GrpcCall, callers: int, duration_s: float, cpus: tuple[int, ...] | None
) -> loadgen.LoadResult:
    if isinstance(call, wire.HttpCall):
        return loadgen.run_wrk(call, callers, duration_s, cpus)
    return loadgen.run_h2load(call, callers, duration_s, cpus)


def _run_dict(result: loadgen.LoadResult, run: int, cpu_used_ns: int) -> dict[str, Any]:
    return {
        "run": run,
        "calls_per_s": round(result.calls_per_s, 1),
        "cpu_us_per_call": round(cpu_used_ns / 1000 / result.ok, 1) if result.ok else None,
        "p50_us": result.p50_us,
        "p99_us": result.p99_us,
        "ok": result.ok,
        "errors": result.errors,
        "duration_s": round(result.duration_s, 3),
    }


def _measure_rows(
    systems: list[System],
    servers: dict[str, Server],
    token: str,
    settings: BenchSettings,
    load_cpus: tuple[int, ...] | None,
    log: Log,
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    calls: dict[str, wire.HttpCall | wire.GrpcCall] = {}
    for system in systems:
        calls[system.key] = _validate(make_call(system, servers[system.server], token))
        log(f"validated {system.key}: answers are the echo")
    if settings.warmup_s > 0:
        for system in systems:
            _drive(calls[system.key], max(settings.concurrency), settings.warmup_s, load_cpus)
        log(f"warmed up every row ({settings.warmup_s:g} s each)")
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        s.key: {str(c): [] for c in settings.concurrency} for s in systems
    }
    for r in range(settings.runs):
        for system in systems:
            for callers in settings.concurrency:
                pid = servers[system.server].pid
                before = cpu_ns(pid)
                result = _drive(calls[system.key], callers, settings.duration_s, load_cpus)
                used = cpu_ns(pid) - before
                runs[system.key][str(callers)].append(_run_dict(result, r, used))
                log(
                    f"run {r + 1}/{settings.runs} {system.key:<16} {callers:>3} callers: "
                    f"{result.calls_per_s:9.1f} calls/s  p50 {result.p50_us:8.0f} us  "
                    f"p99 {result.p99_us:8.0f} us  cpu/call {used / 1000 / max(1, result.ok):6.0f} us  "
                    f"errors {result.errors}"
                )
    return runs


def run(settings: BenchSettings, log: Log = _stderr) -> dict[str, Any]:
    """Everything the report needs, as plain data (see report.py for what each figure means)."""
    loadgen.require_tools()
    systems = select_systems(settings.systems)
    placement = default_cpus() if settings.pin else None
    server_cpus, load_cpus = placement if placement else (None, None)
    token = secrets.token_urlsafe(24)
    out: dict[str, Any] = {
        "schema": 1,
        "mode": settings.mode,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {
            "runs": settings.runs,
            "duration_s": settings.duration_s,
            "warmup_s": settings.warmup_s,
            "concurrency": list(settings.concurrency),
            "inflight_calls": settings.inflight_calls,
            "inflight_sleep_s": settings.inflight_sleep_s,
            "startup_runs": settings.startup_runs,
            "pipeline_calls": settings.pipeline_calls,
        },
        "machine": {
            **describe(),
            **loadgen.tool_versions(),
            "load_before": load_average(),
            "server_cpus": list(server_cpus or ()),
            "load_cpus": list(load_cpus or ()),
        },
        "systems": [{"key": s.key, "title": s.title, "server": s.server, "kind": s.kind} for s in systems],
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mcphub-bench-") as tmp:
        workdir = Path(tmp)
        servers: dict[str, Server] = {}
        try:
            for key in dict.fromkeys([*(s.server for s in systems), PROBE_HUB]):
                servers[key] = start_server(key, workdir, token, server_cpus)
            log(f"started {', '.join(servers)} (servers on CPUs {server_cpus}, load on {load_cpus})")
            out["runs"] = _measure_rows(systems, servers, token, settings, load_cpus, log)
            hub = servers[PROBE_HUB]
            out["inflight"] = []
            if settings.inflight_calls > 0:
                for method in ("call", "stream"):
                    result = probes.inflight(
                        hub.ready["grpc"],
                        token,
                        settings.inflight_calls,
                        settings.inflight_sleep_s,
                        method,
                        load_cpus,
                    )
                    out["inflight"].append(result)
                    log(f"in-flight {method}: {result}")
            out["hub_rss_after_load_mb"] = rss_mb(rss_kib(hub.pid))
            out["sidecar"] = probes.sidecar_rss(settings.idle_s, workdir / "sidecar")
            log(f"sidecar: {out['sidecar']}")
        finally:
            for server in servers.values():
                server.stop()
        if settings.pipeline_calls > 0:
            out["pipeline"] = probes.pipeline_cost(
                HUB_CONFIGS["full"](token), token, settings.pipeline_calls, workdir / "pipeline", server_cpus
            )
            log(f"pipeline stages: {out['pipeline']}")
        if settings.startup_runs > 0:
            out["startup"] = probes.startup(settings.startup_runs, settings.idle_s, workdir / "startup")
            log(f"start-up: {out['startup']}")
    out["machine"]["load_after"] = load_average()
    out["elapsed_s"] = round(time.monotonic() - started, 1)
    return out

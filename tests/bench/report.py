"""From raw runs to the figures quoted: medians, ratios to the SDK, goal checks, JSON and Markdown.

Every throughput and latency figure is the median over the measured runs. A row with
any failed or wrong call in any run quotes no figure (only its error count): numbers
for calls that failed would flatter it.
"""

from __future__ import annotations

import json
import statistics
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["REFERENCE", "goals", "markdown", "rows", "summarize", "write"]

REFERENCE = "sdk-fastest"
"""Every ratio is taken against the SDK's fastest mode at the same number of callers."""


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return round(value / reference, 3)


def rows(out: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per system and number of callers, medians over runs, ratios to the SDK's fastest mode."""
    titles = {s["key"]: s["title"] for s in out["systems"]}
    found: list[dict[str, Any]] = []
    for key, by_callers in out["runs"].items():
        for callers, runs in by_callers.items():
            errors = sum(r["errors"] for r in runs)
            clean = errors == 0 and bool(runs)
            found.append(
                {
                    "system": key,
                    "title": titles.get(key, key),
                    "callers": int(callers),
                    "runs": len(runs),
                    "errors": errors,
                    "calls_per_s": round(_median([r["calls_per_s"] for r in runs]), 1) if clean else None,
                    "p50_us": round(_median([r["p50_us"] for r in runs]), 1) if clean else None,
                    "p99_us": round(_median([r["p99_us"] for r in runs]), 1) if clean else None,
                    "cpu_us_per_call": round(_median([r["cpu_us_per_call"] for r in runs]), 1)
                    if clean
                    else None,
                }
            )
    reference = {r["callers"]: r for r in found if r["system"] == REFERENCE}
    for row in found:
        ref = reference.get(row["callers"], {})
        row["calls_vs_sdk"] = _ratio(row["calls_per_s"], ref.get("calls_per_s"))
        row["p50_vs_sdk"] = _ratio(row["p50_us"], ref.get("p50_us"))
        row["cpu_vs_sdk"] = _ratio(row["cpu_us_per_call"], ref.get("cpu_us_per_call"))
    return found


def _find(table: list[dict[str, Any]], system: str, callers: int) -> dict[str, Any] | None:
    return next((r for r in table if r["system"] == system and r["callers"] == callers), None)


def _floor(sidecar: dict[str, Any]) -> str:
    """The bare grpc.aio floor next to a sidecar figure, when the run measured it."""
    floor = sidecar.get("floor_rss_mb")
    return "" if floor is None else f"; bare grpc.aio serving the same services: {floor:.1f} MB"


def _goal(goal: str, figure: str, target: str, met: bool | None) -> dict[str, Any]:
    return {"goal": goal, "figure": figure, "target": target, "met": met}


def _fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _callers(n: int) -> str:
    return f"{n} caller" if n == 1 else f"{n} callers"


def _per_cpu(row: dict[str, Any], reference: dict[str, Any] | None) -> str:
    """How many calls `row` serves per CPU-second relative to `reference` (less noisy than calls/s)."""
    if reference is None:
        return ""
    ratio = _ratio(reference["cpu_us_per_call"], row["cpu_us_per_call"])
    return "" if ratio is None else f"; per CPU-second {_fmt_ratio(ratio)}"


def goals(out: dict[str, Any], table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's goals. Throughput goals are judged on calls/s, as the issue states them;
    the calls per CPU-second ratio beside each is what a busy machine disturbs least."""
    checks: list[dict[str, Any]] = []
    for callers in sorted({r["callers"] for r in table}):
        sdk = _find(table, REFERENCE, callers)
        call = _find(table, "grpc-call", callers)
        bare = _find(table, "grpc-bare", callers)
        bridge = _find(table, "bridge", callers)
        if call is not None:
            ratio = call["calls_vs_sdk"]
            checks.append(
                _goal(
                    f"gRPC CallTool, full pipeline, {_callers(callers)}: calls/s vs SDK fastest",
                    _fmt_ratio(ratio) + _per_cpu(call, sdk),
                    ">= 5x",
                    None if ratio is None else ratio >= 5,
                )
            )
        if call is not None and bare is not None:
            ratio = _ratio(call["calls_per_s"], bare["calls_per_s"])
            per_cpu = _ratio(bare["cpu_us_per_call"], call["cpu_us_per_call"])
            checks.append(
                _goal(
                    f"gRPC CallTool, full pipeline, {_callers(callers)}: calls/s vs bare grpc.aio",
                    ("n/a" if ratio is None else f"{100 * ratio:.0f}%")
                    + ("" if per_cpu is None else f"; per CPU-second {100 * per_cpu:.0f}%"),
                    ">= 70%",
                    None if ratio is None else ratio >= 0.7,
                )
            )
        if bridge is not None:
            ratio = bridge["calls_vs_sdk"]
            checks.append(
                _goal(
                    f"bridge, {_callers(callers)}: calls/s vs SDK fastest",
                    _fmt_ratio(ratio) + _per_cpu(bridge, sdk),
                    ">= 1x",
                    None if ratio is None else ratio >= 1,
                )
            )
    for callers in sorted({r["callers"] for r in table}):
        call = _find(table, "grpc-call", callers)
        ungated = _find(table, "grpc-call-ungated", callers)
        if call is None or ungated is None or call["p50_us"] is None or ungated["p50_us"] is None:
            continue
        if callers == 1:
            added = call["p50_us"] - ungated["p50_us"]
            checks.append(
                _goal(
                    "gate + audit added per allowed call, end to end, 1 caller: median latency "
                    "(CallTool minus the bench-only build without them)",
                    f"{added:.0f} us ({ungated['p50_us']:.0f} -> {call['p50_us']:.0f} us)",
                    "<= 100 us",
                    added <= 100,
                )
            )
        cpu = call["cpu_us_per_call"] - ungated["cpu_us_per_call"]
        checks.append(
            _goal(
                f"gate + audit added per allowed call, end to end, {_callers(callers)}: CPU per call",
                f"{cpu:.0f} us ({ungated['cpu_us_per_call']:.0f} -> {call['cpu_us_per_call']:.0f} us)",
                "<= 100 us",
                cpu <= 100,
            )
        )
    pipeline = out.get("pipeline") or {}
    if "gate_audit_p50_us" in pipeline:
        cost = pipeline["gate_audit_p50_us"]
        checks.append(
            _goal(
                "gate + audit added per allowed call (median, in-process, records durable)",
                f"{cost:.1f} us",
                "<= 100 us",
                cost <= 100,
            )
        )
    for probe in out.get("inflight", []):
        method = "CallTool" if probe["method"] == "call" else "StreamCallTool"
        checks.append(
            _goal(
                f"{probe['calls']} in-flight sleep calls ({method})",
                f"{probe['errors']} errors, {probe['wall_s']:.2f} s",
                "0 errors (1,000 calls)",
                probe["errors"] == 0,
            )
        )
    startup = out.get("startup") or {}
    if "idle_rss_mb_median" in startup:
        rss = startup["idle_rss_mb_median"]
        checks.append(_goal("idle hub RSS (embedded defaults)", f"{rss:.1f} MB", "<= 80 MB", rss <= 80))
    sidecar = out.get("sidecar") or {}
    if sidecar.get("available") and sidecar.get("registered"):
        rss = sidecar["idle_rss_mb"]
        checks.append(
            _goal(
                "idle sidecar RSS (sandbox-image packs, registered with a hub; issue 6/7)",
                f"{rss:.1f} MB (PSS {sidecar['idle_pss_mb']:.1f} MB){_floor(sidecar)}",
                "< 40 MB",
                rss < 40,
            )
        )
    return checks


def summarize(out: dict[str, Any]) -> dict[str, Any]:
    """Add the quoted figures (`rows`, `goals`, `errors`) to a runner result."""
    table = rows(out)
    out["rows"] = table
    out["goals"] = goals(out, table)
    out["errors"] = sum(r["errors"] for r in table) + sum(p["errors"] for p in out.get("inflight", []))
    return out


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def markdown(out: dict[str, Any]) -> str:
    m = out["machine"]
    s = out["settings"]
    lines = [
        f"# mcphub benchmark, {out['started_at']} ({out['mode']})",
        "",
        f"Machine: {m['cores']} cores ({m['cpu_model']}), Linux {m['kernel']}, Python {m['python']}; "
        f"load average {m['load_before']} before, {m.get('load_after', '?')} after. "
        f"Servers on CPUs {m['server_cpus'] or 'any'}, load generators on {m['load_cpus'] or 'any'}. "
        f"{m['wrk']}; {m['h2load']}.",
        "",
        "Packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()) + ".",
        "",
        f"Each figure is the median of {s['runs']} runs of {s['duration_s']:g} s "
        f"(after {s['warmup_s']:g} s of warm-up per row); x SDK is the ratio to the SDK's fastest mode "
        "at the same number of callers. A row with errors quotes no figure.",
        "",
        "## Calls",
        "",
        "| system | callers | calls/s | x SDK | p50 us | x SDK | p99 us | CPU us/call | x SDK | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in out["rows"]:
        lines.append(
            f"| {r['title']} | {r['callers']} | {_num(r['calls_per_s'])} | {_fmt_ratio(r['calls_vs_sdk'])} "
            f"| {_num(r['p50_us'])} | {_fmt_ratio(r['p50_vs_sdk'])} | {_num(r['p99_us'])} "
            f"| {_num(r['cpu_us_per_call'])} | {_fmt_ratio(r['cpu_vs_sdk'])} | {r['errors']} |"
        )
    lines += ["", "## Other figures", "", "| figure | value |", "| --- | --- |"]
    for probe in out.get("inflight", []):
        method = "CallTool" if probe["method"] == "call" else "StreamCallTool"
        lines.append(
            f"| {probe['calls']} in-flight `sleep {probe['sleep_s']:g}s` calls, gRPC {method} "
            f"| {probe['errors']} errors, all done in {probe['wall_s']:.2f} s |"
        )
    pipeline = out.get("pipeline") or {}
    if pipeline:
        lines.append(
            f"| dispatch stages per allowed call, in-process ({' -> '.join(pipeline['stages'])}) "
            f"| {pipeline['overhead_p50_us']:.1f} us median added, of which gate + audit "
            f"{pipeline['gate_audit_p50_us']:.1f} us (pipeline {pipeline['pipeline_p50_us']:.1f} us, "
            f"without gate and audit {pipeline['ungated_p50_us']:.1f} us, "
            f"execute alone {pipeline['execute_p50_us']:.1f} us) |"
        )
    if "gate_audit_cpu_us" in pipeline:
        lines.append(
            "| gate + audit per allowed call, in-process, mean CPU with the audit writer's folds "
            f"| {pipeline['gate_audit_cpu_us']:.1f} us (pipeline {pipeline['pipeline_cpu_us']:.1f} us, "
            f"without gate and audit {pipeline['ungated_cpu_us']:.1f} us) |"
        )
    startup = out.get("startup") or {}
    if startup:
        lines.append(
            f"| `mcphub serve` start-up to ready line (median of {startup['runs']}) "
            f"| {startup['ready_s_median']:.2f} s |"
        )
        lines.append(
            f"| hub idle RSS, embedded defaults, {startup['idle_s']:g} s after ready (median) "
            f"| {startup['idle_rss_mb_median']:.1f} MB ({startup['idle_rss_anon_mb_median']:.1f} MB of it "
            "private, the rest mapped files such as shared libraries) |"
        )
        if "first_mcp_request_s_median" in startup:
            lines.append(
                "| the first MCP request to those hubs, answered (it loads the MCP SDK; median) "
                f"| {startup['first_mcp_request_s_median']:.2f} s |"
            )
        if "after_first_mcp_rss_mb_median" in startup:
            lines.append(
                f"| the same hubs {startup['idle_s']:g} s after a first MCP request "
                f"| {startup['after_first_mcp_rss_mb_median']:.1f} MB |"
            )
    if "hub_rss_after_load_mb" in out:
        lines.append(
            f"| hub RSS after all the load above (benchmark config) | {out['hub_rss_after_load_mb']:.1f} MB |"
        )
    sidecar = out.get("sidecar") or {}
    if sidecar:
        if not sidecar.get("available"):
            value = f"not available ({sidecar['reason']})"
        else:
            value = f"{sidecar['idle_rss_mb']:.1f} MB (PSS {sidecar['idle_pss_mb']:.1f} MB){_floor(sidecar)}"
            if not sidecar.get("registered"):
                value += ", but it did not register with the hub"
        lines.append(
            "| sidecar (`mcphub local serve`, sandbox-image packs, registered with a hub) idle RSS "
            f"| {value} |"
        )
    lines += ["", "## Goals", "", "| goal | figure | target | status |", "| --- | --- | --- | --- |"]
    for g in out["goals"]:
        status = "n/a" if g["met"] is None else ("met" if g["met"] else "**missed**")
        lines.append(f"| {g['goal']} | {g['figure']} | {g['target']} | {status} |")
    lines += ["", f"Errors in total: {out['errors']}. Run took {out.get('elapsed_s', '?')} s.", ""]
    return "\n".join(lines)


def write(out: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.fromisoformat(out["started_at"]).strftime("%Y%m%dT%H%M%SZ")
    suffix = "-smoke" if out["mode"] == "smoke" else ""
    json_path = out_dir / f"{stamp}{suffix}.json"
    md_path = out_dir / f"{stamp}{suffix}.md"
    json_path.write_text(json.dumps(out, indent=2) + "\n")
    md_path.write_text(markdown(out))
    return json_path, md_path

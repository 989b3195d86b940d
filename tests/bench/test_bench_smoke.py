"""The benchmark in smoke mode, end to end, so it never rots. Nothing here asserts a timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench.settings import SMOKE
from tests.bench.systems import SYSTEMS, full_pipeline_config
from tests.support.hub import REPO

pytestmark = pytest.mark.slow


def _smoke(out_dir: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tests.bench", "--smoke", "--out-dir", str(out_dir), *args]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done


@pytest.mark.timeout(300)
def test_smoke_run_reports_every_row_with_numbers_and_no_errors(tmp_path: Path) -> None:
    done = _smoke(tmp_path, timeout=280)
    [json_path] = tmp_path.glob("*-smoke.json")
    [md_path] = tmp_path.glob("*-smoke.md")
    out = json.loads(json_path.read_text())

    assert out["mode"] == "smoke"
    assert out["errors"] == 0
    expected = {(s.key, c) for s in SYSTEMS for c in SMOKE.concurrency}
    assert {(r["system"], r["callers"]) for r in out["rows"]} == expected
    for row in out["rows"]:
        assert row["errors"] == 0, row
        assert row["calls_per_s"] > 0 and row["p50_us"] > 0 and row["p99_us"] >= row["p50_us"], row
        assert row["calls_vs_sdk"] > 0, row
    reference = [r for r in out["rows"] if r["system"] == "sdk-fastest"]
    assert all(r["calls_vs_sdk"] == 1.0 for r in reference)

    assert [p["method"] for p in out["inflight"]] == ["call", "stream"]
    for probe in out["inflight"]:
        assert probe["errors"] == 0 and probe["calls"] == SMOKE.inflight_calls, probe
    assert out["pipeline"]["overhead_p50_us"] > 0
    assert out["pipeline"]["stages"][-1] == "execute"
    assert out["pipeline"]["pipeline_cpu_us"] > 0 and out["pipeline"]["ungated_cpu_us"] > 0
    assert out["pipeline"]["sweep_kb"] == 0
    assert out["startup"]["ready_s_median"] > 0
    assert out["startup"]["idle_rss_mb_median"] > out["startup"]["idle_rss_anon_mb_median"] > 0
    assert out["startup"]["packs"] == ["diagnostics", "shell", "browser"]
    assert out["startup"]["after_first_mcp_rss_mb_median"] > 0
    assert out["startup"]["first_mcp_request_s_median"] > 0
    assert out["hub_rss_after_load_mb"] > 0
    assert out["sidecar"]["available"] and out["sidecar"]["registered"], out["sidecar"]
    assert out["sidecar"]["idle_rss_mb"] > out["sidecar"]["idle_pss_mb"] > 0
    assert out["sidecar"]["idle_rss_mb"] > out["sidecar"]["floor_rss_mb"] > 0
    assert out["machine"]["cores"] >= 1 and len(out["machine"]["load_before"]) == 3
    assert {g["met"] for g in out["goals"]} <= {True, False}

    text = md_path.read_text()
    assert text.strip() in done.stdout  # the table printed is the table written
    for system in SYSTEMS:
        assert system.title in text
    assert "## Goals" in text
    assert "mean CPU with the audit writer's folds" in text


@pytest.mark.timeout(120)
def test_the_in_process_probe_can_start_each_call_with_cold_caches(tmp_path: Path) -> None:
    config = tmp_path / "hub.yaml"
    config.write_text(json.dumps(full_pipeline_config("bench-token-0123456789abcdef")))  # JSON is YAML
    command = [sys.executable, "-m", "tests.bench.pipeline_cost", "--config", str(config)]
    command += ["--state-dir", str(tmp_path / "state"), "--token=bench-token-0123456789abcdef"]
    run = {"cwd": REPO, "capture_output": True, "text": True, "timeout": 100}
    done = subprocess.run([*command, "--calls", "50", "--sweep-kb", "256"], **run)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["calls"] == 50 and out["sweep_kb"] == 256
    assert out["pipeline_cpu_us"] > 0 and out["ungated_cpu_us"] > 0 and out["pipeline_p50_us"] > 0

    refused = subprocess.run([*command, "--sweep-kb", "-1"], **run)
    assert refused.returncode == 2 and "--sweep-kb at least 0" in refused.stderr


@pytest.mark.timeout(200)
def test_the_optional_rows_run(tmp_path: Path) -> None:
    """The handshake-era rows (a 2025-11-25 session, what today's clients speak) and the grpclib
    echo are not in the default run; they must still open their sessions and answer correctly."""
    _smoke(
        tmp_path,
        *("--systems", "sdk-default-session,bridge-session,grpclib-bare", "--inflight", "0"),
        *("--startup-runs", "0", "--pipeline-calls", "0"),
        timeout=180,
    )
    [json_path] = tmp_path.glob("*-smoke.json")
    rows = json.loads(json_path.read_text())["rows"]
    assert {r["system"] for r in rows} == {"sdk-default-session", "bridge-session", "grpclib-bare"}
    assert all(r["errors"] == 0 and r["calls_per_s"] > 0 for r in rows), rows

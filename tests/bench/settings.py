"""How much the benchmark measures: the full run the README quotes, and the smoke run the tests use."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

__all__ = ["FULL", "RESULTS_DIR", "SMOKE", "BenchSettings"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True, slots=True)
class BenchSettings:
    mode: str = "full"
    runs: int = 3
    """Measured runs per row and caller count; the report quotes their median."""
    duration_s: float = 10.0
    warmup_s: float = 3.0
    """One unrecorded run per row before the measured ones (0: none)."""
    concurrency: tuple[int, ...] = (1, 16, 64)
    systems: tuple[str, ...] = ()
    """Row keys to run; empty means every default row."""
    inflight_calls: int = 1000
    inflight_sleep_s: float = 1.0
    startup_runs: int = 5
    idle_s: float = 3.0
    pipeline_calls: int = 20000
    pin: bool = True
    out_dir: Path = RESULTS_DIR

    def with_(self, **changes: object) -> BenchSettings:
        return replace(self, **changes)  # type: ignore[arg-type]


FULL = BenchSettings()

SMOKE = BenchSettings(
    mode="smoke",
    runs=1,
    duration_s=1.0,
    warmup_s=0.0,
    concurrency=(1, 4),
    inflight_calls=20,
    inflight_sleep_s=0.2,
    startup_runs=1,
    idle_s=0.5,
    pipeline_calls=300,
)
"""Every row and probe with tiny counts: proves the harness still works, measures nothing."""

"""`python -m tests.bench` (or `./dev bench`): run the benchmark, write JSON and Markdown, print the table.

Exit codes: 0 every call answered correctly; 1 some call failed or was answered wrongly
(its figures are left out of the report); 2 bad usage or a missing load generator.
Goals that are missed are reported, not turned into a failing exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import report
from .loadgen import MissingTool
from .runner import run, select_systems
from .settings import FULL, SMOKE, BenchSettings
from .wire import WrongAnswer

__all__ = ["main", "parse_settings"]


def _ints(value: str) -> tuple[int, ...]:
    try:
        found = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {value!r}") from None
    if not found or min(found) < 1:
        raise argparse.ArgumentTypeError(f"expected numbers of callers of at least 1, got {value!r}")
    return found


def _names(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Benchmark mcphub against the official MCP SDK serving the same echo tool on this machine.\n"
            "Each system runs in its own process on 127.0.0.1, driven by wrk (HTTP/1.1) or h2load\n"
            "(gRPC) from another process. See docs/benchmark.md."
        ),
    )
    parser.add_argument("--smoke", action="store_true", help="tiny counts: check the harness works (~40 s)")
    parser.add_argument("--runs", type=int, help=f"measured runs per row (default {FULL.runs})")
    parser.add_argument("--duration", type=float, help=f"seconds per run (default {FULL.duration_s:g})")
    parser.add_argument("--warmup", type=float, help=f"warm-up seconds per row (default {FULL.warmup_s:g})")
    parser.add_argument(
        "--concurrency", type=_ints, metavar="N,N,...", help="numbers of concurrent callers (default 1,16,64)"
    )
    parser.add_argument(
        "--systems",
        type=_names,
        metavar="KEY,...",
        help="only these rows (sdk-fastest, bridge, grpc-call, ...)",
    )
    parser.add_argument(
        "--inflight", type=int, metavar="N", help="concurrent sleep calls (default 1000; 0 skips)"
    )
    parser.add_argument(
        "--startup-runs", type=int, metavar="N", help="fresh hubs timed to ready (default 5; 0 skips)"
    )
    parser.add_argument(
        "--pipeline-calls", type=int, metavar="N", help="in-process calls timed (default 20000; 0 skips)"
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin servers and load generators to CPUs"
    )
    parser.add_argument(
        "--out-dir", type=Path, help="where to write the JSON and Markdown (tests/bench/results)"
    )
    return parser


def parse_settings(argv: Sequence[str] | None = None) -> BenchSettings:
    args = build_parser().parse_args(argv)
    settings = SMOKE if args.smoke else FULL
    changes = {
        "runs": args.runs,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "concurrency": args.concurrency,
        "systems": args.systems,
        "inflight_calls": args.inflight,
        "startup_runs": args.startup_runs,
        "pipeline_calls": args.pipeline_calls,
        "out_dir": args.out_dir,
    }
    settings = settings.with_(**{k: v for k, v in changes.items() if v is not None})
    if args.no_pin:
        settings = settings.with_(pin=False)
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)
    try:
        select_systems(settings.systems)
        out = run(settings)
    except (MissingTool, ValueError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except WrongAnswer as exc:
        print(f"bench: a system answered the validation call wrongly: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # a server or load generator that failed to start or run
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    report.summarize(out)
    json_path, md_path = report.write(out, settings.out_dir)
    print(report.markdown(out))
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 1 if out["errors"] else 0

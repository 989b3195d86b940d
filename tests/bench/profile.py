"""Where one row's server spends its time: py-spy samples it while the load generator drives it.

    python -m tests.bench.profile bridge --callers 16 --seconds 10 [--native]

Starts the row's server pinned like the benchmark does, drives it with the same load
generator and call, records it with py-spy (every thread, sampled from outside, so the
server runs unmodified), writes the collapsed stacks to tests/bench/results/ (open them
in speedscope or flamegraph.pl) and prints the functions with the most samples, on
their own ("self") and with what they call ("inclusive").
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path

from .loadgen import LoadResult
from .machine import cpu_ns, default_cpus
from .runner import _drive, _validate, select_systems
from .settings import RESULTS_DIR
from .systems import make_call, start_server

__all__ = ["main", "summarize_stacks"]


def summarize_stacks(raw: str, top: int = 25) -> str:
    """The top functions of a py-spy `raw` (collapsed stacks) profile, self and inclusive."""
    self_samples: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        self_samples[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return "no samples"
    out = [f"{total} samples", "", "self:"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in self_samples.most_common(top)]
    out += ["", "inclusive:"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top * 2)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.profile")
    parser.add_argument("system", help="a row key: bridge, grpc-call, grpc-stream, sdk-fastest, ...")
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--native", action="store_true", help="include C frames (slower sampling)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        print("profile: py-spy is not installed (pip install -e '.[dev]')", file=sys.stderr)
        return 2
    [system] = select_systems((args.system,))
    placement = default_cpus()
    server_cpus, load_cpus = placement if placement else (None, None)
    token = "bench-profile-token-0123456789"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    base = args.out_dir / f"profile-{system.key}-{args.callers}-{stamp}"
    with tempfile.TemporaryDirectory(prefix="mcphub-bench-profile-") as tmp:
        server = start_server(system.server, Path(tmp), token, server_cpus)
        try:
            call = _validate(make_call(system, server, token))
            _drive(call, args.callers, 2, load_cpus)  # warm up
            results: list[LoadResult] = []
            load = threading.Thread(
                target=lambda: results.append(_drive(call, args.callers, args.seconds + 2, load_cpus))
            )
            before = cpu_ns(server.pid)
            load.start()
            command = [py_spy, "record", "-p", str(server.pid), "-d", str(args.seconds), "-r", "200"]
            # py-spy unwinds C frames only with the process paused: --native drops --nonblocking.
            command += ["--native"] if args.native else ["--nonblocking"]
            command += ["-f", "raw", "-o", f"{base}.txt"]
            recorded = subprocess.run(command, capture_output=True, text=True)
            if recorded.returncode != 0:
                raise SystemExit(f"profile: py-spy failed: {recorded.stderr.strip()[-500:]}")
            load.join()
            used = cpu_ns(server.pid) - before
        finally:
            server.stop()
    result = results[0]
    print(
        f"{system.key}, {args.callers} callers: {result.calls_per_s:.0f} calls/s, "
        f"p50 {result.p50_us:.0f} us, {used / 1000 / max(1, result.ok):.0f} us CPU per call, "
        f"{result.errors} errors"
    )
    print(summarize_stacks(Path(f"{base}.txt").read_text()))
    print(f"\ncollapsed stacks (speedscope, flamegraph.pl): {base}.txt", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Regenerate the checked-in Python code for proto/ (the one way it is made).

    python scripts/gen_proto.py          # rewrite mcphub_proto/v1/*_pb2*.py[i]
    python scripts/gen_proto.py --check  # exit 1 if the checked-in code is stale

protoc emits absolute imports (`from mcphub.v1 import x_pb2`); the files live in
the `mcphub_proto.v1` package, so those lines are rewritten to relative imports.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
SOURCES_DIR = PROTO_ROOT / "mcphub" / "v1"
PACKAGE_DIR = ROOT / "mcphub_proto" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
_ABSOLUTE_IMPORT = re.compile(r"^from mcphub\.v1 import (\w+)", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc  # dev dependency, pinned in pyproject.toml

    sources = sorted(SOURCES_DIR.glob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{Path(protoc.__file__).parent / '_proto'}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(s) for s in sources),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    produced = sorted(p for p in (out_dir / "mcphub" / "v1").iterdir() if p.name.endswith(GENERATED_SUFFIXES))
    for path in produced:
        text = _ABSOLUTE_IMPORT.sub(r"from . import \1", path.read_text())
        path.write_text(text)
    return produced


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when stale")
    opts = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        produced = generate(Path(tmp))
        names = {p.name for p in produced}
        existing = {p.name for p in PACKAGE_DIR.iterdir() if p.name.endswith(GENERATED_SUFFIXES)}
        if opts.check:
            stale = sorted(
                n
                for n in names | existing
                if n not in names
                or n not in existing
                or not filecmp.cmp(Path(tmp) / "mcphub" / "v1" / n, PACKAGE_DIR / n, shallow=False)
            )
            if stale:
                print("stale generated code: " + ", ".join(stale), file=sys.stderr)
                print("run: python scripts/gen_proto.py", file=sys.stderr)
                return 1
            return 0
        for name in existing - names:
            (PACKAGE_DIR / name).unlink()
        for path in produced:
            shutil.copyfile(path, PACKAGE_DIR / path.name)
            print(f"wrote {(PACKAGE_DIR / path.name).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How a command says it failed: one line on stderr (`mcphub: ...`) and, for a command run with
`--json`, one JSON document on stdout with the same words, so that a script reading stdout reads
JSON whatever happened: `{"error": {"code": ..., "message": ...}}` (`code` the gRPC code of a
hub's refusal, else one for the exit status), or `{"ok": false, "error": ...}` for the commands
whose success is `{"ok": true, ...}` (`audit verify --json`).

`main` says which shape the command prints (`expect_json`); each failure goes through `fail`.
A command that prints its own JSON failure marks it printed (`json_printed`), once."""

from __future__ import annotations

import contextlib
import json
import sys

__all__ = ["expect_json", "fail", "json_printed"]

_CODES = {1: "failed", 2: "invalid_argument", 3: "unavailable"}
"""The code of a failure that is no refusal of the hub's, by exit status (1 a check failed,
2 bad usage or configuration, 3 the hub, its state directory or its store cannot be used)."""

_shape: str | None = None
"""None (text only), "error" or "ok"."""
_printed = False


def expect_json(shape: str | None) -> None:
    """Print the failures from now on as JSON of this shape ("error", "ok"), or not (None)."""
    global _shape, _printed
    _shape, _printed = shape, False


def json_printed() -> None:
    """The command printed its JSON failure itself: `fail` prints none."""
    global _printed
    _printed = True


def fail(message: str, exit_code: int, code: str | None = None) -> int:
    """`message` on stderr, and on stdout as JSON when the command was run with `--json`."""
    if _shape is not None and not _printed:
        json_printed()
        if _shape == "ok":
            document: dict[str, object] = {"ok": False, "error": message}
        else:
            document = {"error": {"code": code or _CODES.get(exit_code, "unknown"), "message": message}}
        with contextlib.suppress(OSError):  # as stderr's below: the exit status still tells
            print(json.dumps(document, indent=2), flush=True)
    with contextlib.suppress(OSError):  # a stderr that cannot be written: the exit code still tells
        print(f"mcphub: {message}", file=sys.stderr)
    return exit_code

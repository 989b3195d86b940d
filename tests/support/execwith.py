"""A command started with a lowered limit, an ignored signal or a closed descriptor.

Not with subprocess's `preexec_fn`: that forks the test process as it is, and a test process
that has used gRPC has its poller thread; gRPC's fork handler restarts it in the child, where
the descriptors subprocess closes before exec include its epoll set, so the child printed
"Epoll1Poller ... encountered epoll_wait error: Bad file descriptor" into the output under
test (seen on a loaded machine). Here a fresh interpreter sets things up and execs the command.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

__all__ = ["exec_with"]

_TRAMPOLINE = """
import json, os, resource, signal, sys
setup = json.loads(sys.argv[1])
for name, value in setup["limits"].items():
    resource.setrlimit(getattr(resource, name), (value, value))
for name in setup["ignore"]:
    signal.signal(getattr(signal, name), signal.SIG_IGN)
for fd in setup["close"]:
    os.close(fd)
os.execv(sys.argv[2], sys.argv[2:])
"""


def exec_with(
    command: Sequence[str],
    *,
    limits: dict[str, int] | None = None,
    ignore: Sequence[str] = (),
    close: Sequence[int] = (),
) -> list[str]:
    """`command` (its first word a path) run with `limits` (RLIMIT_* name -> soft and hard value),
    the signals named in `ignore` ignored (kept across exec) and the descriptors `close` closed."""
    setup = {"limits": limits or {}, "ignore": list(ignore), "close": list(close)}
    return [sys.executable, "-c", _TRAMPOLINE, json.dumps(setup), *command]

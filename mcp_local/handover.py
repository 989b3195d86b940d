"""How `mcphub local serve` becomes the process that serves (`mcp_local.serving`).

The command reads its arguments and the manifest (argparse, PyYAML, the schema's error
wording), and then replaces itself with a fresh interpreter that only serves:

    mcphub local serve ...   --exec, same PID-->   python -P -c <resume> mcphub local serve ...

The settings travel in an inherited memfd (never argv, the environment or a file: they hold
the hub token), together with the command's `sys.path`, so the new interpreter imports the
same code. The serving process never loads the parsers, which is about 1.5 MB less resident
memory for the sidecar's whole life. Its command line still ends with the original command,
so `ps` and `pgrep -f "mcphub local serve"` find it. Where the hand-over cannot be made
(no memfd, no `sys.executable`) the command serves in place, the same way.
"""

from __future__ import annotations

import io
import os
import pickle
import sys

from .settings import SidecarSettings

__all__ = ["exec_server"]

_RESUME = (
    "import pickle, sys; f = open({fd}, 'rb'); sys.path[:] = pickle.load(f); "
    "from mcp_local.serving import resume; raise SystemExit(resume(f))"
)


def exec_server(settings: SidecarSettings, *, ready_file: str | None, json_line: bool) -> None:
    """Become a fresh interpreter serving `settings`; returns only when that cannot be done."""
    if not sys.executable or not hasattr(os, "memfd_create"):
        return
    try:
        fd = os.memfd_create("mcphub-sidecar-settings", 0)
    except OSError:
        return
    try:
        with io.FileIO(fd, "wb", closefd=False) as out:
            pickle.dump(list(sys.path), out, protocol=pickle.HIGHEST_PROTOCOL)
            pickle.dump((settings, ready_file, json_line), out, protocol=pickle.HIGHEST_PROTOCOL)
        os.lseek(fd, 0, os.SEEK_SET)
        os.set_inheritable(fd, True)
        # The interpreter's own options (-X, -W, -O, -E, -s, -I ...), as multiprocessing passes them.
        import subprocess

        flags: list[str] = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
        sys.stdout.flush()
        sys.stderr.flush()
        # -P: nothing is imported from the current directory (the agent's workspace) before
        # the command's own sys.path is back.
        os.execv(sys.executable, [sys.executable, *flags, "-P", "-c", _RESUME.format(fd=fd), *sys.argv])  # noqa: S606 - argv, never a shell line
    except (OSError, pickle.PicklingError, TypeError, AttributeError):  # serve in place
        os.close(fd)

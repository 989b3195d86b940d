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
import re
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
            handed = (settings, ready_file, json_line, _process_name())
            pickle.dump(handed, out, protocol=pickle.HIGHEST_PROTOCOL)
        os.lseek(fd, 0, os.SEEK_SET)
        # Mode 0: the new interpreter reads it through the descriptor it inherits; nobody
        # (the agent's uid included, in the moment before that interpreter is non-dumpable)
        # can open it again through /proc/PID/fd.
        os.fchmod(fd, 0)
        os.set_inheritable(fd, True)
        flags = _interpreter_options()
        sys.stdout.flush()
        sys.stderr.flush()
        # -P: nothing is imported from the current directory (the agent's workspace) before
        # the command's own sys.path is back.
        os.execv(sys.executable, [sys.executable, *flags, "-P", "-c", _RESUME.format(fd=fd), *sys.argv])  # noqa: S606 - argv, never a shell line
    except (OSError, pickle.PicklingError, TypeError, AttributeError):  # serve in place
        os.close(fd)


def _interpreter_options() -> list[str]:
    """The options this interpreter was started with (`-u`, `-X ...`, `-W ...`, `-I` ...).

    Taken from `sys.orig_argv`: what comes between the interpreter and the script or `-m
    MODULE`, whose arguments are `sys.argv[1:]`. If the two do not line up (a program changed
    sys.argv), those that `sys.flags` records, as multiprocessing passes them on.
    """
    original, tail = sys.orig_argv, sys.argv[1:]
    if len(original) > len(tail) and original[len(original) - len(tail) :] == tail:
        head = original[1 : len(original) - len(tail)]  # options, then the script or -m MODULE
        if len(head) >= 2 and head[-2] == "-m":
            return head[:-2]
        if head and head[-1].startswith("-m"):  # -mMODULE
            return head[:-1]
        if len(head) >= 2 and re.fullmatch(r"-[bBdEiIOPqRsSuvx]+m", head[-2]):  # -um MODULE
            return [*head[:-2], head[-2][:-1]]
        if head and not head[-1].startswith("-"):  # a script: the console script `mcphub`
            return head[:-1]
    import subprocess

    return list(subprocess._args_from_interpreter_flags())  # type: ignore[attr-defined]


def _process_name() -> str | None:
    """What `ps -C`, `pgrep` and `killall` know this process by (`mcphub` for the console script)."""
    try:
        with open("/proc/self/comm") as comm:
            return comm.read().strip() or None
    except OSError:
        return None

"""Keep the sidecar's memory and environment from the agent that runs as the same user.

The sidecar holds the sandbox's hub token (in its environment, from `MCPHUB_TOKEN`, and in
memory); the agent runs as the same uid, and Linux lets a process read `/proc/PID/environ`,
`/proc/PID/mem` and the files behind `/proc/PID/fd/*` of every process of its uid, and ptrace
it. `prctl(PR_SET_DUMPABLE, 0)` takes that away: those files then belong to root, so only
root (or CAP_SYS_PTRACE) may read them; ptrace by the same uid is refused, and there is no
core dump. What stays readable by all: `/proc/PID/stat`, `status` and `cmdline` (the process
pack reads the owner from `status`, not from the directory's owner, for that reason).

The flag is reset by `execve`, so both processes of `mcphub local serve` set it first thing:
the command (before it reads anything) and the serving interpreter it execs (before it reads
the settings' memfd, which holds the token). Standard library only: ctypes and the libc the interpreter links.
"""

from __future__ import annotations

import ctypes

__all__ = ["make_undumpable"]

_PR_SET_DUMPABLE = 4


def make_undumpable() -> bool:
    """Mark this process non-dumpable; False where that cannot be done (no libc, not Linux)."""
    try:
        # The interpreter's own symbols include libc's (`ctypes.util.find_library` would run
        # ldconfig and import tempfile, random and subprocess for nothing).
        return bool(ctypes.CDLL(None).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False

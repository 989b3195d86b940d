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
import os
from collections.abc import Collection

__all__ = ["make_undumpable", "scrub_environment_block"]

_PR_SET_DUMPABLE = 4


def make_undumpable() -> bool:
    """Mark this process non-dumpable; False where that cannot be done (no libc, not Linux)."""
    try:
        # The interpreter's own symbols include libc's (`ctypes.util.find_library` would run
        # ldconfig and import tempfile, random and subprocess for nothing).
        return bool(ctypes.CDLL(None).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def scrub_environment_block(present: Collection[str]) -> int:
    """Overwrite, in the process's initial environment block, the value of every variable that is
    no longer in `present` (the environment as it is now); the number of values overwritten.

    `/proc/PID/environ` shows that block (the kernel keeps its bounds, `env_start`/`env_end`),
    not the C library's current environment: a variable taken out with `os.environ.pop` stays
    there for the process's lifetime. Non-dumpable, only root may read it, but a hub that runs as
    root is read by every root process (monitoring agents, `ps e`). Unset variables have no
    pointer left into the block, so their bytes are the process's to overwrite."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[47]), int(fields[48])  # fields 50 and 51 of proc(5)
    except (OSError, IndexError, ValueError):
        return 0
    if not 0 < start < end:
        return 0
    block = (ctypes.c_char * (end - start)).from_address(start)
    data = block.raw
    # Compared as bytes: a name that is not UTF-8 is in `os.environ` as surrogate escapes, and
    # taken for unset, its value (still the live environment's) would be overwritten.
    names = {os.fsencode(name) for name in present}
    scrubbed = 0
    offset = 0
    for entry in data.split(b"\0"):
        name, equals, value = entry.partition(b"=")
        if equals and value and name not in names:
            at = offset + len(name) + 1
            ctypes.memset(ctypes.addressof(block) + at, ord("x"), len(value))
            scrubbed += 1
        offset += len(entry) + 1
    return scrubbed

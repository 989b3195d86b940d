"""A command in a network namespace of its own (only its loopback), and others joining it.

For tests that must bind fixed ports, as `mcphub serve` on its embedded defaults does (7070 and
7071): in a namespace of their own they collide with nothing else on the machine, such as a
developer's `./dev serve` or a second suite. `unshare` and `nsenter` are util-linux's (always
installed); the loopback of a new namespace is down, so a small trampoline brings it up first.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["in_own_network", "joining_network"]

_LOOPBACK_UP = """
import fcntl, os, socket, struct, sys
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH14x", b"lo", 0)))[1]
    fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))
os.execvp(sys.argv[1], sys.argv[1:])
"""


def in_own_network(command: Sequence[str]) -> list[str]:
    """`command` in a new network namespace, as the same process (its pid is the namespace's)."""
    return ["unshare", "--net", "--", sys.executable, "-c", _LOOPBACK_UP, *command]


def joining_network(pid: int, command: Sequence[str]) -> list[str]:
    """`command` in the network namespace of process `pid`."""
    return ["nsenter", f"--net=/proc/{pid}/ns/net", "--", *command]

"""The hub's state directory: where it is by default, the file naming the running hub's addresses,
and the lock that keeps it to one hub.

Kept free of heavy imports: client commands read it to find the local hub.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mcp_local.plainerrors import ConfigError

__all__ = [
    "DEFAULT_GRPC",
    "DEFAULT_HTTP",
    "HUB_FILE",
    "LOCK_FILE",
    "HubTargetError",
    "StateError",
    "StateInUse",
    "default_state_dir",
    "load_hub_file",
    "lock_state_dir",
    "read_hub_file",
    "remove_hub_file",
    "write_hub_file",
]

DEFAULT_GRPC = "127.0.0.1:7070"
DEFAULT_HTTP = "127.0.0.1:7071"
HUB_FILE = "hub.json"
LOCK_FILE = "hub.lock"


class StateError(ConfigError):
    """The state directory, or a file the hub keeps in it (its signing key, the operator's token),
    cannot be used as it is: damaged, unreadable, open to other users, on a full or read-only
    disk. Not the config's fault: `mcphub serve` exits 3 for it, as for an audit log it refuses,
    and 2 for a config or command line it cannot use. A ConfigError still, for the commands
    that read the state directory and treat both alike."""


class HubTargetError(Exception):
    """Which hub a client command is to talk to cannot be settled: its message says why, `code`
    is the exit code (2 bad usage, 3 no hub runs where the command was told to look)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class StateInUse(StateError):
    """Another hub runs on the state directory."""


def default_state_dir(environ: Mapping[str, str]) -> Path:
    """`$XDG_STATE_HOME/mcphub`, else `~/.local/state/mcphub`."""
    base = environ.get("XDG_STATE_HOME") or str(
        Path(environ.get("HOME", "~")).expanduser() / ".local" / "state"
    )
    return Path(base) / "mcphub"


def load_hub_file(state_dir: Path) -> dict[str, Any] | None:
    """The addresses a running hub wrote into its state directory, or None when there is no such
    file; a StateError naming the file when it is there but cannot be read, or is not one a hub
    wrote (edited by hand, or damaged): a command told to find the hub there says so, rather
    than looking for it at the default address without a word."""
    path = state_dir / HUB_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise StateError(f"{path}: not the file a hub writes (not JSON: {exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("grpc"), str):
        raise StateError(f"{path}: not the file a hub writes (no gRPC address in it)")
    return data


def read_hub_file(state_dir: Path) -> dict[str, Any] | None:
    """The addresses a running hub wrote into its state directory, if any (None too for a file
    that cannot be read: `load_hub_file` says why)."""
    try:
        return load_hub_file(state_dir)
    except StateError:
        return None


def write_hub_file(state_dir: Path, grpc: str, mcp_url: str | None) -> None:
    path = state_dir / HUB_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"grpc": grpc, "mcp": mcp_url, "pid": os.getpid()}))
    tmp.replace(path)


def lock_state_dir(state_dir: Path) -> int:
    """Take the state directory for this hub: the descriptor of its lock file (`hub.lock`, which
    says this process's pid), to keep open for as long as the hub runs (closing it lets the next
    hub in). A StateInUse naming the directory and the running hub's pid when another hub has it.

    Whatever the audit store: two hubs on one directory share its `hub.json`, its operator
    token and, by default, their instance name, so the second one would expire the first one's
    waiting approvals as those of a hub that restarted, write `hub started` and `hub stopped`
    records under its name, and remove its `hub.json` when it stops. An `flock`, not a POSIX
    lock: closing any descriptor of a file drops all of a process's POSIX locks on it, and an
    flock is held by this descriptor alone (SQLite's POSIX locks are on files of its own). The
    kernel drops it when the hub dies, however it dies; the file stays (removing it would let
    two hubs each lock a file of that name)."""
    path = state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BlockingIOError:
        os.close(fd)
        pid = _holder(state_dir)
        raise StateInUse(
            f"another hub{f' (pid {pid})' if pid else ''} is running on the state directory {state_dir}: "
            "each hub needs a state directory of its own (--state-dir, or state_dir in its config), "
            "also when hubs share a PostgreSQL audit store"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _holder(state_dir: Path) -> int | None:
    """The pid the lock file says (None in the moment between a hub's lock and its pid, as
    `hub.json` may still be a previous hub's then)."""
    try:
        pid = int((state_dir / LOCK_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def remove_hub_file(state_dir: Path) -> None:
    """Remove the file if this process wrote it (another hub may have taken the directory over)."""
    if (read_hub_file(state_dir) or {}).get("pid") == os.getpid():
        (state_dir / HUB_FILE).unlink(missing_ok=True)

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
    "FORMAT_FILE",
    "HUB_FILE",
    "LOCK_FILE",
    "STATE_FORMAT",
    "HubTargetError",
    "StateError",
    "StateInUse",
    "check_state_format",
    "default_state_dir",
    "in_use",
    "load_hub_file",
    "lock_state_dir",
    "read_hub_file",
    "release_state_dir",
    "remove_hub_file",
    "running_hub_pid",
    "write_hub_file",
    "write_state_format",
]

DEFAULT_GRPC = "127.0.0.1:7070"
DEFAULT_HTTP = "127.0.0.1:7071"
HUB_FILE = "hub.json"
LOCK_FILE = "hub.lock"
FORMAT_FILE = "format.json"
STATE_FORMAT = 2
"""The form of the state this version writes (its state directory, audit store and approvals):
raised when a version writes state an older one would misread. 1 is the state of versions
before the marker (2026-11 and earlier: approvals whose groups meant any of them)."""


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
    """`started` is this process's start time as the kernel counts it (`_process_started`): with
    the pid, it tells a later start whether the process running under that pid is this hub."""
    path = state_dir / HUB_FILE
    tmp = path.with_suffix(".tmp")
    found = {"grpc": grpc, "mcp": mcp_url, "pid": os.getpid(), "started": _process_started(os.getpid())}
    tmp.write_text(json.dumps(found))
    tmp.replace(path)


def _process_started(pid: int) -> int | None:
    """When process `pid` started, in clock ticks after boot (field 22 of /proc/PID/stat), or
    None when there is no such process (or it is a zombie: its hub is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # the command name in parentheses may hold spaces
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _looks_like_a_hub(pid: int, state_dir: Path) -> bool:
    """Does the command line of process `pid` read as `mcphub serve` (or `python -m
    mcp_remote.cli serve`) of `state_dir`: one that names no other `--state-dir`? For a
    `hub.json` of a hub that recorded no start time. (A hub whose config file names its state
    directory is taken for this directory's: the start refuses, naming it, rather than run
    beside it.)"""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    if "serve" not in argv or not any("mcphub" in arg or "mcp_remote" in arg for arg in argv):
        return False
    named = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--state-dir"]
    named += [arg.removeprefix("--state-dir=") for arg in argv if arg.startswith("--state-dir=")]
    if not named:
        return True
    try:
        cwd = Path(f"/proc/{pid}/cwd").resolve()
    except OSError:
        return True
    return any((cwd / d).resolve() == state_dir.resolve() for d in named)


def running_hub_pid(state_dir: Path) -> int | None:
    """The pid of a hub that `hub.json` names and that still runs, other than this process; else
    None. Asked by a hub that holds the lock: a hub that runs there without it is of a version
    that took no `hub.lock` (before 2026-12-05), upgraded in place while it ran. The process under
    the pid is that hub when its start time is the one the file records, or, in a file of a
    hub that recorded none, when its command line is a hub's: a pid reused by another process
    (after a reboot, or this one in a container whose hub has the same pid at each start) is
    not mistaken for it."""
    found = read_hub_file(state_dir)
    if found is None or found.get("pid") == os.getpid() or not names_a_running_hub(found, state_dir):
        return None
    pid: int = found["pid"]
    return pid


def names_a_running_hub(found: Mapping[str, Any], state_dir: Path) -> bool:
    """Whether the hub that wrote `found` (a `hub.json` of `state_dir`) still runs: its pid is a
    live process (not a zombie) with the start time the file records, or, in the file of a hub
    that recorded none (before 2026-12-05), a hub's command line that names no other state
    directory. A pid reused by another process (after a kill -9, a reboot, a container whose hub
    has the same pid at each start) is not taken for it: a client would send its token there."""
    pid = found.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    started = _process_started(pid)
    if started is None:
        return False
    recorded = found.get("started")
    if isinstance(recorded, int) and not isinstance(recorded, bool):
        return recorded == started
    return _looks_like_a_hub(pid, state_dir)


def in_use(state_dir: Path, pid: int | None) -> StateInUse:
    """The refusal of a start on a state directory another hub (`pid`, when known) runs on."""
    return StateInUse(
        f"another hub{f' (pid {pid})' if pid else ''} is running on the state directory {state_dir}: "
        "each hub needs a state directory of its own (--state-dir, or state_dir in its config), "
        "also when hubs share a PostgreSQL audit store"
    )


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
        raise in_use(state_dir, _holder(state_dir)) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def release_state_dir(fd: int) -> None:
    """Let the next hub in (`lock_state_dir`'s descriptor): the lock file says no pid from now
    on, so that no later refusal names this process, which may be gone or another by then."""
    try:
        os.ftruncate(fd, 0)
    except OSError:
        pass
    finally:
        os.close(fd)


def _holder(state_dir: Path) -> int | None:
    """The pid the lock file says (None in the moment between a hub's lock and its pid, as
    `hub.json` may still be a previous hub's then)."""
    try:
        pid = int((state_dir / LOCK_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def check_state_format(state_dir: Path) -> None:
    """A StateError when the state directory's marker (`FORMAT_FILE`) says a newer version wrote
    its state: rolled back after it, this one would misread it (an older hub crashed at start on
    approvals a newer one had stored, or failed every approval on its new columns). Without a
    marker the state is this version's or older, which this version upgrades."""
    path = state_dir / FORMAT_FILE
    try:
        found = json.loads(path.read_text())
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StateError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    except ValueError:
        found = None
    written = found.get("format") if isinstance(found, dict) else None
    if not isinstance(written, int) or isinstance(written, bool):
        raise StateError(
            f"{path}: not the state format marker a hub writes; restore it from a backup, or delete it "
            "if the newest mcphub that ran on this directory is this one"
        )
    if written > STATE_FORMAT:
        by = found.get("written_by") if isinstance(found, dict) else None
        raise StateError(
            f"the state directory {state_dir} was last used by a newer mcphub"
            f"{f' ({by})' if isinstance(by, str) else ''}, whose state (format {written}) this one "
            f"(format {STATE_FORMAT}) cannot read: rolling back after a newer version ran is not "
            "supported; run the newer version again, or this one on a state directory of its own"
        )


def write_state_format(state_dir: Path, written_by: str) -> None:
    """Mark the state directory as this version's (`check_state_format`), once its state is."""
    path = state_dir / FORMAT_FILE
    try:
        if json.loads(path.read_text()).get("format") == STATE_FORMAT:
            return
    except (OSError, ValueError, AttributeError):
        pass
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"format": STATE_FORMAT, "written_by": written_by}) + "\n")
    tmp.replace(path)


def remove_hub_file(state_dir: Path) -> None:
    """Remove the file if this process wrote it (another hub may have taken the directory over)."""
    if (read_hub_file(state_dir) or {}).get("pid") == os.getpid():
        (state_dir / HUB_FILE).unlink(missing_ok=True)

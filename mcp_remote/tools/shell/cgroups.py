"""cgroup limits for the processes of one principal: memory, process count and CPU bandwidth.

The hub makes its groups below its own cgroup (`<own>/mcphub-<pid>/<principal>`), in each v1
controller hierarchy (memory, pids, cpu) or in the v2 unified one, so whatever limits the hub's own
group has still bound the sandboxes. A process joins by writing its pid to the `cgroup.procs`
files this module names (done as root by the jail's launcher before it starts anything).

Where no controller can be used (no permission, v2 without delegation) the driver says why, and
the jail relies on rlimits alone; `describe()` reports which limits are really in force.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from .options import Limits

__all__ = ["CgroupDriver", "PrincipalCgroup", "detect_cgroups"]

logger = logging.getLogger(__name__)

_V1_CONTROLLERS = ("memory", "pids", "cpu")
_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class PrincipalCgroup:
    dirs: tuple[Path, ...]
    enforced: tuple[str, ...]
    """The limits really applied: a subset of memory, pids, cpu."""

    @property
    def procs_files(self) -> tuple[str, ...]:
        return tuple(str(d / "cgroup.procs") for d in self.dirs)

    def pids(self) -> set[int]:
        found: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError):
                found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return found


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


class CgroupDriver:
    """Makes and removes the per-principal groups; `mode` is "v1", "v2" or "none" (with `reason`)."""

    def __init__(self, mode: str, bases: dict[str, Path], reason: str = "") -> None:
        self.mode = mode
        self.reason = reason
        self._bases = bases  # controller (or "unified") -> the hub's base directory
        self._groups: dict[str, PrincipalCgroup] = {}

    def group(self, key: str, limits: Limits) -> PrincipalCgroup | None:
        """The group of `key` (a principal's directory name), made on first use."""
        if self.mode == "none":
            return None
        found = self._groups.get(key)
        if found is not None:
            return found
        try:
            made = self._make_v1(key, limits) if self.mode == "v1" else self._make_v2(key, limits)
        except OSError as exc:
            logger.warning("cgroup for %s not made (%s); rlimits only", key, exc)
            return None
        self._groups[key] = made
        return made

    def _make_v1(self, key: str, limits: Limits) -> PrincipalCgroup:
        dirs: list[Path] = []
        enforced: list[str] = []
        for controller, base in self._bases.items():
            d = base / key
            d.mkdir(exist_ok=True)
            dirs.append(d)
            if controller == "memory":
                memory = str(limits.memory_mb * _MIB)
                _write(d / "memory.limit_in_bytes", memory)
                if (d / "memory.memsw.limit_in_bytes").exists():
                    with contextlib.suppress(OSError):  # swap accounting may be off
                        _write(d / "memory.memsw.limit_in_bytes", memory)
                enforced.append("memory")
            elif controller == "pids":
                _write(d / "pids.max", str(limits.processes))
                enforced.append("pids")
            elif controller == "cpu":
                period = int((d / "cpu.cfs_period_us").read_text())
                _write(d / "cpu.cfs_quota_us", str(max(1000, int(limits.cpus * period))))
                enforced.append("cpu")
        return PrincipalCgroup(tuple(dirs), tuple(enforced))

    def _make_v2(self, key: str, limits: Limits) -> PrincipalCgroup:
        base = self._bases["unified"]
        d = base / key
        d.mkdir(exist_ok=True)
        available = set((base / "cgroup.subtree_control").read_text().split())
        enforced: list[str] = []
        if "memory" in available:
            _write(d / "memory.max", str(limits.memory_mb * _MIB))
            with contextlib.suppress(OSError):
                _write(d / "memory.swap.max", "0")
            enforced.append("memory")
        if "pids" in available:
            _write(d / "pids.max", str(limits.processes))
            enforced.append("pids")
        if "cpu" in available:
            period = 100_000
            _write(d / "cpu.max", f"{max(1000, int(limits.cpus * period))} {period}")
            enforced.append("cpu")
        return PrincipalCgroup((d,), tuple(enforced))

    def kill_all(self, group: PrincipalCgroup) -> None:
        for pid in group.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        """Kill what is left in the groups and remove them (and the hub's base directories)."""
        deadline = time.monotonic() + 3.0
        for group in self._groups.values():
            self.kill_all(group)
            for d in group.dirs:
                while True:
                    try:
                        d.rmdir()
                        break
                    except OSError as exc:
                        if exc.errno == errno.ENOENT:
                            break
                        if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                            logger.warning("cannot remove cgroup %s: %s", d, exc.strerror)
                            break
                        self.kill_all(group)
                        time.sleep(0.01)
        self._groups.clear()
        for base in self._bases.values():
            with contextlib.suppress(OSError):
                base.rmdir()

    def describe(self) -> dict[str, object]:
        return {"cgroups": self.mode, **({"cgroups_reason": self.reason} if self.reason else {})}


def _own_cgroups(proc_cgroup: str) -> dict[str, str]:
    """controller ("" for v2) -> the hub's own path in that hierarchy."""
    own: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for name in controllers.split(",") if controllers else [""]:
            own[name] = path
    return own


def _mounts(mountinfo: str) -> tuple[dict[str, Path], Path | None]:
    """v1 controller -> mount point, and the cgroup2 mount point."""
    v1: dict[str, Path] = {}
    v2: Path | None = None
    for line in mountinfo.splitlines():
        pre, _, post = line.partition(" - ")
        fields = pre.split()
        rest = post.split()
        if len(fields) < 5 or len(rest) < 3:
            continue
        mount_point = Path(fields[4].replace("\\040", " "))
        if rest[0] == "cgroup2" and v2 is None:
            v2 = mount_point
        elif rest[0] == "cgroup":
            for option in rest[2].split(","):
                if option in _V1_CONTROLLERS:
                    v1.setdefault(option, mount_point)
    return v1, v2


def _clean_stale(base_parent: Path) -> None:
    """Remove the `mcphub-<pid>` groups of hubs that died, killing what their sandboxes left: a
    process bwrap was still setting up when the hub was killed can wait forever otherwise."""
    with contextlib.suppress(OSError):
        for entry in base_parent.iterdir():
            if not (entry.name.startswith("mcphub-") and entry.name[7:].isdigit()):
                continue
            pid = int(entry.name[7:])
            if pid == os.getpid() or Path(f"/proc/{pid}").exists():
                continue
            for child in entry.iterdir():
                if child.is_dir():
                    group = PrincipalCgroup((child,), ())
                    for _ in range(100):
                        left = group.pids()
                        for p in left:
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(p, signal.SIGKILL)
                        try:
                            child.rmdir()
                            break
                        except OSError:
                            time.sleep(0.01)
            with contextlib.suppress(OSError):
                entry.rmdir()


def detect_cgroups(proc: Path = Path("/proc")) -> CgroupDriver:
    """Find a usable cgroup hierarchy: v1 memory/pids/cpu controllers, else a delegated v2 tree."""
    try:
        own = _own_cgroups((proc / "self" / "cgroup").read_text())
        v1, v2 = _mounts((proc / "self" / "mountinfo").read_text())
    except OSError as exc:
        return CgroupDriver("none", {}, f"cannot read /proc: {exc.strerror}")
    name = f"mcphub-{os.getpid()}"
    if v1:
        bases: dict[str, Path] = {}
        problems: list[str] = []
        for controller in _V1_CONTROLLERS:
            if controller not in v1 or controller not in own:
                continue
            parent = v1[controller] / own[controller].lstrip("/")
            _clean_stale(parent)
            try:
                (parent / name).mkdir(exist_ok=True)
            except OSError as exc:
                problems.append(f"{controller}: {exc.strerror}")
                continue
            bases[controller] = parent / name
        if bases:
            return CgroupDriver("v1", bases)
        if problems:
            return CgroupDriver("none", {}, "cgroup v1: " + "; ".join(problems))
    if v2 is not None and "" in own:
        return _detect_v2(v2 / own[""].lstrip("/"), name)
    return CgroupDriver("none", {}, "no cgroup hierarchy with memory, pids or cpu controllers")


def _detect_v2(own_dir: Path, name: str) -> CgroupDriver:
    wanted = {"memory", "pids", "cpu"}
    try:
        available = set((own_dir / "cgroup.controllers").read_text().split()) & wanted
    except OSError as exc:
        return CgroupDriver("none", {}, f"cgroup v2: {exc.strerror}")
    if not available:
        return CgroupDriver("none", {}, "cgroup v2: no memory, pids or cpu controller is delegated here")
    base = own_dir / name
    try:
        _clean_stale(own_dir)
        base.mkdir(exist_ok=True)
        enable = " ".join(f"+{c}" for c in sorted(available))
        try:
            _write(own_dir / "cgroup.subtree_control", enable)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            # The hub's group holds processes ("no internal processes"): when they are only the hub,
            # it moves itself into a leaf of its own, as delegated services do.
            others = set((own_dir / "cgroup.procs").read_text().split()) - {str(os.getpid())}
            if others:
                base.rmdir()
                return CgroupDriver(
                    "none",
                    {},
                    f"cgroup v2: {own_dir} also holds other processes, so its controllers cannot be "
                    "delegated; run the hub in a cgroup of its own (systemd: Delegate=yes)",
                )
            leaf = own_dir / "mcphub-hub"
            leaf.mkdir(exist_ok=True)
            _write(leaf / "cgroup.procs", str(os.getpid()))
            _write(own_dir / "cgroup.subtree_control", enable)
        _write(base / "cgroup.subtree_control", enable)
    except OSError as exc:
        with contextlib.suppress(OSError):
            base.rmdir()
        return CgroupDriver("none", {}, f"cgroup v2 at {own_dir}: {exc.strerror}")
    return CgroupDriver("v2", {"unified": base})

"""The local jail: each command in a fresh bubblewrap sandbox, as an unprivileged uid, with limits.

    hub --request--> spawner (spawner.py; root, in the hub's private mount namespace)
      fork: join the principal's cgroups, set rlimits, new session, drop to the principal's uid
      -> bwrap: new user, pid, net, ipc, uts, cgroup and mount namespaces; read-only system
         directories, tmpfs /tmp, the principal's workspace at /workspace; a system-call
         filter (seccomp.py); dies with the hub
      -> /bin/sh -c COMMAND                         (the only shell that sees the command)

Every argument is a separate argv element; the command string only ever reaches `/bin/sh -c`
inside the sandbox. When the hub runs as root, each principal gets a uid of its own
(`uid_base + n`, recorded as the owner of its workspace) so it can neither read another's files
nor count against its process limit. bwrap resolves its bind sources as that uid, which cannot
pass the hub's private state directory, so the spawner lives in a mount namespace of the hub's
own in which the workspaces directory is also bound at `/mnt`.

A hub that is not root runs bwrap as itself: the same namespaces, one uid for all principals.
Its process-count limit is set inside each sandbox's user namespace (`prlimit`, where the
kernel counts processes per user namespace), so it bounds each command's processes without
counting the hub's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp_local.errors import ToolError

from .cgroups import CgroupDriver, PrincipalCgroup, detect_cgroups
from .launcher import Spawner, SpawnError
from .localfs import LocalWorkspace
from .localproc import LocalProcess
from .options import JailTargetOptions, Limits, ShellOptions, UnjailedTargetOptions
from .rootfs import build_etc, host_system_args
from .sandbox import ExecSpec, SandboxUnavailable, sandbox_cwd
from .seccomp import Filter, compile_filter
from .workspace import workspace_dir_name

__all__ = [
    "JAIL_MOUNT",
    "JailHost",
    "LocalJail",
    "UnjailedTarget",
    "counts_processes_per_user_namespace",
    "jail_argv",
    "rlimit_values",
]

logger = logging.getLogger(__name__)

JAIL_MOUNT = "/workspace"
"""Where a jailed command sees its workspace."""
SANDBOX_UID = 1000
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_HOLDER_MOUNT = "/mnt"
_JAIL_ETC = ".jail-etc"  # in the workspaces directory; no principal's directory starts with "."
_RESTART_EVERY_S = 5.0  # the least time between two starts of a lost spawner
_INSTALL_HINT = (
    "install it (Debian/Ubuntu: apt-get install bubblewrap; Fedora/RHEL: dnf install bubblewrap), "
    "or give this principal another sandbox target in the shell pack's options (docs/shell.md). "
    "Commands are never run unjailed in its place."
)


def _which(name: str) -> str | None:
    return shutil.which(name, path=_SYSTEM_PATH)


def _address_space_mb(limits: Limits, *, cgroup_memory: bool) -> int:
    """`address_space_mb`, or what stands in for it: `memory_mb` (four times that when a memory
    cgroup holds the real bound, as address space counts mappings never touched)."""
    return limits.address_space_mb or (limits.memory_mb * 4 if cgroup_memory else limits.memory_mb)


def rlimit_values(limits: Limits, *, cgroup_memory: bool, nproc: bool) -> list[tuple[str, int]]:
    """The rlimits of every process of the sandbox (set as soft = hard: it cannot raise them)."""
    values = [
        ("RLIMIT_CPU", limits.cpu_s),
        ("RLIMIT_AS", _address_space_mb(limits, cgroup_memory=cgroup_memory) * 1024 * 1024),
        ("RLIMIT_FSIZE", limits.file_size_mb * 1024 * 1024),
        ("RLIMIT_NOFILE", limits.open_files),
        ("RLIMIT_CORE", 0),
    ]
    if nproc:
        values.append(("RLIMIT_NPROC", limits.processes))
    return values


def limits_in_force(limits: Limits, group: PrincipalCgroup | None) -> dict[str, Any]:
    """The limits as shell_status shows them: `address_space_mb` as set on every process, not
    the option's null when it is derived from `memory_mb`."""
    shown = limits.model_dump()
    shown["address_space_mb"] = _address_space_mb(
        limits, cgroup_memory=group is not None and "memory" in group.enforced
    )
    return shown


def jail_argv(
    bwrap: str,
    *,
    system_args: list[str],
    jail_etc: str,
    workspace: str,
    network: bool,
    limits: Limits,
    cwd: str,
    env: dict[str, str],
    command: str,
    prlimit: str | None = None,
    seccomp_fd: int | None = None,
) -> list[str]:
    """bwrap's argv for one command. Pure: every value is its own argv element.

    `prlimit`: its path, to set the process-count limit inside the sandbox's user namespace
    (a hub that is not root cannot set it per uid outside). `seccomp_fd`: where bwrap reads the
    system-call filter it installs before the command starts."""
    args = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns"]
    if network:
        args.append("--share-net")
    args += ["--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "sandbox"]
    args += ["--die-with-parent", "--new-session", "--as-pid-1"]
    args += system_args
    args += ["--ro-bind", jail_etc, "/etc"]
    # /tmp and /dev/shm are the sandbox's own tmpfs mounts of tmp_mb each, not the host's.
    tmp_bytes = str(limits.tmp_mb * 1024 * 1024)
    args += ["--proc", "/proc", "--dev", "/dev", "--size", tmp_bytes, "--tmpfs", "/dev/shm"]  # noqa: S108
    args += ["--size", tmp_bytes, "--tmpfs", "/tmp", "--dir", "/var"]  # noqa: S108
    args += ["--symlink", "../tmp", "/var/tmp"]  # noqa: S108
    args += ["--bind", workspace, JAIL_MOUNT]
    # bwrap builds / and /dev as tmpfs mounts the sandbox's user owns, bounded only by half the
    # host's memory: read-only once built, so the workspace and the two above are all it writes.
    args += ["--remount-ro", "/dev", "--remount-ro", "/"]
    args += ["--chdir", cwd, "--clearenv"]
    for key, value in env.items():
        args += ["--setenv", key, value]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    args.append("--")
    if prlimit is not None:
        args += [prlimit, f"--nproc={limits.processes}", "--"]
    args += ["/bin/sh", "-c", command]
    return args


def counts_processes_per_user_namespace(release: str | None = None) -> bool:
    """Does this kernel count RLIMIT_NPROC per user namespace (Linux 5.14 and later)?

    Then a limit set inside a sandbox's own user namespace bounds that sandbox's processes
    alone. Before, it counted every process of the host uid, the hub's threads included."""
    numbers = (release or os.uname().release).split("-")[0].split(".")
    try:
        major, minor = int(numbers[0]), int(numbers[1])
    except (IndexError, ValueError):
        return False
    return (major, minor) >= (5, 14)


@dataclass(frozen=True, slots=True)
class _Principal:
    dir_name: str
    host_dir: Path  # as the hub sees it
    uid: int
    gid: int


class JailHost:
    """What the local targets share: workspaces and their uids, cgroups, the mount namespace."""

    def __init__(self, options: ShellOptions, state_dir: Path) -> None:
        self.options = options
        self.root = options.workspace_root or state_dir / "workspaces"
        self.is_root = os.geteuid() == 0
        self.cgroups = CgroupDriver("none", {}, "not started")
        self._principals: dict[str, _Principal] = {}
        self._workspaces: dict[str, LocalWorkspace] = {}
        self._lock = asyncio.Lock()
        self.spawner = Spawner()
        self._spawner_prefix: list[str] = []
        self._restart_lock = asyncio.Lock()
        self._next_restart = 0.0
        self.problem: str | None = None
        """Why nothing can run here at all (a system tool missing), or None."""
        self.prlimit: str | None = None
        """A hub that is not root: `prlimit`, to limit the processes inside each sandbox, or None."""
        self.seccomp = Filter(None, problem="not compiled yet")

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o711)
        # Jail uids pass through it to their own directory (0700 each); they cannot list it.
        os.chmod(self.root, 0o711)  # noqa: S103
        self.cgroups = (
            await asyncio.to_thread(detect_cgroups)
            if self.is_root
            else CgroupDriver("none", {}, "the hub does not run as root")
        )
        if self.cgroups.mode == "none":
            logger.info("shell: no cgroup limits (%s); rlimits only", self.cgroups.reason)
        if not self.is_root:
            per_namespace = counts_processes_per_user_namespace()
            self.prlimit = _which("prlimit") if per_namespace else None
            if self.prlimit is None:
                logger.warning(
                    "shell: no limit on the number of processes of a command: the hub is not root, and %s",
                    "prlimit (util-linux) is missing"
                    if per_namespace
                    else "this kernel (before 5.14) counts them per host uid, the hub's own included",
                )
        await asyncio.to_thread(build_etc, self.root / _JAIL_ETC, SANDBOX_UID, JAIL_MOUNT)
        self.seccomp = await asyncio.to_thread(compile_filter)
        if self.seccomp.program is None:
            logger.warning(
                "shell: jailed commands run without a system-call filter: %s", self.seccomp.problem
            )
        prefix: list[str] = []
        if self.is_root and (
            self.root.resolve() == Path(_HOLDER_MOUNT) or Path(_HOLDER_MOUNT) in self.root.resolve().parents
        ):
            self.problem = (
                f"workspace_root must not be under {_HOLDER_MOUNT}: the jail binds the workspaces there"
            )
            logger.warning("shell: %s", self.problem)
            return
        if self.is_root:
            tools = {name: _which(name) for name in ("unshare", "sh", "mount")}
            missing = [name for name, path in tools.items() if path is None]
            if missing:
                self.problem = (
                    f"the hub's machine lacks {', '.join(missing)} (util-linux), which the jail needs"
                )
                logger.warning("shell: %s", self.problem)
                return
            script = 'mount --bind -- "$1" "$2" || exit 1; shift 2; exec "$@"'
            prefix = [
                str(tools["unshare"]), "--mount", "--propagation", "slave", "--",
                str(tools["sh"]), "-c", script, "mcphub-spawner", str(self.root), _HOLDER_MOUNT,
            ]  # fmt: skip
        self._spawner_prefix = prefix
        try:
            await self.spawner.start(prefix)
        except SpawnError as exc:
            self.problem = str(exc)
            logger.warning("shell: %s", exc)

    async def revive(self) -> None:
        """Start the spawner again when the one that ran was lost (killed with the hub's process
        group, or by an operator): at most once every _RESTART_EVERY_S, so a spawner that dies at
        once is not restarted for every command. A start that fails leaves the loss as the reason
        commands cannot run, and is tried again after the same wait."""
        if not (self.spawner.problem and self.spawner.started) or self.problem:
            return
        async with self._restart_lock:
            if not self.spawner.problem:
                return  # another command started it meanwhile
            loop = asyncio.get_running_loop()
            if loop.time() < self._next_restart:
                return
            self._next_restart = loop.time() + _RESTART_EVERY_S
            spawner = Spawner()
            try:
                await spawner.start(self._spawner_prefix)
            except SpawnError as exc:
                logger.warning("shell: the spawner could not be started again: %s", exc)
                return
            self.spawner.close()
            self.spawner = spawner
            logger.warning("shell: the spawner was started again")

    async def principal(self, name: str) -> _Principal:
        found = self._principals.get(name)
        if found is not None:
            return found
        async with self._lock:
            found = self._principals.get(name)
            if found is None:
                found = await asyncio.to_thread(self._make_workspace, name)
                self._principals[name] = found
        return found

    def _make_workspace(self, name: str) -> _Principal:
        dir_name = workspace_dir_name(name)
        path = self.root / dir_name
        base = self.options.uid_base
        if not self.is_root:
            path.mkdir(mode=0o700, exist_ok=True)
            return _Principal(dir_name, path, os.getuid(), os.getgid())
        try:
            st = path.lstat()
        except FileNotFoundError:
            st = None
        if st is not None and base < st.st_uid <= base + self.options.uid_count:
            return _Principal(dir_name, path, st.st_uid, base)
        used = set()
        for entry in self.root.iterdir():
            with contextlib.suppress(OSError):
                used.add(entry.lstat().st_uid)
        uid = next((base + n for n in range(1, self.options.uid_count + 1) if base + n not in used), None)
        if uid is None:
            raise ToolError(
                f"no free sandbox uid left in {base + 1}..{base + self.options.uid_count} (uid_count)"
            )
        if st is None:
            path.mkdir(mode=0o700)
        elif not path.is_dir() or path.is_symlink():
            raise ToolError(f"the workspace {path} exists and is not a directory")
        os.chown(path, uid, base, follow_symlinks=False)
        os.chmod(path, 0o700)
        return _Principal(dir_name, path, uid, base)

    async def workspace(self, name: str, mount: str) -> LocalWorkspace:
        found = self._workspaces.get(name)
        if found is None:
            p = await self.principal(name)
            owner = (p.uid, p.gid) if self.is_root else None
            found = LocalWorkspace(str(p.host_dir), mount, owner=owner)
            self._workspaces[name] = found
        return found

    def cgroup(self, name: str, limits: Limits) -> PrincipalCgroup | None:
        return self.cgroups.group(workspace_dir_name(name), limits)

    async def stop(self) -> None:
        for ws in self._workspaces.values():
            ws.close()
        self._workspaces.clear()
        self.spawner.close()
        await asyncio.to_thread(self.cgroups.close)

    async def spawn(
        self,
        argv: list[str],
        *,
        principal: _Principal | None,
        env: dict[str, str],
        cwd: str | None,
        limits: Limits,
        group: PrincipalCgroup | None,
        stdin: bytes | None,
        fd3: bytes | None = None,
    ) -> LocalProcess:
        """Start argv as the principal's uid (when the hub is root), in its cgroups, with its rlimits;
        `fd3`: what it reads from fd 3."""
        if self.problem or self.spawner.problem:
            raise SandboxUnavailable(str(self.problem or self.spawner.problem))
        cgroup_memory = group is not None and "memory" in group.enforced
        try:
            return await self.spawner.spawn(
                argv,
                env=env,
                cwd=cwd,
                uid=principal.uid if principal is not None else None,
                gid=principal.gid if principal is not None else None,
                rlimits=rlimit_values(limits, cgroup_memory=cgroup_memory, nproc=principal is not None),
                cgroups=group.procs_files if group is not None else (),
                stdin=stdin,
                fd3=fd3,
            )
        except SpawnError as exc:
            logger.warning("shell: a sandbox could not be started: %s", exc)
            raise SandboxUnavailable(f"the sandbox could not be started: {exc}") from None


class LocalJail:
    """The `jail` target: see the module docstring."""

    kind = "jail"

    def __init__(self, options: JailTargetOptions, host: JailHost) -> None:
        self.options = options
        self.host = host
        self.bwrap = options.bwrap_path or _which("bwrap")
        self._system_args: list[str] = []
        self.problem: str | None = None

    async def start(self) -> None:
        if self.bwrap is None or not os.access(self.bwrap, os.X_OK):
            where = self.options.bwrap_path or f"bwrap in {_SYSTEM_PATH}"
            self.problem = f"bubblewrap is not installed on the hub's machine (no {where}); {_INSTALL_HINT}"
            logger.warning("shell: %s", self.problem)
            return
        if _HOLDER_MOUNT in self.options.ro_paths or any(
            _HOLDER_MOUNT.startswith(p.rstrip("/") + "/") or p.startswith(_HOLDER_MOUNT + "/")
            for p in self.options.ro_paths
        ):
            self.problem = f"ro_paths must not include {_HOLDER_MOUNT}: the jail uses it for the workspaces"
            return
        self._system_args = host_system_args(self.options.ro_paths)

    async def stop(self) -> None:
        return None

    def _problem(self) -> str | None:
        return self.problem or self.host.problem or self.host.spawner.problem

    def _check(self) -> None:
        problem = self._problem()
        if problem:
            raise SandboxUnavailable(problem)

    async def spawn(self, principal: str, spec: ExecSpec) -> LocalProcess:
        await self.host.revive()
        self._check()
        assert self.bwrap is not None
        host = self.host
        p = await host.principal(principal)
        limits = self.options.limits
        seccomp = host.seccomp.program if self.options.seccomp else None
        if host.is_root:
            workspace = f"{_HOLDER_MOUNT}/{p.dir_name}"
            jail_etc = f"{_HOLDER_MOUNT}/{_JAIL_ETC}"
        else:
            workspace = str(p.host_dir)
            jail_etc = str(host.root / _JAIL_ETC)
        env = {
            "PATH": _SYSTEM_PATH,
            "HOME": JAIL_MOUNT,
            "USER": "sandbox",
            "LOGNAME": "sandbox",
            "SHELL": "/bin/sh",
            "LANG": "C.UTF-8",
            "TMPDIR": "/tmp",  # noqa: S108 - the jail's own tmpfs
            **self.options.env,
            **spec.env,
        }
        argv = jail_argv(
            self.bwrap,
            system_args=self._system_args,
            jail_etc=jail_etc,
            workspace=workspace,
            network=self.options.network,
            limits=limits,
            cwd=sandbox_cwd(spec.cwd, JAIL_MOUNT),
            env=env,
            command=spec.command,
            prlimit=host.prlimit,
            seccomp_fd=3 if seccomp is not None else None,
        )
        return await host.spawn(
            argv,
            principal=p if host.is_root else None,
            env={},
            cwd=None,
            limits=limits,
            group=host.cgroup(principal, limits),
            stdin=spec.stdin,
            fd3=seccomp,
        )

    async def workspace(self, principal: str) -> LocalWorkspace:
        return await self.host.workspace(principal, JAIL_MOUNT)

    def describe(self, principal: str) -> dict[str, Any]:
        group = self.host.cgroups.group(workspace_dir_name(principal), self.options.limits)
        problem = self._problem()
        return {
            "target": "jail",
            "available": problem is None,
            **({"problem": problem} if problem else {}),
            "network": self.options.network,
            "workspace": JAIL_MOUNT,
            "separate_uid": self.host.is_root,
            "syscall_filter": self.host.seccomp.describe()
            if self.options.seccomp
            else "off (seccomp: false)",
            "process_limit": (
                "per principal (its own uid)"
                if self.host.is_root
                else ("per command (its own user namespace)" if self.host.prlimit else "none")
            ),
            "limits": limits_in_force(self.options.limits, group),
            "cgroup_limits": list(group.enforced) if group else [],
            **self.host.cgroups.describe(),
        }


class UnjailedTarget:
    """The `unjailed` target: `/bin/sh -c` on the hub's machine as the hub's user, in the workspace.

    Only for trusted setups: nothing but rlimits, cgroups and the process group stands between the
    command and the machine.
    """

    kind = "unjailed"

    def __init__(self, options: UnjailedTargetOptions, host: JailHost) -> None:
        self.options = options
        self.host = host

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def spawn(self, principal: str, spec: ExecSpec) -> LocalProcess:
        host = self.host
        await host.revive()
        p = await host.principal(principal)
        home = str(p.host_dir)
        env = {"PATH": _SYSTEM_PATH, "HOME": home, "LANG": "C.UTF-8", **self.options.env, **spec.env}
        return await host.spawn(
            ["/bin/sh", "-c", spec.command],
            principal=None,
            env=env,
            cwd=sandbox_cwd(spec.cwd, home),
            limits=self.options.limits,
            group=host.cgroup(principal, self.options.limits),
            stdin=spec.stdin,
        )

    async def workspace(self, principal: str) -> LocalWorkspace:
        p = await self.host.principal(principal)
        return await self.host.workspace(principal, str(p.host_dir))

    def describe(self, principal: str) -> dict[str, Any]:
        return {
            "target": "unjailed",
            "warning": "commands run on the hub's machine as the hub's user, without a jail",
            "limits": limits_in_force(self.options.limits, self.host.cgroup(principal, self.options.limits)),
            **self.host.cgroups.describe(),
        }

"""The files a jailed command sees besides its workspace: the host's system directories, read-only,
and an /etc of the jail's own.

The /etc is built by the hub at start from an allow-list of the host's entries, copying only what
any local user could read anyway (world-readable files, symlinks), plus a passwd, group, hosts and
hostname that name the sandbox's user. Bound as one read-only mount, it costs the same per command
however many entries it has (one bind per entry would cost a mount each).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path

__all__ = ["build_etc", "host_system_args"]

_SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
# Not `environment`, `gitconfig`, `wgetrc` or `profile.d`: world-readable on the host, and where
# operators keep proxy credentials and git's `http.extraheader` tokens (a security review).
_ETC = (
    "alternatives", "bash.bashrc", "ca-certificates", "ca-certificates.conf", "debian_version",
    "gai.conf", "host.conf", "inputrc", "java-17-openjdk", "ld.so.cache",
    "ld.so.conf", "ld.so.conf.d", "locale.alias", "localtime", "login.defs", "magic", "magic.mime",
    "manpath.config", "mime.types", "nsswitch.conf", "os-release", "perl", "profile",
    "protocols", "python3", "python3.11", "services", "shells", "ssl", "terminfo", "timezone",
    "vim", "xdg",
)  # fmt: skip


def host_system_args(extra_ro: list[str]) -> list[str]:
    """bwrap arguments for the host's system directories, read-only (merged-/usr links stay links),
    and the operator's `ro_paths`."""
    args: list[str] = []
    for name in _SYSTEM_DIRS:
        path = "/" + name
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in extra_ro:
        args += ["--ro-bind-try", path, path]
    return args


def _world_readable(st: os.stat_result) -> bool:
    return bool(st.st_mode & stat.S_IROTH) and (
        not stat.S_ISDIR(st.st_mode) or bool(st.st_mode & stat.S_IXOTH)
    )


def _copy_etc_entry(source: Path, dest: Path) -> None:
    """Copy what any local user could read anyway: symlinks as links, others only if world-readable."""
    st = source.lstat()
    if stat.S_ISLNK(st.st_mode):
        dest.symlink_to(os.readlink(source))
    elif not _world_readable(st):
        return
    elif stat.S_ISDIR(st.st_mode):
        dest.mkdir(mode=0o755)
        for child in sorted(source.iterdir()):
            _copy_etc_entry(child, dest / child.name)
    elif stat.S_ISREG(st.st_mode):
        shutil.copyfile(source, dest, follow_symlinks=False)
        os.chmod(dest, 0o644)


def build_etc(dest: Path, uid: int, home: str) -> None:
    """The jail's /etc: an allow-list of the host's (copied once, bound as one read-only mount) plus
    its own passwd, group, hosts and hostname. Rebuilt at every start, swapped in atomically."""
    _remove_stale(dest)
    staging = dest.with_name(dest.name + f".new-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    try:
        _build_staging(staging, uid, home)
    except BaseException:
        # A partial copy (a full disk, most often) would stay on that disk at every failed start.
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = dest.with_name(dest.name + f".old-{os.getpid()}")
    if dest.exists():
        dest.rename(old)
    staging.rename(dest)
    if old.exists():
        shutil.rmtree(old)


def _remove_stale(dest: Path) -> None:
    """The staging and old copies of `dest` that hubs no longer running left (killed while they
    built it, or from a version that did not remove a failed build's)."""
    for path in dest.parent.glob(dest.name + ".*-*"):
        kind, _, pid = path.name[len(dest.name) + 1 :].partition("-")
        if kind not in ("new", "old") or not pid.isdigit() or int(pid) == os.getpid() or _running(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _build_staging(staging: Path, uid: int, home: str) -> None:
    staging.mkdir(mode=0o755)
    for name in _ETC:
        source = Path("/etc") / name
        with contextlib.suppress(FileNotFoundError):
            _copy_etc_entry(source, staging / name)
    with contextlib.suppress(OSError):  # resolv.conf is often a link into /run: copy its contents
        shutil.copyfile("/etc/resolv.conf", staging / "resolv.conf")
    if (staging / "ssl" / "private").is_dir():
        shutil.rmtree(staging / "ssl" / "private")
    contents = {
        "passwd": f"root:x:0:0:root:/root:/bin/sh\nsandbox:x:{uid}:{uid}:sandbox:{home}:/bin/bash\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        "group": f"root:x:0:\nsandbox:x:{uid}:\nnogroup:x:65534:\n",
        "hosts": "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        "hostname": "sandbox\n",
    }
    for name, text in contents.items():
        (staging / name).write_text(text)
        os.chmod(staging / name, 0o644)
    os.chmod(staging, 0o755)  # noqa: S103 - only world-readable files were copied

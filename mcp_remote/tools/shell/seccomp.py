"""The jail's system-call filter: the calls a sandboxed command has no use for are refused (EPERM).

The namespaces, the unprivileged uid and `--disable-userns` already take away what these calls
would do with privilege; the filter closes the kernel interfaces that stay reachable without it
and have been the way out of containers (io_uring, BPF, perf events, userfaultfd, kernel
keyrings, which are not per sandbox) and refuses the administrative ones outright. The list
follows Docker's default profile where that refuses a call to everyone, and leaves ptrace,
personality and the NUMA calls, which debuggers, emulators and runtimes use, allowed.

The filter is compiled once by libseccomp (the library Docker, podman and systemd use; it knows
each architecture's numbers, and a call made through another architecture's ABI, such as
i386's `int 0x80` or x32 on x86_64, kills the process instead of slipping past). It is read
through ctypes: five calls, no Python binding to keep up to date. bwrap installs it
(`--seccomp FD`) in the sandbox just before the command starts, after its own setup, and
every process the command starts inherits it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from dataclasses import dataclass

__all__ = ["DENIED_SYSCALLS", "Filter", "compile_filter"]

DENIED_SYSCALLS: tuple[str, ...] = (
    # Kernel modules, kexec, reboot, swap, the clock, accounting, quotas, the kernel log.
    "init_module", "finit_module", "delete_module", "create_module", "query_module",
    "get_kernel_syms", "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff",
    "settimeofday", "clock_settime", "clock_adjtime", "stime", "acct", "quotactl", "quotactl_fd",
    "nfsservctl", "sysfs", "_sysctl", "ustat", "uselib", "lookup_dcookie", "syslog", "vhangup",
    # Mounts and namespaces: the sandbox's own are in place before the filter applies.
    "mount", "umount", "umount2", "pivot_root", "chroot", "fsopen", "fsconfig", "fsmount",
    "fspick", "move_mount", "open_tree", "mount_setattr", "unshare", "setns",
    # Kernel keyrings: shared with the host's user, not per sandbox.
    "add_key", "request_key", "keyctl",
    # Large kernel interfaces with a history of escapes.
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    # File handles, which reach files by inode rather than by path; I/O ports; vm86; kcmp.
    "open_by_handle_at", "name_to_handle_at", "ioperm", "iopl", "vm86", "vm86old", "kcmp",
)  # fmt: skip

_ALLOW = 0x7FFF0000
_ERRNO = 0x00050000
_NR_SCMP_ERROR = -1


@dataclass(frozen=True, slots=True)
class Filter:
    """A compiled filter (`program`, classic BPF as bwrap reads it), or why there is none."""

    program: bytes | None
    refused: int = 0
    problem: str | None = None

    def describe(self) -> str:
        if self.program is None:
            return f"none: {self.problem}"
        return f"{self.refused} system calls refused (EPERM)"


def compile_filter(denied: tuple[str, ...] = DENIED_SYSCALLS) -> Filter:
    """Compile `denied` for this machine's architecture (names it does not have are skipped)."""
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError:
        return Filter(None, problem="libseccomp is not installed (Debian: apt-get install libseccomp2)")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p,
    ]  # fmt: skip
    lib.seccomp_export_bpf.restype = ctypes.c_int
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.restype = None
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(_ALLOW)
    if not ctx:
        return Filter(None, problem="libseccomp could not start a filter")
    try:
        refused = 0
        for syscall in denied:
            number = lib.seccomp_syscall_resolve_name(syscall.encode())
            if number == _NR_SCMP_ERROR:
                continue  # not a call libseccomp knows
            rc = lib.seccomp_rule_add_array(ctx, _ERRNO | errno.EPERM, number, 0, None)
            if rc < 0:
                return Filter(None, problem=f"libseccomp refused the rule for {syscall}: {os.strerror(-rc)}")
            refused += number >= 0  # negative: not on this architecture (libseccomp ignores it)
        fd = os.memfd_create("mcphub-seccomp", os.MFD_CLOEXEC)
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc < 0:
                return Filter(None, problem=f"libseccomp could not export the filter: {os.strerror(-rc)}")
            program = os.pread(fd, os.fstat(fd).st_size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)
    return Filter(program, refused)

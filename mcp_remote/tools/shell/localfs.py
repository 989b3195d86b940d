"""A workspace on the hub's own disk, reached only through file descriptors.

The hub may run as root while the files belong to a sandbox, so every path is resolved by the
kernel relative to the workspace's directory fd with `openat2(RESOLVE_BENEATH | RESOLVE_NO_XDEV |
RESOLVE_NO_MAGICLINKS)`: `..` above the workspace, absolute symlinks and symlinks that lead out all
fail with EXDEV, atomically. Where openat2 is missing (Linux < 5.6) a component-by-component walk
that refuses every symlink and `..` takes its place. Files are opened non-blocking (a FIFO cannot
stall the hub) and must be regular files; written files and directories are given to the sandbox's
uid so its commands can change them.
"""

from __future__ import annotations

import asyncio
import builtins
import ctypes
import errno
import os
import posixpath
import secrets
import stat
from collections.abc import Iterator

from mcp_local.errors import ToolError

from .workspace import FileChunk, ListEntry, WriteOutcome, entry_kind, relative_path

__all__ = ["LocalWorkspace", "open_beneath"]

_SYS_OPENAT2 = 437  # the same number on every architecture (asm-generic table, Linux 5.6)
_RESOLVE_NO_XDEV = 0x01
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08
_RESOLVE = _RESOLVE_BENEATH | _RESOLVE_NO_XDEV | _RESOLVE_NO_MAGICLINKS

_SKIP_DIRS = frozenset({".git", ".hg", ".svn"})


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_have_openat2: bool | None = None


def _openat2(dirfd: int, path: str, flags: int, mode: int) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0, _RESOLVE)
    for _ in range(8):  # EAGAIN: a concurrent rename raced the lookup; the kernel asks us to retry
        fd = _libc.syscall(
            ctypes.c_long(_SYS_OPENAT2),
            ctypes.c_int(dirfd),
            ctypes.c_char_p(os.fsencode(path)),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err != errno.EAGAIN:
            raise OSError(err, os.strerror(err), path)
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), path)


def _walk_nofollow(dirfd: int, path: str, flags: int, mode: int) -> int:
    """The fallback: one component at a time, no symlinks, no `..`."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise OSError(errno.EXDEV, "'..' is not supported without openat2", path)
    current = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current)
            os.close(current)
            current = nxt
        if not parts:
            return os.open(".", flags | os.O_CLOEXEC, dir_fd=current)
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=current)
    finally:
        os.close(current)


def open_beneath(dirfd: int, path: str, flags: int, mode: int = 0o644) -> int:
    """Open `path` relative to `dirfd`, never leaving it (EXDEV when it would)."""
    global _have_openat2
    if _have_openat2 is not False:
        try:
            fd = _openat2(dirfd, path, flags, mode)
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                raise
            _have_openat2 = False
        else:
            _have_openat2 = True
            return fd
    return _walk_nofollow(dirfd, path, flags, mode)


class LocalWorkspace:
    """A directory on this machine, seen by the sandbox at `mount`."""

    def __init__(self, root: str, mount: str, *, owner: tuple[int, int] | None = None) -> None:
        self.root = root
        self.mount = mount
        self._owner = owner
        self._root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)

    def close(self) -> None:
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    def _failure(self, path: str, exc: OSError) -> ToolError:
        code = exc.errno
        if code in (errno.EXDEV, errno.ELOOP):
            return ToolError(
                f"path {path[:200]!r} leads outside the workspace (through '..' or a symlink); refused"
            )
        reason = {
            errno.ENOENT: "no such file or directory",
            errno.ENOTDIR: "a part of the path is not a directory",
            errno.EISDIR: "is a directory",
            errno.EACCES: "permission denied",
            errno.EPERM: "permission denied",
            errno.ENOSPC: "no space left on the device",
            errno.EFBIG: "file too large",
            errno.ENAMETOOLONG: "name too long",
            errno.EEXIST: "already exists",
            errno.ENOTEMPTY: "directory not empty",
        }.get(code or 0, exc.strerror or "failed")
        return ToolError(f"{path[:200]}: {reason}")

    def _open(self, path: str, rel: str, flags: int, mode: int = 0o644) -> int:
        try:
            return open_beneath(self._root_fd, rel, flags, mode)
        except OSError as exc:
            raise self._failure(path, exc) from None

    # --- read ---------------------------------------------------------------------------------

    async def read(self, path: str, offset: int, limit: int) -> FileChunk:
        rel = relative_path(path, self.mount)
        return await asyncio.to_thread(self._read, path, rel, offset, limit)

    def _read(self, path: str, rel: str, offset: int, limit: int) -> FileChunk:
        fd = self._open(path, rel, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise ToolError(f"{path[:200]}: is a directory; use fs_list")
            if not stat.S_ISREG(st.st_mode):
                raise ToolError(f"{path[:200]}: not a regular file ({entry_kind(st.st_mode)}); refused")
            data = os.pread(fd, limit, offset) if offset < st.st_size else b""
            return FileChunk(rel, st.st_size, offset, data)
        finally:
            os.close(fd)

    # --- write --------------------------------------------------------------------------------

    async def write(self, path: str, data: bytes, *, append: bool, make_parents: bool) -> WriteOutcome:
        rel = relative_path(path, self.mount)
        if rel == ".":
            raise ToolError(f"{path[:200]}: is the workspace directory, not a file")
        return await asyncio.to_thread(self._write, path, rel, data, append, make_parents)

    def _give(self, name: str, dir_fd: int) -> None:
        if self._owner is not None:
            os.chown(name, *self._owner, dir_fd=dir_fd, follow_symlinks=False)

    def _parent(self, path: str, parent: str, make_parents: bool) -> int:
        flags = os.O_PATH | os.O_DIRECTORY
        try:
            return open_beneath(self._root_fd, parent, flags)
        except OSError as exc:
            if exc.errno != errno.ENOENT or not make_parents:
                raise self._failure(path, exc) from None
        current = os.open(".", flags | os.O_CLOEXEC, dir_fd=self._root_fd)
        try:
            for part in parent.split("/"):
                try:
                    os.mkdir(part, 0o755, dir_fd=current)
                    self._give(part, current)
                except FileExistsError:
                    pass
                nxt = open_beneath(current, part, flags)
                os.close(current)
                current = nxt
        except OSError as exc:
            os.close(current)
            raise self._failure(path, exc) from None
        return current

    def _write(self, path: str, rel: str, data: bytes, append: bool, make_parents: bool) -> WriteOutcome:
        parent, name = posixpath.split(rel)
        parent_fd = self._parent(path, parent or ".", make_parents)
        try:
            try:
                existing: os.stat_result | None = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            except FileNotFoundError:
                existing = None
            if existing is not None and stat.S_ISLNK(existing.st_mode):
                raise ToolError(f"{path[:200]}: is a symlink; write to the file it points to instead")
            if existing is not None and not stat.S_ISREG(existing.st_mode):
                raise ToolError(
                    f"{path[:200]}: exists and is not a regular file ({entry_kind(existing.st_mode)})"
                )
            if append and existing is not None:
                fd = self._open(path, rel, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK, 0)
                try:
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        raise ToolError(f"{path[:200]}: not a regular file")
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    size = os.fstat(fd).st_size
                finally:
                    os.close(fd)
                return WriteOutcome(rel, size, created=False)
            # Whole-file writes are atomic: a new file in the same directory, renamed over the old.
            tmp = f".mcphub-write-{secrets.token_hex(8)}"
            mode = stat.S_IMODE(existing.st_mode) if existing is not None else 0o644
            fd = os.open(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                mode,
                dir_fd=parent_fd,
            )
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fchmod(fd, mode)
                if self._owner is not None:
                    os.fchown(fd, *self._owner)
            except OSError as exc:
                os.close(fd)
                os.unlink(tmp, dir_fd=parent_fd)
                raise self._failure(path, exc) from None
            os.close(fd)
            os.rename(tmp, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
            return WriteOutcome(rel, len(data), created=existing is None)
        except OSError as exc:
            raise self._failure(path, exc) from None
        finally:
            os.close(parent_fd)

    # --- list and search ----------------------------------------------------------------------

    async def list(self, path: str, *, recursive: bool, max_entries: int) -> tuple[list[ListEntry], bool]:
        rel = relative_path(path, self.mount)
        return await asyncio.to_thread(self._list, path, rel, recursive, max_entries)

    def _open_dir(self, path: str, rel: str) -> int:
        fd = self._open(path, rel, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK)
        return fd

    def _walk(
        self, dir_fd: int, prefix: str, recursive: bool
    ) -> Iterator[tuple[str, str, os.stat_result, int]]:
        """(relative path, name, lstat, dir fd) of every entry, depth first, symlinks not followed."""
        for name in sorted(os.listdir(dir_fd)):
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                continue
            rel = f"{prefix}{name}"
            yield rel, name, st, dir_fd
            if recursive and stat.S_ISDIR(st.st_mode) and name not in _SKIP_DIRS:
                try:
                    sub = os.open(
                        name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
                    )
                except OSError:
                    continue
                try:
                    yield from self._walk(sub, rel + "/", recursive)
                finally:
                    os.close(sub)

    def _list(
        self, path: str, rel: str, recursive: bool, max_entries: int
    ) -> tuple[builtins.list[ListEntry], bool]:
        fd = self._open_dir(path, rel)
        base = "" if rel == "." else rel + "/"
        entries: builtins.list[ListEntry] = []
        try:
            for entry_rel, name, st, dir_fd in self._walk(fd, "", recursive):
                if len(entries) >= max_entries:
                    return entries, False
                target = None
                if stat.S_ISLNK(st.st_mode):
                    try:
                        target = os.readlink(name, dir_fd=dir_fd)
                    except OSError:
                        target = None
                kind = entry_kind(st.st_mode)
                entries.append(ListEntry(base + entry_rel, kind, st.st_size, st.st_mtime, target))
        except OSError as exc:
            raise self._failure(path, exc) from None
        finally:
            os.close(fd)
        return entries, True

    async def resolve_dir(self, path: str) -> str:
        rel = relative_path(path, self.mount)

        def check() -> None:
            os.close(self._open_dir(path, rel))

        await asyncio.to_thread(check)
        return self.mount if rel == "." else posixpath.join(self.mount, rel)

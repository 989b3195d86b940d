"""A principal's workspace (`<state_dir>/workspaces/<principal>`, as the shell pack has it)."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from mcp_local.errors import ToolError

from ..workspaces import workspace_dir_name

__all__ = [
    "UPLOAD_LIMIT",
    "read_for_upload",
    "resolve_in_workspace",
    "safe_file_name",
    "save_download",
    "workspace_dir",
]

UPLOAD_LIMIT = 50 * 1024 * 1024
"""Bytes one upload may carry in all: Playwright's own limit for files given by content."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")


def workspace_dir(root: Path, principal: str) -> Path:
    """The principal's workspace directory (not created): the shell pack's, by the same rule."""
    if principal in ("", ".", "..") or "/" in principal or "\x00" in principal:
        raise ToolError(f"the principal name {principal!r} cannot name a workspace")
    return root / workspace_dir_name(principal)


def resolve_in_workspace(workspace: Path, path: str) -> Path:
    """An existing regular file inside `workspace`, from a path relative to it or absolute inside it.

    `..` components are refused outright; symbolic links are followed and the
    result must still lie inside the workspace.
    """
    if "\x00" in path:
        raise ToolError("a file path may not contain NUL characters")
    pure = PurePosixPath(path)
    if ".." in pure.parts:
        raise ToolError(f"{path!r}: '..' is not allowed; give a path inside your workspace")
    base = workspace.resolve()
    candidate = Path(path) if pure.is_absolute() else base / path
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        raise ToolError(f"{path!r}: no such file in your workspace ({base})") from None
    if not resolved.is_relative_to(base):
        raise ToolError(f"{path!r} is outside your workspace ({base}); only files inside it can be uploaded")
    if not resolved.is_file():
        raise ToolError(f"{path!r} is not a regular file")
    return resolved


def safe_file_name(suggested: str, fallback: str = "download") -> str:
    """A file name without directories or unusual characters, derived from a page's suggestion."""
    name = _UNSAFE.sub("_", PurePosixPath(suggested.replace("\\", "/")).name).strip(" .")
    return (name or fallback)[:128]


def read_for_upload(
    workspace: Path, paths: Sequence[str], limit: int = UPLOAD_LIMIT
) -> list[tuple[str, bytes]]:
    """(name, contents) of files inside `workspace`, each read from a descriptor checked to be in it.

    A checked path handed to Chromium is read when the page reads the file, which the page
    decides: by then the agent, who owns its workspace, may have swapped a directory on that
    path for a link to a file of the hub's. Read now, from a descriptor whose own path is
    checked, the upload is what was checked.
    """
    base = workspace.resolve()
    files: list[tuple[str, bytes]] = []
    left = limit
    for path in paths:
        resolved = resolve_in_workspace(workspace, path)
        data = _read_checked(base, resolved, path, left, limit)
        left -= len(data)
        files.append((resolved.name, data))
    return files


def _read_checked(base: Path, resolved: Path, path: str, budget: int, limit: int) -> bytes:
    too_big = f"{path!r}: the files of one upload may hold {limit / (1024 * 1024):g} MB in all"
    try:
        # O_NONBLOCK: a FIFO swapped in after the check must not hang the call.
        fd = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ToolError(f"{path!r} became a symbolic link after it was checked") from None
        raise ToolError(f"{path!r}: cannot open it: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not Path(os.readlink(f"/proc/self/fd/{fd}")).is_relative_to(base):
            raise ToolError(f"{path!r} is outside your workspace ({base}); only its files can be uploaded")
        if not stat.S_ISREG(info.st_mode):
            raise ToolError(f"{path!r} is not a regular file")
        if info.st_size > budget:
            raise ToolError(too_big)
        data = f.read(budget + 1)
    if len(data) > budget:
        raise ToolError(too_big)
    return data


def save_download(workspace: Path, source: Path, name: str) -> str:
    """Copy `source` (Playwright's copy of a download) to `downloads/` in `workspace` as `name`,
    or `name-1`, `name-2`... if taken; returns the name used.

    The agent owns its workspace, so `downloads` or a file name in it may be a link it planted
    to anywhere on the hub's host (/etc/cron.d, say): the folder is opened without following
    links, and the file is created O_EXCL|O_NOFOLLOW in it, so a link is never written through.
    """
    workspace.mkdir(parents=True, exist_ok=True, mode=0o700)
    top = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        # A hub running as root gives what it creates to the workspace's owner (the shell pack's
        # sandbox uid), or the sandbox could not open its own downloads.
        owner = os.fstat(top)
        give = os.geteuid() == 0 and owner.st_uid != 0
        with contextlib.suppress(FileExistsError):
            os.mkdir("downloads", 0o700, dir_fd=top)
        try:
            folder = os.open(
                "downloads", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=top
            )
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise ToolError("downloads in your workspace is not a directory (a symbolic link?)") from None
            raise
        if give and os.fstat(folder).st_uid == 0:
            os.fchown(folder, owner.st_uid, owner.st_gid)
    finally:
        os.close(top)
    try:
        stem, dot, ext = name.rpartition(".")
        for n in range(1000):
            candidate = name if n == 0 else (f"{stem}-{n}.{ext}" if dot else f"{name}-{n}")
            try:
                fd = os.open(
                    candidate,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o644,
                    dir_fd=folder,
                )
            except FileExistsError:  # a file, or a link (O_EXCL never follows one)
                continue
            if give:
                os.fchown(fd, owner.st_uid, owner.st_gid)
            with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            return candidate
        raise ToolError(f"downloads in your workspace already holds {name} and 999 numbered copies")
    finally:
        os.close(folder)

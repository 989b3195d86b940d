"""A principal's workspace of files, and the rules that keep fs_* calls inside it.

A path given to an fs_* tool is relative to the workspace, or absolute under the path the sandbox
sees the workspace at (`/workspace` in the jail). Anything else is refused before any file is
touched: absolute paths elsewhere, `..` that climbs out, and prefix tricks (`/workspace-evil`
is not under `/workspace`). Symlinks are the files' own business, so the local implementation
resolves every path in the kernel with `openat2(RESOLVE_BENEATH)`: a symlink or `..` that leads out
of the workspace fails there, with no window between a check and the use (see localfs.py).
"""

from __future__ import annotations

import posixpath
import stat
from dataclasses import dataclass
from typing import Protocol

from mcp_local.errors import ToolError

from ..workspaces import workspace_dir_name

__all__ = [
    "FileChunk",
    "ListEntry",
    "Workspace",
    "WriteOutcome",
    "entry_kind",
    "outside",
    "relative_path",
    "workspace_dir_name",
]


def outside(path: str, mount: str) -> ToolError:
    return ToolError(
        f"path {path[:200]!r} is outside the workspace; give a path relative to the workspace "
        f"or under {mount}"
    )


def entry_kind(mode: int | None) -> str:
    """`file`, `dir`, `symlink` or `other`, from a stat mode (SFTP may not send one)."""
    mode = mode or 0
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def relative_path(path: str, mount: str) -> str:
    """The workspace-relative form of `path` ("." for the workspace itself), or a ToolError.

    `mount` is where the sandbox sees the workspace (absolute, no trailing slash). The result
    never starts with `/` and never climbs above the workspace lexically; symlinks are checked
    by whoever opens it.
    """
    if "\0" in path:
        raise ToolError("path contains a NUL character")
    if not path:
        raise ToolError("path is empty; use '.' for the workspace itself")
    rest = path
    if path.startswith("/"):
        normal = posixpath.normpath(path)
        if normal == mount:
            return "."
        if not normal.startswith(mount.rstrip("/") + "/"):
            raise outside(path, mount)
        rest = normal[len(mount.rstrip("/")) + 1 :]
    normal = posixpath.normpath(rest)
    if normal == ".." or normal.startswith("../") or normal.startswith("/"):
        raise outside(path, mount)
    return normal


@dataclass(frozen=True, slots=True)
class FileChunk:
    path: str
    size: int
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    path: str
    size: int
    created: bool


@dataclass(frozen=True, slots=True)
class ListEntry:
    path: str
    """Relative to the workspace."""
    kind: str  # "file" | "dir" | "symlink" | "other"
    size: int
    mtime: float
    target: str | None = None
    """Where a symlink points (as written; not followed)."""


class Workspace(Protocol):
    """Files of one principal. Paths are as given by the model; results use workspace-relative paths."""

    mount: str
    """Where commands in the sandbox see the workspace (`/workspace`, or the remote directory)."""

    async def read(self, path: str, offset: int, limit: int) -> FileChunk: ...

    async def write(self, path: str, data: bytes, *, append: bool, make_parents: bool) -> WriteOutcome: ...

    async def list(self, path: str, *, recursive: bool, max_entries: int) -> tuple[list[ListEntry], bool]:
        """Entries under `path` and whether the listing is complete."""
        ...

    async def resolve_dir(self, path: str) -> str:
        """The directory as commands in the sandbox see it, once checked to be inside the workspace."""
        ...

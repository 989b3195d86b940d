"""A principal's workspace (`<state_dir>/workspaces/<principal>`, as the shell pack has it)."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from mcp_local.errors import ToolError

__all__ = ["resolve_in_workspace", "safe_file_name", "workspace_dir"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")


def workspace_dir(root: Path, principal: str) -> Path:
    """The principal's workspace directory (not created)."""
    if principal in ("", ".", "..") or "/" in principal or "\x00" in principal:
        raise ToolError(f"the principal name {principal!r} cannot name a workspace")
    return root / principal


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

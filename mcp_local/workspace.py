"""The workspace root of a sandbox, and safe resolution of the paths tools are given inside it.

A path argument is always relative to the root (a leading `/` is read as the
root itself, so `/src/app.py` and `src/app.py` name the same file). `..`
components are refused outright; symbolic links are followed, but wherever a
path ends up it must still be inside the root. The containment test compares
path components, never string prefixes, so `/workspace2` is not inside
`/workspace`.

The sidecar runs as the same user as the agent next to it, so this is not a
privilege boundary inside the sandbox; it keeps tools (and the hub's callers
reaching them) to the directory the image's manifest names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import ConfigError, ToolError

__all__ = ["Workspace"]


@dataclass(frozen=True, slots=True)
class Workspace:
    """A directory tools may reach into; `root` is absolute and has no symbolic links."""

    root: Path

    @classmethod
    def at(cls, path: str | Path, *, key: str = "workspace") -> Workspace:
        resolved = Path(os.path.realpath(Path(path).expanduser()))
        if not resolved.is_dir():
            raise ConfigError(f"{key}: {path} is not a directory (expected the workspace root)")
        return cls(resolved)

    def resolve(self, relative: str, *, must_exist: bool = True) -> Path:
        """The real path of `relative` inside the root; raises ToolError naming what is wrong."""
        if "\x00" in relative:
            raise ToolError("path contains a NUL byte")
        pure = PurePosixPath(relative.strip() or ".")
        if ".." in pure.parts:
            raise ToolError(f"path {relative!r}: '..' is not allowed; give a path inside the workspace")
        parts = [p for p in pure.parts if p not in ("/", ".")]
        candidate = self.root.joinpath(*parts)
        real = Path(os.path.realpath(candidate))
        if not self.contains(real):
            raise ToolError(f"path {relative!r} leads outside the workspace (through a symbolic link)")
        if must_exist and not os.path.lexists(real):
            raise ToolError(f"path {relative!r} does not exist in the workspace")
        return real

    def contains(self, path: Path) -> bool:
        return path == self.root or self.root in path.parents

    def relative(self, path: Path) -> str:
        """How a tool shows `path` to the model: relative to the root, `.` for the root itself."""
        rel = path.relative_to(self.root).as_posix()
        return rel or "."

"""Which mcphub this is: the package's version (`mcp_local.version`, checked against the installed
distribution by a test) and, run from a git checkout, its commit.

Both versions of an upgrade said 0.1.0 everywhere, so an operator could not tell which code a
hub or a CLI ran. The commit is read from the checkout's `.git` files (a few small reads, on
demand: no `git` process, nothing at import).
"""

from __future__ import annotations

from pathlib import Path

from mcp_local.version import VERSION

__all__ = ["VERSION", "checkout_commit", "version_text"]

_ROOT = Path(__file__).resolve().parents[1]


def _git_dir(root: Path) -> Path | None:
    """The git directory of a checkout at `root`: `.git`, or the one a worktree's `.git` file names."""
    dot_git = root / ".git"
    if dot_git.is_dir():
        return dot_git
    try:
        text = dot_git.read_text().strip()
    except OSError:
        return None
    if not text.startswith("gitdir:"):
        return None
    found = Path(text.removeprefix("gitdir:").strip())
    return found if found.is_absolute() else (root / found).resolve()


def _ref(git_dir: Path, ref: str) -> str | None:
    """A ref's commit: its loose file (in a worktree's common directory too), else `packed-refs`."""
    places = [git_dir]
    try:
        common = (git_dir / "commondir").read_text().strip()
        places.append((git_dir / common).resolve())
    except OSError:
        pass
    for place in places:
        try:
            return (place / ref).read_text().strip()
        except OSError:
            pass
        try:
            for line in (place / "packed-refs").read_text().splitlines():
                commit, _, name = line.partition(" ")
                if name == ref:
                    return commit
        except OSError:
            pass
    return None


def checkout_commit(root: Path = _ROOT) -> str | None:
    """The commit checked out at `root` (12 hex digits), or None outside a git checkout."""
    git_dir = _git_dir(root)
    if git_dir is None:
        return None
    try:
        head = (git_dir / "HEAD").read_text().strip()
    except OSError:
        return None
    commit = _ref(git_dir, head.removeprefix("ref:").strip()) if head.startswith("ref:") else head
    if commit is None or len(commit) < 12 or any(c not in "0123456789abcdef" for c in commit):
        return None
    return commit[:12]


def version_text() -> str:
    """`mcphub 0.1.0`, with `(commit 0123456789ab)` when run from a git checkout."""
    commit = checkout_commit()
    return f"mcphub {VERSION}" + (f" (commit {commit})" if commit else "")

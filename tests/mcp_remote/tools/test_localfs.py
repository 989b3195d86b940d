"""Path rules and kernel-checked resolution of local workspaces, without a hub."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import mcp_remote.tools.shell.localfs as localfs
from mcp_local.errors import ToolError
from mcp_remote.tools.shell.localfs import LocalWorkspace, open_beneath
from mcp_remote.tools.shell.workspace import relative_path, workspace_dir_name

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (".", "."),
        ("a/b", "a/b"),
        ("a//b/./c/", "a/b/c"),
        ("a/../b", "b"),
        ("/workspace", "."),
        ("/workspace/", "."),
        ("/workspace/x/y", "x/y"),
        ("/workspace/x/../y", "y"),
    ],
)
def test_paths_inside(path: str, expected: str) -> None:
    assert relative_path(path, "/workspace") == expected


@pytest.mark.parametrize(
    "path",
    [
        "..",
        "../x",
        "a/../../x",
        "/",
        "/etc/passwd",
        "/workspace-evil",
        "/workspace-evil/x",
        "/workspace/../x",
        "/workspaces",
    ],
)
def test_paths_outside(path: str) -> None:
    with pytest.raises(ToolError, match="outside the workspace"):
        relative_path(path, "/workspace")


def test_principal_names_make_safe_directory_names() -> None:
    assert workspace_dir_name("agent-a") == "agent-a"
    assert workspace_dir_name("bot@example.com") == "bot@example.com"
    for tricky in (".", "..", ".hidden", "..x"):
        name = workspace_dir_name(tricky)
        assert name.startswith("~") and "/" not in name and name not in (".", "..")
    assert len({workspace_dir_name(n) for n in (".", "..", ".x", "x")}) == 4


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "file.txt").write_text("inside\n")
    (tmp_path / "outside.txt").write_text("secret\n")
    (root / "abs").symlink_to(tmp_path / "outside.txt")
    (root / "rel").symlink_to("../outside.txt")
    (root / "ok").symlink_to("sub/file.txt")
    (root / "loop").symlink_to("loop")
    return root


@pytest.mark.parametrize("use_openat2", [True, False])
def test_resolution_never_leaves_the_root(
    tree: Path, use_openat2: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(localfs, "_have_openat2", None if use_openat2 else False)
    root_fd = os.open(tree, os.O_PATH | os.O_DIRECTORY)
    try:
        fd = open_beneath(root_fd, "sub/file.txt", os.O_RDONLY)
        assert os.read(fd, 100) == b"inside\n"
        os.close(fd)
        for escape in ("abs", "rel", "../outside.txt", "sub/../../outside.txt", "loop"):
            with pytest.raises(OSError) as info:
                os.close(open_beneath(root_fd, escape, os.O_RDONLY))
            assert info.value.errno in (errno.EXDEV, errno.ELOOP), escape
        if use_openat2:  # a symlink that stays inside is followed; the fallback refuses all symlinks
            fd = open_beneath(root_fd, "ok", os.O_RDONLY)
            assert os.read(fd, 100) == b"inside\n"
            os.close(fd)
    finally:
        os.close(root_fd)


async def test_a_replaced_directory_cannot_redirect_a_write(tree: Path) -> None:
    """A directory swapped for a symlink between calls: the next write is refused, not redirected."""
    ws = LocalWorkspace(str(tree), "/workspace")
    try:
        await ws.write("sub/new.txt", b"one", append=False, make_parents=False)
        (tree / "sub").rename(tree / "sub-moved")
        (tree / "sub").symlink_to(tree.parent)
        with pytest.raises(ToolError, match="outside the workspace"):
            await ws.write("sub/new.txt", b"two", append=False, make_parents=False)
        assert not (tree.parent / "new.txt").exists()
        with pytest.raises(ToolError, match="outside the workspace"):
            await ws.read("sub/outside.txt", 0, 100)
    finally:
        ws.close()


async def test_whole_file_writes_are_atomic_and_keep_the_mode(tree: Path) -> None:
    ws = LocalWorkspace(str(tree), "/workspace")
    try:
        target = tree / "sub" / "file.txt"
        target.chmod(0o600)
        done = await ws.write("sub/file.txt", b"replaced\n", append=False, make_parents=False)
        assert done.created is False and target.read_text() == "replaced\n"
        assert target.stat().st_mode & 0o777 == 0o600
        assert not [p for p in (tree / "sub").iterdir() if p.name.startswith(".mcphub-write")]
    finally:
        ws.close()

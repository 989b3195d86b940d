"""The files pack: workspace-rooted read, write, list and search, and paths that try to leave the root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.packs import PackUnderTest, make_pack, text

pytestmark = pytest.mark.anyio


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    (ws / "src").mkdir(parents=True)
    (ws / "src" / "app.py").write_text("import os\nprint('hello')\n")
    (ws / "README.md").write_text("# Project\nHello world\n")
    (tmp_path / "secret.txt").write_text("outside the workspace")
    (tmp_path / "ws2").mkdir()
    (tmp_path / "ws2" / "other.txt").write_text("a sibling whose name starts like the workspace")
    return ws


@pytest.fixture
def files(workspace: Path) -> PackUnderTest:
    return make_pack("files", {}, workspace)


async def test_reads_lists_and_searches(files: PackUnderTest) -> None:
    assert text(await files.call("files_read", path="src/app.py")) == "import os\nprint('hello')\n"
    assert text(await files.call("files_read", path="/README.md")).startswith("# Project")
    listing = await files.call("files_list", recursive=True)
    assert listing.structured is not None
    assert {e["path"] for e in listing.structured["entries"]} == {"README.md", "src", "src/app.py"}
    found = await files.call("files_search", pattern="hello", case_sensitive=False)
    assert found.structured is not None
    assert [(m["path"], m["line"]) for m in found.structured["matches"]] == [
        ("README.md", 2),
        ("src/app.py", 2),
    ]


async def test_a_large_file_is_read_in_pieces(workspace: Path) -> None:
    (workspace / "big.txt").write_text("x" * 100)
    files = make_pack("files", {"max_read_bytes": 40}, workspace)
    first = text(await files.call("files_read", path="big.txt"))
    assert first.startswith("x" * 40) and "offset=40" in first and "100 bytes" in first
    last = text(await files.call("files_read", path="big.txt", offset=80))
    assert last == "x" * 20


async def test_writes_create_directories_and_append(files: PackUnderTest, workspace: Path) -> None:
    result = await files.call("files_write", path="out/notes.txt", content="one\n")
    assert not result.is_error, text(result)
    await files.call("files_write", path="out/notes.txt", content="two\n", append=True)
    assert (workspace / "out" / "notes.txt").read_text() == "one\ntwo\n"
    assert files.tools["files_write"].annotations.destructive is True
    assert files.tools["files_read"].annotations.read_only is True


@pytest.mark.parametrize("path", ["../secret.txt", "src/../../secret.txt", "../ws2/other.txt"])
async def test_dot_dot_is_refused(files: PackUnderTest, path: str) -> None:
    result = await files.call("files_read", path=path)
    assert result.is_error and "'..' is not allowed" in text(result)


async def test_symlink_escapes_are_refused_for_reading_and_writing(
    files: PackUnderTest, workspace: Path, tmp_path: Path
) -> None:
    os.symlink(tmp_path / "secret.txt", workspace / "link.txt")
    os.symlink(tmp_path, workspace / "up")
    os.symlink(tmp_path / "ws2", workspace / "sibling")  # the prefix trick: /…/ws2 starts with /…/ws
    for path in ("link.txt", "up/secret.txt", "sibling/other.txt"):
        result = await files.call("files_read", path=path)
        assert result.is_error and "outside the workspace" in text(result), path
    result = await files.call("files_write", path="up/planted.txt", content="x")
    assert result.is_error and "outside the workspace" in text(result)
    assert not (tmp_path / "planted.txt").exists()
    listing = await files.call("files_list", path="up")
    assert listing.is_error


async def test_a_symlink_inside_the_workspace_is_followed(files: PackUnderTest, workspace: Path) -> None:
    os.symlink(workspace / "src" / "app.py", workspace / "main.py")
    assert "print('hello')" in text(await files.call("files_read", path="main.py"))


async def test_a_read_only_workspace_has_no_write_tool(workspace: Path) -> None:
    files = make_pack("files", {"writable": False}, workspace)
    assert "files_write" not in files.tools


async def test_binary_files_are_not_dumped(files: PackUnderTest, workspace: Path) -> None:
    (workspace / "blob.bin").write_bytes(b"\x00\x01\x02" * 10)
    result = await files.call("files_read", path="blob.bin")
    assert result.is_error and "binary" in text(result)


def test_bad_options_name_the_key(workspace: Path) -> None:
    from mcp_local.errors import ConfigError

    with pytest.raises(ConfigError, match=r"packs\[files\]\.options\.max_read: unknown option"):
        make_pack("files", {"max_read": 10}, workspace)
    with pytest.raises(ConfigError, match=r"packs\[files\]\.options\.root: .* is not a directory"):
        make_pack("files", {"root": str(workspace / "nope")}, workspace)

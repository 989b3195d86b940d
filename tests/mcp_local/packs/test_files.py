"""The files pack: workspace-rooted read, write, list and search, and paths that try to leave the root."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import anyio
import orjson
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


async def test_pieces_never_cut_a_character(workspace: Path) -> None:
    content = "é€😀 and ascii\n" * 20
    (workspace / "utf8.txt").write_text(content)
    files = make_pack("files", {"max_read_bytes": 6}, workspace)  # 6: the first page cuts 😀
    got, offset = "", 0
    while True:
        piece = text(await files.call("files_read", path="utf8.txt", offset=offset))
        body, _, note = piece.partition("\n[... ")
        assert "\ufffd" not in body, (offset, body)
        got += body
        if not note:
            break
        offset = int(note.split("offset=", 1)[1].split(" ", 1)[0])
    assert got == content


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


async def test_a_fifo_is_refused_not_opened(files: PackUnderTest, workspace: Path) -> None:
    """Opening a FIFO blocks until a writer comes: a read or write of one used to hang its thread."""
    os.mkfifo(workspace / "pipe")
    with anyio.fail_after(10):
        read = await files.call("files_read", path="pipe")
        written = await files.call("files_write", path="pipe", content="x")
    assert read.is_error and "cannot read pipe: it is a FIFO, not a regular file" in text(read)
    assert written.is_error and "cannot write pipe: it is a FIFO, not a regular file" in text(written)
    listing = await files.call("files_list")
    assert listing.structured is not None
    assert {"path": "pipe", "type": "other"} in listing.structured["entries"]


@pytest.mark.parametrize(
    "path", [".git/config", ".git/hooks/pre-commit", "sub/.git/config", ".git", "gitlink/x"]
)
async def test_writes_inside_git_are_refused(files: PackUnderTest, workspace: Path, path: str) -> None:
    """git's configuration can name programs (filters, textconv) that the git tools would run."""
    (workspace / ".git").mkdir()
    (workspace / "gitlink").symlink_to(workspace / ".git")
    result = await files.call("files_write", path=path, content="[core]\n")
    assert result.is_error and "inside .git" in text(result)
    assert not (workspace / ".git" / "config").exists()
    assert not (workspace / ".git" / "x").exists()


async def test_paths_of_any_depth_are_written_listed_and_searched(
    files: PackUnderTest, workspace: Path
) -> None:
    """Creating directories and walking them used to recurse once per level (RecursionError)."""
    deep = "d/" * 1500 + "deep.txt"
    try:
        written = await files.call("files_write", path=deep, content="needle\n")
        assert not written.is_error, text(written)
        listing = await files.call("files_list", recursive=True, glob="deep.txt")
        assert listing.structured is not None
        assert [e["path"] for e in listing.structured["entries"]] == [deep]
        for regex in (False, True):
            found = await files.call("files_search", pattern="needle", regex=regex)
            assert found.structured is not None, text(found)
            assert [m["path"] for m in found.structured["matches"]] == [deep]
    finally:  # shutil.rmtree, which pytest cleans up with, recurses once per level too
        await asyncio.to_thread(subprocess.run, ["rm", "-rf", str(workspace / "d")], check=True)


async def test_regex_search_matches_in_a_child_process(files: PackUnderTest) -> None:
    found = await files.call("files_search", pattern=r"^print\('h.+'\)$", regex=True, glob="*.py")
    assert found.structured == {
        "matches": [{"path": "src/app.py", "line": 2, "text": "print('hello')"}],
        "truncated": False,
    }
    bad = await files.call("files_search", pattern="(", regex=True)
    assert bad.is_error and "not a valid regular expression" in text(bad)


async def test_a_catastrophic_regex_is_stopped_and_other_calls_go_on(workspace: Path) -> None:
    """`(a+)+$` on 40 a's and a '!' runs for ages inside `re`, which holds the GIL: in-process it
    stalled every call of the sidecar, and SIGTERM could not stop it."""
    (workspace / "redos.txt").write_text("a" * 40 + "!\n")
    files = make_pack("files", {"regex_timeout_s": 2}, workspace)
    search = asyncio.ensure_future(files.call("files_search", pattern="^(a+)+$", regex=True))
    read = asyncio.ensure_future(files.call("files_read", path="README.md"))
    done, _ = await asyncio.wait({search, read}, return_when=asyncio.FIRST_COMPLETED)
    assert read in done and text(read.result()).startswith("# Project")
    result = await search
    assert result.is_error and "still matching after 2 s and was stopped" in text(result)


async def test_an_offset_beyond_any_file_is_an_argument_error(files: PackUnderTest) -> None:
    result = await files.call("files_read", path="README.md", offset=1e30)
    assert result.is_error and "is greater than the maximum" in text(result)


async def test_a_name_that_is_not_utf8_is_shown_quoted_and_the_rest_still_listed(workspace: Path) -> None:
    """One file named with a byte that is not UTF-8 made files_list and regex files_search fail
    for the whole workspace ("str is not valid UTF-8: surrogates not allowed"). It is shown
    quoted as git quotes it, alike in the text and the structured result, and takes its quoted
    name back as a path."""
    from mcp_local.wire import result_to_proto

    (workspace / "src").joinpath(os.fsdecode(b"bad\xffname.txt")).write_text("zzz needle\n")
    (workspace / '"quoted".txt').write_text("no needle\n")
    files = make_pack("files", {}, workspace)
    shown = '"src/bad\\377name.txt"'
    for glob in (None, "*.txt"):
        listing = await files.call("files_list", recursive=True, **({"glob": glob} if glob else {}))
        assert not listing.is_error, text(listing)
        assert listing.structured is not None
        paths = {e["path"] for e in listing.structured["entries"]}
        assert shown in paths and '"\\"quoted\\".txt"' in paths, paths
        assert glob or {"README.md", "src/app.py"} <= paths
        assert orjson.loads(text(listing)) == listing.structured  # the text is the same JSON
        result_to_proto(listing)  # protobuf refused the surrogate escapes: nothing went out
    for regex in (False, True):
        found = await files.call("files_search", pattern="needle", regex=regex)
        assert found.structured is not None, text(found)
        assert [m["path"] for m in found.structured["matches"]] == ['"\\"quoted\\".txt"', shown]
        nothing = await files.call("files_search", pattern="zzzqq", regex=regex)
        assert nothing.structured == {"matches": [], "truncated": False}, text(nothing)
    assert text(await files.call("files_read", path=shown)) == "zzz needle\n"
    assert text(await files.call("files_read", path='"\\"quoted\\".txt"')) == "no needle\n"
    from mcp_local.packs.files import quote_name, unquote_name

    for name in ("plain.txt", '"x', os.fsdecode(b"a\x01\xfe\\b")):
        assert unquote_name(quote_name(name)) == name

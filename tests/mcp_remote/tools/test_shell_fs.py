"""fs_read, fs_write, fs_list and fs_search on the jail's workspace, and what they refuse."""

from __future__ import annotations

import base64
import secrets

import pytest

from tests.mcp_remote.tools.conftest import ShellClient, workspace_dir
from tests.support.hub import RunningHub

pytestmark = pytest.mark.anyio


async def test_write_read_append_and_ownership(agent_a: ShellClient, jail_hub: RunningHub) -> None:
    written = await agent_a.call("fs_write", {"path": "docs/readme.md", "content": "# héllo\n"})
    assert not written.is_error, written.text
    assert written.structured == {"path": "docs/readme.md", "size": 9, "created": True}
    host = workspace_dir(jail_hub, "agent-a") / "docs" / "readme.md"
    assert host.read_text() == "# héllo\n"
    owner = workspace_dir(jail_hub, "agent-a").stat().st_uid
    assert host.stat().st_uid == owner and host.parent.stat().st_uid == owner, "the sandbox owns what it gets"
    # ... so commands in the jail can change it.
    more = await agent_a.exec("echo more >> docs/readme.md && cat docs/readme.md")
    assert more.structured and more.structured["stdout"] == "# héllo\nmore\n", more.text
    appended = await agent_a.call(
        "fs_write", {"path": "/workspace/docs/readme.md", "content": "tail\n", "append": True}
    )
    assert not appended.is_error and appended.structured["size"] == 19, appended.text
    read = await agent_a.call("fs_read", {"path": "docs/readme.md"})
    assert read.structured["content"] == "# héllo\nmore\ntail\n" and read.text == "# héllo\nmore\ntail\n"
    page = await agent_a.call("fs_read", {"path": "docs/readme.md", "offset": 2, "limit": 5})
    assert page.structured["content"] == "héll" and page.structured["next_offset"] == 7
    replaced = await agent_a.call("fs_write", {"path": "docs/readme.md", "content": "new\n"})
    assert replaced.structured["created"] is False and host.read_text() == "new\n"


async def test_binary_files_travel_as_base64(agent_a: ShellClient) -> None:
    blob = bytes(range(256))
    await agent_a.call(
        "fs_write", {"path": "blob.bin", "content": base64.b64encode(blob).decode(), "encoding": "base64"}
    )
    assert (await agent_a.exec("od -An -tx1 blob.bin | head -1")).structured["stdout"].split()[:3] == [
        "00",
        "01",
        "02",
    ]
    read = await agent_a.call("fs_read", {"path": "blob.bin"})
    assert read.structured["encoding"] == "base64" and base64.b64decode(read.structured["content"]) == blob


async def test_list_and_search(agent_a: ShellClient) -> None:
    await agent_a.exec(
        "mkdir -p proj/src proj/.git && printf 'alpha\\nBeta\\n' > proj/src/a.py && echo beta > proj/b.txt "
        "&& echo beta > proj/.git/config && ln -sf src/a.py proj/link"
    )

    listing = await agent_a.call("fs_list", {"path": "proj"})
    entries = {e["path"]: e for e in listing.structured["entries"]}
    assert set(entries) == {"proj/.git", "proj/src", "proj/b.txt", "proj/link"}
    assert entries["proj/link"] == {**entries["proj/link"], "type": "symlink", "target": "src/a.py"}
    tree = await agent_a.call("fs_list", {"path": "proj", "recursive": True})
    assert "proj/src/a.py" in {e["path"] for e in tree.structured["entries"]}
    assert "proj/.git/config" not in tree.text
    found = await agent_a.call("fs_search", {"pattern": "beta", "path": "proj", "case_sensitive": False})
    assert sorted((m["path"], m["line"]) for m in found.structured["matches"]) == [
        ("proj/b.txt", 1),
        ("proj/src/a.py", 2),
    ]
    only_py = await agent_a.call(
        "fs_search", {"pattern": "^[aB]", "regex": True, "path": "proj", "glob": "*.py"}
    )
    assert [m["text"] for m in only_py.structured["matches"]] == ["alpha", "Beta"]
    none = await agent_a.call("fs_search", {"pattern": "no such text anywhere"})
    assert none.structured["matches"] == [] and "no matches" in none.text
    bad = await agent_a.call("fs_search", {"pattern": "(unclosed", "regex": True})
    assert bad.is_error and "search failed" in bad.text


@pytest.mark.parametrize(
    "path",
    [
        "../agent-b/secret.txt",
        "a/../../agent-b/secret.txt",
        "/workspace/../agent-b/secret.txt",
        "/etc/passwd",
        "/workspace-evil/x",
        "/workspaces/agent-b/secret.txt",
        "/",
    ],
)
async def test_paths_outside_the_workspace_are_refused(agent_a: ShellClient, path: str) -> None:
    for tool, arguments in (
        ("fs_read", {"path": path}),
        ("fs_write", {"path": path, "content": "x"}),
        ("fs_list", {"path": path}),
        ("fs_search", {"pattern": "x", "path": path}),
    ):
        outcome = await agent_a.call(tool, arguments)
        assert outcome.is_error and "outside the workspace" in outcome.text, (tool, path, outcome.text)


async def test_host_paths_of_the_workspace_are_refused(agent_a: ShellClient, jail_hub: RunningHub) -> None:
    for path in (str(workspace_dir(jail_hub, "agent-b") / "x"), str(jail_hub.state_dir / "hub.json")):
        outcome = await agent_a.call("fs_read", {"path": path})
        assert outcome.is_error and "outside the workspace" in outcome.text


async def test_symlinks_out_of_the_workspace_are_refused(
    agent_a: ShellClient, agent_b: ShellClient, jail_hub: RunningHub
) -> None:
    secret = secrets.token_hex(8)
    await agent_b.call("fs_write", {"path": "secret.txt", "content": secret})
    made = await agent_a.exec(
        "ln -sfn /etc/passwd abs && ln -sfn ../agent-b rel && ln -sfn .. up && mkdir -p d "
        "&& ln -sfn ../../.. d/deep "
        f"&& ln -sfn {jail_hub.state_dir} state && echo ok > plain.txt && ln -sfn plain.txt inside"
    )
    assert made.structured["exit_code"] == 0, made.text
    for tool, arguments in (
        ("fs_read", {"path": "abs"}),
        ("fs_read", {"path": "rel/secret.txt"}),
        ("fs_read", {"path": "d/deep/etc/passwd"}),
        ("fs_read", {"path": "state/hub.json"}),
        ("fs_list", {"path": "up"}),
        ("fs_list", {"path": "rel"}),
        ("fs_search", {"pattern": secret, "path": "rel"}),
        ("fs_write", {"path": "rel/planted.txt", "content": "x"}),
        ("fs_write", {"path": "up/planted.txt", "content": "x"}),
    ):
        outcome = await agent_a.call(tool, arguments)
        assert outcome.is_error and "outside the workspace" in outcome.text, (tool, arguments, outcome.text)
        assert secret not in outcome.text
    assert not (workspace_dir(jail_hub, "agent-b") / "planted.txt").exists()
    assert not (jail_hub.state_dir / "workspaces" / "planted.txt").exists()
    # Writing through a symlink (even one that stays inside) is refused rather than surprising.
    through = await agent_a.call("fs_write", {"path": "abs", "content": "x"})
    assert through.is_error and "symlink" in through.text
    # A symlink that stays inside is followed.
    assert (await agent_a.call("fs_read", {"path": "inside"})).structured["content"] == "ok\n"


async def test_special_files_do_not_stall_the_hub(agent_a: ShellClient) -> None:
    await agent_a.exec("rm -f fifo && mkfifo fifo")
    outcome = await agent_a.call("fs_read", {"path": "fifo"}, timeout=20)
    assert outcome.is_error and "not a regular file" in outcome.text
    directory = await agent_a.call("fs_read", {"path": "."})
    assert directory.is_error and "directory" in directory.text


async def test_file_size_is_bounded(agent_a: ShellClient) -> None:
    huge = "x" * (4 * 1024 * 1024 + 1)
    outcome = await agent_a.call("fs_write", {"path": "huge.txt", "content": huge})
    assert outcome.is_error and "at most" in outcome.text


async def test_a_file_of_any_size_up_to_max_file_bytes_is_read_in_one_call(
    agent_a: ShellClient, jail_hub: RunningHub
) -> None:
    """Found by a tester: text files of 3.3-4.18 MB (binary from 2.6 MB) were refused as "more
    than one gRPC message carries back", while a 4.19 MB one was read: the size check bounded
    the text at 4 bytes a character and added its structured copy without counting exactly."""
    await agent_a.exec("true")  # the workspace exists from the first call on
    folder = workspace_dir(jail_hub, "agent-a")
    text = ("0123456789abcdef" * 64 + "\n") * (3_500_000 // 1025)
    (folder / "f35.txt").write_text(text)
    read = await agent_a.call("fs_read", {"path": "f35.txt"})
    assert not read.is_error, read.text[:300]
    assert read.structured["content"] == text
    blob = secrets.token_bytes(3_000_000)
    (folder / "b30.bin").write_bytes(blob)
    read = await agent_a.call("fs_read", {"path": "b30.bin"})
    assert not read.is_error, read.text[:300]
    assert base64.b64decode(read.structured["content"]) == blob

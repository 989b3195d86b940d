"""shell_exec and the background-process tools against the real bubblewrap jail of this machine."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
from pathlib import Path

import grpc
import orjson
import pytest

from bridge.hubclient import HubClient
from tests.conftest import TOKENS
from tests.mcp_remote.tools.conftest import (
    ShellClient,
    processes_running,
    shell_hub_config,
    wait_until,
    workspace_dir,
)
from tests.support.approvals import decide
from tests.support.clients import TRANSPORTS, connect
from tests.support.hub import RunningHub, start_hub

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_exec_returns_exit_code_output_and_duration_over_every_transport(
    transport: str, jail_hub: RunningHub
) -> None:
    async with connect(transport, jail_hub.grpc, jail_hub.mcp_url, TOKENS["agent-a"]) as client:
        # One simple command (a compound one would wait for an approver, which these clients are not).
        command = "python3 -c \"import sys; print('out'); print('err', file=sys.stderr); sys.exit(7)\""
        outcome = await client.call("shell_exec", {"command": command})
    assert not outcome.is_error
    s = outcome.structured
    assert (s["exit_code"], s["stdout"], s["stderr"], s["timed_out"], s["truncated"]) == (
        7,
        "out\n",
        "err\n",
        False,
        False,
    )
    assert isinstance(s["duration_ms"], int) and s["duration_ms"] >= 0
    assert "exit code 7" in outcome.text and "out" in outcome.text and "err" in outcome.text


async def test_commands_run_as_an_unprivileged_user_in_the_workspace(agent_a: ShellClient) -> None:
    s = (
        await agent_a.exec("id -u; id -un; pwd; echo $HOME; cat /proc/self/status | grep ^CapEff")
    ).structured
    uid, name, cwd, home, caps = s["stdout"].splitlines()
    assert (uid, name, cwd, home) == ("1000", "sandbox", "/workspace", "/workspace")
    assert caps.split()[1] == "0000000000000000"


async def test_each_principal_has_its_own_host_uid(
    agent_a: ShellClient, agent_b: ShellClient, jail_hub: RunningHub
) -> None:
    await agent_a.exec("touch owned")
    await agent_b.exec("touch owned")
    a = workspace_dir(jail_hub, "agent-a")
    b = workspace_dir(jail_hub, "agent-b")
    assert a.stat().st_mode & 0o777 == 0o700 and b.stat().st_mode & 0o777 == 0o700
    assert (a / "owned").stat().st_uid == a.stat().st_uid != 0
    assert (b / "owned").stat().st_uid == b.stat().st_uid != 0
    assert a.stat().st_uid != b.stat().st_uid


async def test_output_streams_while_the_command_runs(agent_a: ShellClient) -> None:
    """The command prints, then waits for a file that the test writes only after seeing that output
    arrive: it can only finish if the output was streamed before it ended."""
    go = f"go-{secrets.token_hex(4)}"
    command = f"echo first; while [ ! -e {go} ]; do sleep 0.05; done; echo second"
    seen: list[bytes] = []
    result = None
    async for event in agent_a.stream("shell_exec", {"command": command, "timeout_s": 30}):
        kind = event.WhichOneof("event")
        if kind == "output":
            seen.append(event.output.data)
            if b"first" in b"".join(seen) and len(seen) == 1:
                written = await agent_a.call("fs_write", {"path": go, "content": ""})
                assert not written.is_error, written.text
        elif kind == "result":
            result = event.result
    assert result is not None and not result.is_error
    assert b"".join(seen) == b"first\nsecond\n"
    assert orjson.loads(result.structured_content_json)["exit_code"] == 0


@pytest.mark.parametrize("transport", ["mcp-2026", "mcp-2025", "stdio"])
async def test_mcp_clients_see_output_as_progress_while_it_runs(
    transport: str, jail_hub: RunningHub, agent_a: ShellClient
) -> None:
    go = f"go-{secrets.token_hex(4)}"
    command = f"echo first-line; while [ ! -e {go} ]; do sleep 0.05; done; echo second-line"
    messages: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if message and message.startswith("approval apr_"):
            # The command is compound, so the gate asks first; the client sees that as progress too.
            if "pending" in message:
                await decide(jail_hub.grpc, TOKENS["approver"], message.split()[1], True)
            return
        messages.append(message or "")
        if message == "first-line":
            assert not (await agent_a.call("fs_write", {"path": go, "content": ""})).is_error

    async with connect(transport, jail_hub.grpc, jail_hub.mcp_url, TOKENS["agent-a"]) as client:
        outcome = await client.call("shell_exec", {"command": command, "timeout_s": 30}, progress=on_progress)
    assert outcome.structured["stdout"] == "first-line\nsecond-line\n", outcome.text
    assert messages[0] == "first-line"


async def test_stdin_env_and_cwd(agent_a: ShellClient) -> None:
    assert (await agent_a.exec("cat", stdin="from stdin\n")).structured["stdout"] == "from stdin\n"
    s = (
        await agent_a.exec(
            'printf "%s|%s" "$GREETING" "$EMPTY"', env={"GREETING": "hello world", "EMPTY": ""}
        )
    ).structured
    assert s["stdout"] == "hello world|"
    await agent_a.exec("mkdir -p sub/dir")
    assert (await agent_a.exec("pwd", cwd="sub/dir")).structured["stdout"] == "/workspace/sub/dir\n"
    assert (await agent_a.exec("pwd", cwd="/tmp")).structured["stdout"] == "/tmp\n"


async def test_large_output_is_kept_whole_and_readable_by_id(agent_a: ShellClient) -> None:
    outcome = await agent_a.exec("seq 1 20000")  # 108894 bytes, far over the 4096-byte preview
    s = outcome.structured
    assert s["truncated"] is True and s["stdout_bytes"] == 108894 and len(s["stdout"]) == 4096
    assert s["stdout_output_id"] and "output_read" in outcome.text
    whole = b""
    offset: int | None = 0
    pages = 0
    while offset is not None:
        page = await agent_a.call(
            "output_read", {"output_id": s["stdout_output_id"], "offset": offset, "limit": 65536}
        )
        header, _, body = page.text.partition("\n")
        # A program pages by the structured result; a model by the header's words: they agree.
        found = page.structured
        assert found is not None and found["offset"] == offset and found["data"] == body, found
        assert (found["size"], found["dropped"], found["encoding"]) == (108894, 0, "utf-8")
        whole += body.encode()
        offset = found["next_offset"]
        pages += 1
        assert ("end of output" in header) == (offset is None), header
        assert offset is None or f"continue with offset {offset}]" in header, header
    assert pages == 2 and whole.decode().splitlines() == [str(i) for i in range(1, 20001)]


async def test_the_last_page_of_a_capped_output_says_what_was_not_kept(agent_a: ShellClient) -> None:
    """Found by a tester: the last page of an output cut at max_output_bytes (1 MiB here) said
    "end of output", so an agent paging through never learned that the rest was dropped."""
    outcome = await agent_a.exec("seq 1 300000")  # 1,988,895 bytes
    s = outcome.structured
    assert s["stdout_bytes"] == 1988895 and "only the first 1048576 bytes were kept" in outcome.text
    last = await agent_a.call(
        "output_read", {"output_id": s["stdout_output_id"], "offset": 1048576 - 10, "limit": 65536}
    )
    header = last.text.partition("\n")[0]
    assert "end of output" not in header, header
    assert "end of what was kept: the 940319 bytes that followed were counted, not stored" in header
    assert last.structured is not None
    assert (last.structured["next_offset"], last.structured["dropped"], last.structured["size"]) == (
        None,
        940319,
        1048576,
    )


async def test_a_character_cut_by_the_preview_is_read_whole_with_the_rest(agent_a: ShellClient) -> None:
    # 4,095 bytes of "a", then "é" (2 bytes) across the 4,096-byte preview's end.
    outcome = await agent_a.exec("head -c 4095 /dev/zero | tr '\\0' a; printf '\\303\\251'; seq 1 2000")
    s = outcome.structured
    assert s["stdout"] == "a" * 4095 and s["truncated"] is True
    note = orjson.loads(outcome.text.rsplit("Read on with output_read ", 1)[1].split("]", 1)[0])
    assert note == {"output_id": s["stdout_output_id"], "offset": 4095}
    page = await agent_a.call("output_read", {**note, "limit": 65536})
    header, _, body = page.text.partition("\n")
    assert header.endswith("; end of output]") and "\ufffd" not in body
    assert body == "é" + "".join(f"{i}\n" for i in range(1, 2001))


async def test_a_short_output_that_is_not_utf8_is_kept_exactly(agent_a: ShellClient) -> None:
    """Under the preview size, bytes that are not UTF-8 came back as U+FFFD and were lost."""
    outcome = await agent_a.exec("printf 'ok \\377\\000\\201 end'")
    s = outcome.structured
    assert s["stdout"] == "ok \ufffd\x00\ufffd end" and s["truncated"] is False and s["stdout_bytes"] == 10
    note = orjson.loads(outcome.text.rsplit("its exact bytes: output_read ", 1)[1].split("]", 1)[0])
    assert note == {"output_id": s["stdout_output_id"], "offset": 0}
    page = await agent_a.call("output_read", note)
    header, _, body = page.text.partition("\n")
    assert "not UTF-8 text, shown as base64" in header, header
    assert base64.b64decode(body) == b"ok \377\000\201 end"
    assert page.structured is not None and page.structured["encoding"] == "base64"
    plain = (await agent_a.exec("printf 'caf\\303\\251'")).structured  # UTF-8: nothing kept
    assert plain["stdout"] == "café" and plain["stdout_output_id"] is None


async def test_output_ids_belong_to_their_principal(agent_a: ShellClient, agent_b: ShellClient) -> None:
    s = (await agent_a.exec("seq 1 5000")).structured
    stolen = await agent_b.call("output_read", {"output_id": s["stdout_output_id"]})
    assert stolen.is_error and "no output" in stolen.text


async def test_timeout_kills_the_command_and_everything_it_started(agent_a: ShellClient) -> None:
    marker = f"{secrets.randbelow(10_000) + 30_000}.{secrets.randbelow(1000)}"
    outcome = await agent_a.exec(f"sleep {marker} & sleep {marker}; echo never", timeout_s=1.5)
    assert outcome.is_error
    s = outcome.structured
    assert s["timed_out"] is True and s["exit_code"] is None and "never" not in s["stdout"]
    assert "timed out after 1.5s" in outcome.text
    await wait_until(lambda: not processes_running("sleep", marker), what="the killed sleeps to be gone")


async def test_cancelling_the_call_kills_the_command(agent_a: ShellClient) -> None:
    marker = f"{secrets.randbelow(10_000) + 40_000}.{secrets.randbelow(1000)}"

    async def consume() -> None:
        async for event in agent_a.stream("shell_exec", {"command": f"echo started; sleep {marker}"}):
            if event.WhichOneof("event") == "output":
                started.set()

    started = asyncio.Event()
    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 30)
    await wait_until(lambda: bool(processes_running("sleep", marker)), what="the command to run")
    task.cancel()
    with pytest.raises((asyncio.CancelledError, grpc.aio.AioRpcError)):
        await task
    await wait_until(
        lambda: not processes_running("sleep", marker), what="the cancelled command to be killed"
    )


async def test_a_process_that_leaves_children_behind_does_not_hold_the_call(agent_a: ShellClient) -> None:
    marker = f"{secrets.randbelow(10_000) + 50_000}.{secrets.randbelow(1000)}"
    outcome = await agent_a.exec(f"(sleep {marker} &) ; echo done", timeout_s=20)
    assert not outcome.is_error and outcome.structured["stdout"] == "done\n"
    await wait_until(
        lambda: not processes_running("sleep", marker), what="the orphan to die with its sandbox"
    )


def _pipes_of(pid: int) -> int:
    """How many pipe ends process `pid` holds open."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("pipe:")
    return count


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (./dev setup installs it)")
async def test_the_hub_closes_each_pipe_of_a_command_once(
    agent_a: ShellClient, jail_hub: RunningHub, tmp_path: Path
) -> None:
    """uvloop's pipe transports closed each descriptor twice (libuv, then the file object they were
    given): harmless (EBADF) unless another thread opened a file in between and was given the same
    number, which the second close then took from it (fs_write: "Bad file descriptor"). That race
    is rare; the second close is not: strace sees each close that fails with EBADF."""
    trace = tmp_path / "close.trace"
    command = ["strace", "-f", "-e", "trace=close", "-e", "status=failed", "-o", str(trace)]
    tracer = await asyncio.create_subprocess_exec(
        *command, "-p", str(jail_hub.process.pid), stderr=subprocess.PIPE
    )
    assert tracer.stderr is not None
    try:
        attached = await tracer.stderr.readline()  # "Process N attached with M threads"
        if b"attached" not in attached:
            pytest.skip(f"strace cannot trace the hub here: {attached.decode(errors='replace').strip()}")
        assert (await agent_a.exec("echo hi")).structured["stdout"] == "hi\n"
        assert (await agent_a.exec("cat", stdin="to stdin\n")).structured["stdout"] == "to stdin\n"
        assert (await agent_a.exec("yes", timeout_s=1)).structured["timed_out"]
        assert not (await agent_a.call("fs_write", {"path": "a.txt", "content": "hello"})).is_error
    finally:
        tracer.send_signal(signal.SIGINT)  # it detaches
        await tracer.wait()
    failed = [line for line in trace.read_text().splitlines() if "EBADF" in line]
    assert not failed, failed


async def test_a_command_killed_while_its_caller_lags_leaves_no_pipe_open(
    agent_a: ShellClient, jail_hub: RunningHub
) -> None:
    """The caller stops reading, so the hub's output to it waits and reading `yes` pauses; then the
    time limit kills it, and nobody reads its pipes again. They were left to the garbage collector
    (whose teardown of a uvloop transport closed the descriptor twice as well)."""
    before = _pipes_of(jail_hub.process.pid)
    events = agent_a.stream("shell_exec", {"command": "yes", "timeout_s": 1})
    async with contextlib.aclosing(events):
        async for event in events:
            if event.WhichOneof("event") == "output":
                break  # and read no more until the command is gone
        await wait_until(lambda: not processes_running("yes"), what="the time limit to kill yes")
    await wait_until(lambda: _pipes_of(jail_hub.process.pid) <= before, what="the command's pipes to close")


async def test_background_process_lifecycle(agent_a: ShellClient, agent_b: ShellClient) -> None:
    started = await agent_a.call(
        "shell_start", {"command": "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.05; done"}
    )
    assert not started.is_error, started.text
    pid = started.structured["process_id"]
    assert pid.startswith("proc_") and len(pid) >= 20

    text = ""
    offset = 0

    async def ticks() -> bool:
        nonlocal text, offset
        read = await agent_a.call("shell_read", {"process_id": pid, "offset": offset, "wait_s": 1})
        text += read.structured["output"]
        offset = read.structured["next_offset"]
        return "tick 5\n" in text

    await wait_until(ticks, what="six ticks")
    assert text.startswith("tick 0\ntick 1\n")
    status = await agent_a.call("shell_status", {})
    assert [p["state"] for p in status.structured["processes"] if p["process_id"] == pid] == ["running"]
    assert status.structured["sandbox"]["target"] == "jail"

    # Another principal cannot see, read or kill it: the same answer as for an id that never existed.
    for tool in ("shell_status", "shell_read", "shell_kill"):
        other = await agent_b.call(tool, {"process_id": pid})
        assert other.is_error and "no process" in other.text
    assert pid not in str((await agent_b.call("shell_status", {})).structured)

    killed = await agent_a.call("shell_kill", {"process_id": pid})
    assert killed.structured["state"] == "killed"
    after = await agent_a.call("shell_read", {"process_id": pid, "offset": offset, "wait_s": 0})
    assert after.structured["state"] == "killed"
    end = after.structured["end"]
    await asyncio.sleep(0.3)
    again = await agent_a.call("shell_read", {"process_id": pid, "offset": 0, "max_bytes": 1})
    assert again.structured["end"] == end, "no output after the kill"


async def test_background_output_that_is_not_utf8_is_read_exactly_as_base64(agent_a: ShellClient) -> None:
    """Found by a tester: shell_read gave U+FFFD for bytes that are not UTF-8, which cannot be
    undone; output_read gives them as base64, and so does shell_read now."""
    started = await agent_a.call("shell_start", {"command": "printf 'ab\\377\\376cd'"})
    pid = started.structured["process_id"]
    await wait_until(lambda: _state_is(agent_a, pid, "exited"), what="the process to exit")
    read = await agent_a.call("shell_read", {"process_id": pid})
    assert read.structured["encoding"] == "base64", read.text
    assert base64.b64decode(read.structured["output"]) == b"ab\xff\xfecd"
    assert "not UTF-8 text: the output is base64" in read.text
    text = await agent_a.call("shell_start", {"command": "echo plain"})
    await wait_until(
        lambda: _state_is(agent_a, text.structured["process_id"], "exited"), what="the process to exit"
    )
    plain = await agent_a.call("shell_read", {"process_id": text.structured["process_id"]})
    assert plain.structured["encoding"] == "utf-8" and plain.structured["output"] == "plain\n"


async def _state_is(agent: ShellClient, pid: str, state: str) -> bool:
    return bool((await agent.call("shell_status", {"process_id": pid})).structured["state"] == state)


async def test_background_output_is_read_in_pages_that_never_cut_a_character(agent_a: ShellClient) -> None:
    line = "é€😀 and ascii"
    started = await agent_a.call("shell_start", {"command": f"for i in 1 2 3 4 5; do echo '{line}'; done"})
    pid = started.structured["process_id"]
    text, offset = "", 0

    async def all_read() -> bool:
        nonlocal text, offset
        read = await agent_a.call(
            "shell_read", {"process_id": pid, "offset": offset, "max_bytes": 6, "wait_s": 1}
        )
        s = read.structured
        assert "\ufffd" not in s["output"], s
        assert s["offset"] == offset, s
        assert s["next_offset"] > offset or s["next_offset"] == s["end"], s  # progress, or all read
        text += s["output"]
        offset = s["next_offset"]
        return s["state"] == "exited" and offset == s["end"]

    await wait_until(all_read, what="the whole output, 6 bytes at a time")
    assert text == f"{line}\n" * 5


async def test_a_character_the_process_is_still_writing_is_read_whole(agent_a: ShellClient) -> None:
    """Found in review: held back at the end of one page, the first two bytes of "€" came back
    alone (as U+FFFD) from the next read, while the process had not written the third yet."""
    started = await agent_a.call(
        "shell_start", {"command": "printf 'ab\\342\\202'; sleep 1; printf '\\254z'"}
    )
    pid = started.structured["process_id"]
    text, offset, reads = "", 0, []
    while True:
        s = (await agent_a.call("shell_read", {"process_id": pid, "offset": offset, "wait_s": 5})).structured
        reads.append(s)
        assert "\ufffd" not in s["output"], reads
        text, offset = text + s["output"], s["next_offset"]
        if s["state"] != "running" and offset == s["end"]:
            break
        assert len(reads) < 20, reads
    assert text == "ab€z", reads


async def test_a_log_that_dropped_its_head_inside_a_character_is_read_from_the_next(
    agent_a: ShellClient,
) -> None:
    # 1,200,000 lines of "😀\n" (5 bytes): the log keeps the last 4 MiB, which begin 1 byte into
    # a 😀, at 6,000,000 - 4,194,304 = 1,805,696 = 5 * 361,139 + 1.
    started = await agent_a.call("shell_start", {"command": "yes 😀 | head -c 6000000"})
    pid = started.structured["process_id"]

    async def exited() -> bool:
        return (await agent_a.call("shell_status", {"process_id": pid})).structured["state"] == "exited"

    await wait_until(exited, what="the output written")
    result = await agent_a.call("shell_read", {"process_id": pid, "offset": 0, "max_bytes": 11})
    read = result.structured
    assert read["end"] == 6_000_000
    # The 3 bytes left of the cut 😀 are skipped, not shown as U+FFFD, and the note says so.
    assert read["offset"] == 1_805_699 and read["output"] == "\n😀\n😀\n", read
    assert "bytes 0-1805696 are no longer kept" in result.text, result.text
    assert "bytes 1805696-1805699, the rest of a character cut there, are skipped" in result.text


async def test_background_process_exit_code_and_time_limit(agent_a: ShellClient) -> None:
    pid = (await agent_a.call("shell_start", {"command": "echo done; exit 4"})).structured["process_id"]

    async def exited() -> bool:
        return (await agent_a.call("shell_status", {"process_id": pid})).structured["state"] == "exited"

    await wait_until(exited, what="the process to exit")
    read = await agent_a.call("shell_read", {"process_id": pid})
    assert read.structured["output"] == "done\n" and read.structured["exit_code"] == 4
    assert "exit code 4" in read.text

    limited = (await agent_a.call("shell_start", {"command": "sleep 600", "timeout_s": 1})).structured[
        "process_id"
    ]

    async def timed_out() -> bool:
        return (await agent_a.call("shell_status", {"process_id": limited})).structured[
            "state"
        ] == "timed_out"

    await wait_until(timed_out, what="the time limit")


async def test_unknown_and_malformed_process_ids(agent_a: ShellClient) -> None:
    unknown = await agent_a.call("shell_read", {"process_id": "proc_" + "A" * 22})
    assert unknown.is_error and "no process" in unknown.text
    malformed = await agent_a.call("shell_kill", {"process_id": "1; kill -9 -1"})
    assert malformed.is_error and "does not match" in malformed.text


async def test_tools_carry_the_annotations_the_gate_reads(agent_a: ShellClient) -> None:
    tools = {t.name: t for t in await agent_a.hub.all_tools(agent_a.token)}
    for name in ("shell_exec", "shell_start", "shell_kill", "fs_write"):
        a = tools[name].annotations
        assert (a.read_only_hint, a.destructive_hint) == (False, True), name
    for name in ("shell_status", "shell_read", "fs_read", "fs_list", "fs_search"):
        a = tools[name].annotations
        assert (a.read_only_hint, a.destructive_hint) == (True, False), name


async def test_a_timed_out_commands_record_keeps_the_hubs_words_not_its_output(
    jail_hub: RunningHub, agent_a: ShellClient
) -> None:
    """A timed-out call's `finished` record kept the first 500 characters of the command's
    stdout in its error (an internal hostname, say), where a call that succeeds keeps a digest."""
    marker = f"host-{secrets.token_hex(6)}"
    half = len(marker) // 2
    # The output holds the marker; the command, recorded as its argument, does not.
    command = f"printf '%s%s\\n' {marker[:half]} {marker[half:]}; sleep 30"
    outcome = await agent_a.exec(command, timeout_s=5)  # long enough for the printf on a busy machine
    assert outcome.is_error and marker in outcome.text
    raw = audit_bytes(jail_hub)  # durable before the caller has its result
    assert b"timed out after 5s; the command and everything it started were killed" in raw
    assert marker.encode() not in raw


def audit_bytes(hub: RunningHub) -> bytes:
    return b"".join(p.read_bytes() for p in (hub.state_dir / "audit").iterdir() if p.is_file())


def _spawner_of(hub: RunningHub) -> int:
    """The pid of the hub's spawner (a child of the hub, or of its `unshare`)."""
    found = subprocess.run(["pgrep", "-f", "spawner.py"], capture_output=True, text=True).stdout.split()
    for pid in map(int, found):
        ancestor = pid
        while ancestor > 1:
            if ancestor == hub.process.pid:
                return pid
            with open(f"/proc/{ancestor}/stat") as f:
                ancestor = int(f.read().rsplit(")", 1)[1].split()[1])
    raise AssertionError("the hub has no spawner")


async def test_a_command_whose_spawner_dies_ends_lost_and_the_spawner_comes_back(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The spawner alone reaps commands and tells their exit codes. Killed (systemd's control-group
    stop, an operator), it took its commands' sandboxes with it, and the calls waited for an exit
    code that could not come, past their own time limit; every later command was refused until the
    hub restarted. Now the running call ends at once, lost, and the next command starts a spawner."""
    hub = start_hub(tmp_path_factory.mktemp("spawner-hub"), config=shell_hub_config(), http=False)
    client = HubClient(hub.grpc)
    try:
        agent = ShellClient(client, TOKENS["agent-a"])
        marker = f"{secrets.randbelow(10_000) + 60_000}.{secrets.randbelow(1000)}"
        call = asyncio.create_task(agent.exec(f"sleep {marker}", timeout_s=50))
        await wait_until(lambda: bool(processes_running("sleep", marker)), what="the command to run")
        spawner = _spawner_of(hub)
        os.kill(spawner, signal.SIGTERM)
        outcome = await asyncio.wait_for(call, 30)  # the command's own limit is 50 s
        assert outcome.is_error
        lost = outcome.structured["lost"]
        assert lost and "spawner exited" in lost and "exit status is unknown" in lost, outcome.text
        assert outcome.structured["exit_code"] is None and outcome.structured["timed_out"] is False
        await wait_until(lambda: not processes_running("sleep", marker), what="the sandbox to be gone")

        again = await agent.exec("echo back")
        assert not again.is_error and again.structured["stdout"] == "back\n"
        assert _spawner_of(hub) != spawner
        assert "the spawner was started again" in hub.log()
    finally:
        await client.close()
        hub.stop()


def test_a_start_on_a_disk_too_full_for_the_jails_etc_says_so_and_leaves_no_partial_copy(
    tmp_path: Path,
) -> None:
    """A state directory's disk with room for the audit log but not for the jail's copy of /etc
    was a config error (exit 2, a raw OSError), and each failed start left its partial copy
    (`workspaces/.jail-etc.new-<pid>`) on that disk; a dead hub's copy was never removed."""
    from tests.mcp_remote.test_health import small_disk
    from tests.support.hub import serve_refused

    with small_disk(tmp_path / "state", size="2m") as disk:
        stale = disk / "workspaces" / ".jail-etc.new-999999999"
        (stale / "alternatives").mkdir(parents=True)
        (stale / "alternatives" / "README").write_text("left by a hub killed while it built /etc\n")
        mine = disk / "workspaces" / ".jail-etc.new-1"  # pid 1 runs: a live hub's is left alone
        mine.mkdir()
        with (disk / "filler").open("wb") as filler:
            filler.write(b"\0" * (2 * 1024 * 1024 - 600 * 1024))
        for _ in range(2):
            out = serve_refused(tmp_path, shell_hub_config())
            assert out.returncode == 3, out.stderr
            assert f"state directory {disk}: No space left on device" in out.stderr, out.stderr
            assert "packs[shell]" in out.stderr and "free space" in out.stderr, out.stderr
            assert sorted(p.name for p in (disk / "workspaces").iterdir()) == [".jail-etc.new-1"]

"""The stdio bridge as a client's child process: every line it is sent gets its answer (the SDK's
stdio transport dropped lines that are not messages without a word, so a client waited for ever),
no line is held whole past the bridge's body limit, and the bridge ends when stdin does."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from bridge.options import MAX_BODY_BYTES
from tests.bridge.test_session_door import BATCH_WORDS
from tests.support.hub import REPO, RunningHub

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}


def _line(pipe: IO[bytes], timeout: float = 20) -> bytes:
    """One line of `pipe`, or a failure after `timeout` s (an unanswered line waits for ever)."""
    ready, _, _ = select.select([pipe], [], [], timeout)
    assert ready, "no answer: the bridge dropped a line"
    return pipe.readline()


@contextlib.contextmanager
def _bridge(hub: RunningHub) -> Iterator[subprocess.Popen[bytes]]:
    """`mcphub bridge --stdio` for `hub`, initialized (its answer read); killed if still running."""
    command = [sys.executable, "-m", "mcp_remote.cli", "bridge", "--stdio", "--hub", hub.grpc]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    with subprocess.Popen(command, cwd=REPO, bufsize=0, **pipes) as bridge:  # type: ignore[call-overload]
        try:
            _send(bridge, INITIALIZE, {"jsonrpc": "2.0", "method": "notifications/initialized"})
            assert orjson.loads(_line(bridge.stdout))["id"] == 1
            yield bridge
        finally:
            if bridge.poll() is None:
                bridge.kill()


def _send(bridge: subprocess.Popen[bytes], *messages: dict[str, Any]) -> None:
    bridge.stdin.write(b"".join(orjson.dumps(m) + b"\n" for m in messages))  # type: ignore[union-attr]


def _peak_memory(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    [kib] = [line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(kib) * 1024


def test_lines_that_are_not_messages_get_an_error_and_the_session_goes_on(open_hub: RunningHub) -> None:
    lines = [
        orjson.dumps(INITIALIZE).decode(),
        '{"jsonrpc": "2.0", "method": "notifications/initialized"}',
        "this is not json",
        "",  # a blank line is no message: no answer
        '{"jsonrpc": "2.0", "id": 5, "method": 3}',
        "[1, 2]",
        '{"jsonrpc": "2.0", "id": 2, "method": "tools/list"}',
    ]
    command = [sys.executable, "-m", "mcp_remote.cli", "bridge", "--stdio", "--hub", open_hub.grpc]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    # Unbuffered, so that select() on the pipe sees every line readline() has not taken yet.
    with subprocess.Popen(command, cwd=REPO, bufsize=0, **pipes) as bridge:  # type: ignore[call-overload]
        bridge.stdin.write("\n".join(lines).encode() + b"\n")
        bridge.stdin.flush()
        # Read the answers before closing stdin: its end closes the session, in-flight requests too.
        answers = [orjson.loads(_line(bridge.stdout)) for _ in range(5)]
        bridge.stdin.close()
        assert bridge.wait(30) == 0
        stderr = bridge.stderr.read().decode()
    assert answers[0]["id"] == 1 and "serverInfo" in answers[0]["result"]
    assert answers[1] == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32700, "message": answers[1]["error"]["message"]},
    }
    assert answers[1]["error"]["message"].startswith("Parse error: the line is not JSON")
    assert answers[2]["error"]["code"] == -32600 and "JSONRPCRequest.method" in answers[2]["error"]["message"]
    # A batch: in the HTTP bridge's words (it was "Input should be an object (at JSONRPCRequest)").
    assert answers[3] == {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": BATCH_WORDS}}
    assert answers[4]["id"] == 2 and any(t["name"] == "echo" for t in answers[4]["result"]["tools"])
    assert stderr.count("not a JSON-RPC message") == 3, stderr


def test_the_bridge_ends_with_stdin_after_a_cancelled_call(open_hub: RunningHub) -> None:
    """A cancelled plain `tools/call` (a unary gRPC call) once ended the SDK's session while the
    SDK's stdin reader waited to hand on the next line to nobody: the bridge answered nothing
    more and outlived its stdin."""
    marker = f"stdio-exit-{time.monotonic_ns() % 10**9}"
    with _bridge(open_hub) as bridge:
        call = {"name": "wait_for_cancel", "arguments": {"marker": marker}}
        _send(bridge, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call})
        started = open_hub.state_dir / "markers" / f"{marker}.started"
        deadline = time.monotonic() + 20
        while not started.exists():
            assert time.monotonic() < deadline, "the tool did not start"
            time.sleep(0.02)
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2}}
        _send(bridge, cancel, {"jsonrpc": "2.0", "id": 3, "method": "ping"})
        bridge.stdin.close()
        assert bridge.wait(20) is not None


def test_a_line_over_the_body_limit_is_refused_unread_and_the_session_goes_on(open_hub: RunningHub) -> None:
    """The whole of a 40 MB line was read, parsed, turned into protobuf and sent on, to be refused
    in gRPC's words; now the bridge keeps its first bytes only and says what the limit is."""
    text = "x" * (40 * 1024 * 1024)
    id_first = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {}},
    }
    id_first["params"]["arguments"]["text"] = text  # type: ignore[index]
    id_last = {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "echo"}, "id": 8}
    id_last["params"]["arguments"] = {"text": text[:MAX_BODY_BYTES]}  # type: ignore[index]
    with _bridge(open_hub) as bridge:
        before = _peak_memory(bridge.pid)
        _send(bridge, id_first, id_last, {"jsonrpc": "2.0", "id": 9, "method": "ping"})
        answers = [orjson.loads(_line(bridge.stdout)) for _ in range(3)]
        grown = _peak_memory(bridge.pid) - before
        bridge.stdin.close()
        assert bridge.wait(20) == 0
    limit = f"longer than the bridge's limit of {MAX_BODY_BYTES} bytes"
    assert answers[0]["id"] == 7 and answers[0]["error"]["code"] == -32600
    assert limit in answers[0]["error"]["message"]
    # Its id comes after a value that does not fit in what is kept: no id, not a guessed one.
    assert answers[1]["id"] is None and limit in answers[1]["error"]["message"]
    assert answers[2] == {"jsonrpc": "2.0", "id": 9, "result": {}}
    assert grown < 2 * MAX_BODY_BYTES, f"the bridge grew by {grown} bytes"


def test_a_request_whose_id_is_no_id_is_refused(open_hub: RunningHub) -> None:
    """The SDK reads a request with `"id": null` or an object for an id as a notification and
    drops the id, so it was never answered; the 2026-07-28 HTTP wire answers -32600."""
    with _bridge(open_hub) as bridge:
        _send(
            bridge,
            {"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"},
            {"jsonrpc": "2.0", "id": None, "method": "tools/list"},
            {
                "jsonrpc": "2.0",
                "method": "notifications/progress",
                "params": {"progressToken": "id", "progress": 1},
            },
            {"jsonrpc": "2.0", "id": 9, "method": "ping"},
        )
        answers = [orjson.loads(_line(bridge.stdout)) for _ in range(3)]
        bridge.stdin.close()
        assert bridge.wait(20) == 0
    for answer in answers[:2]:
        assert answer["id"] is None and answer["error"]["code"] == -32600
        assert answer["error"]["message"] == (
            'Invalid Request: "id" must be a string or an integer (a notification has no "id")'
        )
    assert answers[2] == {"jsonrpc": "2.0", "id": 9, "result": {}}


def test_stdin_that_cannot_be_polled_ends_the_session_cleanly(open_hub: RunningHub) -> None:
    """epoll refuses /dev/null (EPERM), which crashed the bridge with a traceback: such a
    descriptor is read in a thread."""
    command = [sys.executable, "-m", "mcp_remote.cli", "bridge", "--stdio", "--hub", open_hub.grpc]
    with Path("/dev/null").open("rb") as nothing:
        done = subprocess.run(command, cwd=REPO, stdin=nothing, capture_output=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, b""), done.stderr
    assert b"Traceback" not in done.stderr, done.stderr


def test_a_closed_stdout_stops_the_bridge_and_cancels_its_calls(open_hub: RunningHub) -> None:
    """With its stdout closed the bridge went on serving: calls ran and were recorded as answered,
    their answers lost, and nothing was said (the writer alone ended, at INFO)."""
    marker = f"stdio-stdout-{time.monotonic_ns() % 10**9}"
    with _bridge(open_hub) as bridge:
        call = {"name": "wait_for_cancel", "arguments": {"marker": marker}}
        _send(bridge, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call})
        markers = open_hub.state_dir / "markers"
        deadline = time.monotonic() + 20
        while not (markers / f"{marker}.started").exists():
            assert time.monotonic() < deadline, "the tool did not start"
            time.sleep(0.02)
        bridge.stdout.close()  # type: ignore[union-attr]
        # stdin stays open: only the closed stdout may end the bridge.
        assert bridge.wait(20) is not None, "the bridge kept serving with its stdout closed"
        stderr = bridge.stderr.read().decode()  # type: ignore[union-attr]
        bridge.stdin.close()  # type: ignore[union-attr]
    assert "stdout was closed: the client has gone; the bridge stops" in stderr, stderr
    deadline = time.monotonic() + 10
    while not (markers / marker).exists():
        assert time.monotonic() < deadline, "the call in flight was not cancelled"
        time.sleep(0.05)


def test_a_large_answer_reaches_a_slow_client_whose_pipe_is_non_blocking(open_hub: RunningHub) -> None:
    """O_NONBLOCK on a pipe is shared by both its ends' holders (asyncio clients set it): a
    full pipe made the writer's `os.write` fail with EAGAIN, and the bridge died mid-answer."""
    read_end, write_end = os.pipe2(os.O_NONBLOCK)
    command = [sys.executable, "-m", "mcp_remote.cli", "bridge", "--stdio", "--hub", open_hub.grpc]
    try:
        with subprocess.Popen(
            command, cwd=REPO, stdin=subprocess.PIPE, stdout=write_end, stderr=subprocess.PIPE, bufsize=0
        ) as bridge:
            os.close(write_end)
            write_end = -1
            try:
                call = {"name": "emit_bytes", "arguments": {"n": 3_000_000}}
                _send(bridge, INITIALIZE, {"jsonrpc": "2.0", "method": "notifications/initialized"})
                _send(bridge, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call})
                time.sleep(2)  # a slow reader: the pipe fills
                os.set_blocking(read_end, True)
                with os.fdopen(read_end, "rb", closefd=False) as out:
                    assert orjson.loads(out.readline())["id"] == 1
                    answer = orjson.loads(out.readline())
                bridge.stdin.close()  # type: ignore[union-attr]
                assert bridge.wait(20) == 0
            finally:
                if bridge.poll() is None:
                    bridge.kill()
    finally:
        os.close(read_end)
        if write_end != -1:
            os.close(write_end)
    assert answer["id"] == 2 and len(answer["result"]["content"][0]["text"]) == 3_000_000, str(answer)[:300]

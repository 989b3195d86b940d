"""The stdio bridge answers a line that is not a JSON-RPC message, as the HTTP bridge does; the
SDK's stdio transport dropped such lines without a word, so a client waited for ever."""

from __future__ import annotations

import select
import subprocess
import sys
from typing import IO

import orjson

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
    assert answers[3]["error"]["code"] == -32600 and "should be an object" in answers[3]["error"]["message"]
    assert answers[4]["id"] == 2 and any(t["name"] == "echo" for t in answers[4]["result"]["tools"])
    assert stderr.count("not a JSON-RPC message") == 3, stderr

"""What the load generators send, and the check that every system answers it correctly.

One call is the same everywhere: `echo` with `{"text": ECHO_TEXT}`.

- MCP (the SDK and the bridge): one 2026-07-28 stateless `tools/call` POST with a JSON
  response, the same body and headers for both, so neither gets a protocol the other
  does not. The validation pass records the exact response body; the load generator
  then counts every response that differs from it as an error.
- MCP in a handshake-era session (optional rows): what Claude Code, opencode and the
  Inspector speak today. `initialize` and `notifications/initialized` once, then the
  same 2025-11-25 `tools/call` POST with the session's `Mcp-Session-Id`, from every
  caller; the answer may be an SSE stream, compared byte for byte as well.
- gRPC (`CallTool`, `StreamCallTool`, the bare echo): the request as one gRPC frame
  (flag byte, 4-byte big-endian length, serialized `CallToolRequest`). A gRPC failure
  also arrives as HTTP 200, but without a message, so the validation pass records how
  many DATA bytes a correct answer carries and a run is correct only when the bytes
  received equal that times the calls counted.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.request
from dataclasses import dataclass
from typing import Any

import grpc

from mcphub_proto.v1 import toolhub_pb2 as pb

__all__ = [
    "CALL_TOOL_PATH",
    "ECHO_TEXT",
    "PROTOCOL_VERSION",
    "STREAM_CALL_TOOL_PATH",
    "GrpcCall",
    "HttpCall",
    "WrongAnswer",
    "grpc_call",
    "mcp_call",
    "mcp_session_call",
    "validate_grpc",
    "validate_http",
]

ECHO_TEXT = "hello, mcphub"
PROTOCOL_VERSION = "2026-07-28"
SESSION_PROTOCOL_VERSION = "2025-11-25"
CALL_TOOL_PATH = "/mcphub.v1.ToolHub/CallTool"
STREAM_CALL_TOOL_PATH = "/mcphub.v1.ToolHub/StreamCallTool"


class WrongAnswer(Exception):
    """A system under test answered the validation call incorrectly; its figures would mean nothing."""


@dataclass(frozen=True, slots=True)
class HttpCall:
    url: str
    body: bytes
    headers: tuple[tuple[str, str], ...]
    expected_body: bytes = b""
    """Filled in by `validate_http`: the exact body of a correct answer."""
    fresh_ids: bool = False
    """Each request its own JSON-RPC id (`"id":1` in `body` replaced): in a session, ids must
    not repeat (MCP), and concurrent requests with one id would take each other's answers."""


@dataclass(frozen=True, slots=True)
class GrpcCall:
    address: str
    path: str
    frame: bytes
    headers: tuple[tuple[str, str], ...]
    expected_data_bytes: int = 0
    """Filled in by `validate_grpc`: DATA bytes of one correct answer (all its frames)."""

    @property
    def url(self) -> str:
        return f"http://{self.address}{self.path}"


def mcp_call(url: str, token: str | None) -> HttpCall:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "echo",
            "arguments": {"text": ECHO_TEXT},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": PROTOCOL_VERSION,
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {"name": "mcphub-bench", "version": "1"},
            },
        },
    }
    headers = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("MCP-Protocol-Version", PROTOCOL_VERSION),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", "echo"),
    ]
    if token:
        headers.append(("Authorization", f"Bearer {token}"))
    return HttpCall(url, json.dumps(body, separators=(",", ":")).encode(), tuple(headers))


def mcp_session_call(url: str, token: str | None) -> HttpCall:
    """Open a 2025-11-25 session on `url`; the call is a `tools/call` inside it."""
    base = [("Content-Type", "application/json"), ("Accept", "application/json, text/event-stream")]
    if token:
        base.append(("Authorization", f"Bearer {token}"))
    initialize = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": SESSION_PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "mcphub-bench", "version": "1"},
        },
    }
    request = urllib.request.Request(
        url, data=json.dumps(initialize).encode(), method="POST", headers=dict(base)
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        session = response.headers.get("mcp-session-id")
        answer = _message(response.read())
    if not session or answer.get("result", {}).get("protocolVersion") != SESSION_PROTOCOL_VERSION:
        raise WrongAnswer(
            f"{url}: no {SESSION_PROTOCOL_VERSION} session (session id {session!r}): {answer!r}"
        )
    headers = [*base, ("MCP-Protocol-Version", SESSION_PROTOCOL_VERSION), ("Mcp-Session-Id", session)]
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    request = urllib.request.Request(
        url, data=json.dumps(initialized).encode(), method="POST", headers=dict(headers)
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        if response.status != 202:
            raise WrongAnswer(f"{url}: notifications/initialized answered HTTP {response.status}")
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": ECHO_TEXT}},
    }
    return HttpCall(url, json.dumps(body, separators=(",", ":")).encode(), tuple(headers), fresh_ids=True)


def _message(body: bytes) -> dict[str, Any]:
    """A JSON-RPC answer sent as JSON or as an SSE stream (its last `data:` line)."""
    text = body.decode(errors="replace")
    if not text.lstrip().startswith("{"):
        data = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
        text = data[-1] if data else text
    try:
        message = json.loads(text)
    except ValueError as exc:
        raise WrongAnswer(f"the answer is neither JSON nor SSE ({exc}): {body[:300]!r}") from None
    if not isinstance(message, dict):
        raise WrongAnswer(f"the answer is not a JSON-RPC message: {body[:300]!r}")
    return message


def grpc_call(address: str, path: str, token: str | None) -> GrpcCall:
    message = pb.CallToolRequest(name="echo", arguments_json=json.dumps({"text": ECHO_TEXT}).encode())
    payload = message.SerializeToString()
    frame = b"\x00" + len(payload).to_bytes(4, "big") + payload
    headers = [("content-type", "application/grpc"), ("te", "trailers")]
    if token:
        headers.append(("authorization", f"Bearer {token}"))
    return GrpcCall(address, path, frame, tuple(headers))


def _post(call: HttpCall) -> tuple[int, bytes]:
    request = urllib.request.Request(call.url, data=call.body, method="POST", headers=dict(call.headers))
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.read()


def validate_http(call: HttpCall) -> HttpCall:
    """Call twice: both answers must be the same correct JSON-RPC result, which is recorded."""
    status, body = _post(call)
    if status != 200:
        raise WrongAnswer(f"{call.url}: HTTP {status}, expected 200: {body[:300]!r}")
    message = _message(body)
    result = message.get("result")
    if not isinstance(result, dict) or message.get("id") != 1:
        raise WrongAnswer(f"{call.url}: expected a JSON-RPC result for id 1, got {body[:300]!r}")
    if result.get("isError") or result.get("content") != [{"type": "text", "text": ECHO_TEXT}]:
        raise WrongAnswer(f"{call.url}: expected one text block {ECHO_TEXT!r}, got {result!r}")
    _, again = _post(call)
    if again != body:
        raise WrongAnswer(
            f"{call.url}: two identical calls gave different bodies, so responses cannot be checked "
            f"byte for byte: {body[:200]!r} vs {again[:200]!r}"
        )
    return dataclasses.replace(call, expected_body=body)


def _expected_result() -> pb.CallToolResult:
    return pb.CallToolResult(content=[pb.ContentBlock(text=pb.TextContent(text=ECHO_TEXT))])


def validate_grpc(call: GrpcCall) -> GrpcCall:
    """One real call through grpcio; the answer must be the echo. Returns the call with its size recorded."""
    metadata = [(k, v) for k, v in call.headers if k == "authorization"]
    request = call.frame[5:]
    with grpc.insecure_channel(call.address) as channel:
        try:
            if call.path == STREAM_CALL_TOOL_PATH:
                stream = channel.unary_stream(call.path)
                messages = list(stream(request, metadata=metadata, timeout=30))
                events = [pb.CallToolEvent.FromString(m) for m in messages]
                if len(events) != 1 or events[0].WhichOneof("event") != "result":
                    raise WrongAnswer(f"{call.url}: expected exactly one result event, got {events!r}")
                result = events[0].result
            else:
                unary = channel.unary_unary(call.path)
                messages = [unary(request, metadata=metadata, timeout=30)]
                result = pb.CallToolResult.FromString(messages[0])
        except grpc.RpcError as exc:
            raise WrongAnswer(f"{call.url}: {exc.code().name}: {exc.details()}") from None
    if result != _expected_result():
        raise WrongAnswer(f"{call.url}: expected the echo of {ECHO_TEXT!r}, got {result!r}")
    size = sum(5 + len(m) for m in messages)
    return GrpcCall(call.address, call.path, call.frame, call.headers, expected_data_bytes=size)

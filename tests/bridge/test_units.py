"""Pure parts of the bridge: the Host/Origin policy, the status table (and a hub that cannot be
reached) and proto -> MCP translation."""

from __future__ import annotations

import base64
import json
import socket

import grpc
import pytest
from starlette.types import Message

from bridge.errors import STATUS_TO_JSONRPC, mcp_error_from_grpc
from bridge.hubclient import HubClient
from bridge.security import default_policy
from bridge.translate import result_to_mcp, tool_to_mcp
from mcp_local import (
    AudioContent,
    ContentAnnotations,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
    Tool,
    ToolAnnotations,
    ToolCall,
    ToolResult,
)
from mcp_local.wire import result_from_proto, result_to_proto, tool_to_proto
from mcphub_proto.metadata import ERROR_FROM, FROM_HUB
from mcphub_proto.v1 import toolhub_pb2 as pb


def test_loopback_policy() -> None:
    policy = default_policy("127.0.0.1")
    for host in ("127.0.0.1:7071", "localhost:1", "[::1]:80", "localhost"):
        assert policy.host_allowed(host), host
    for host in ("evil.com", "localhost.evil.com:80", "127.0.0.1.nip.io:7071", "127.0.0.1:80x", None, ""):
        assert not policy.host_allowed(host), host
    assert policy.origin_allowed(None)
    assert policy.origin_allowed("http://localhost:6274")
    assert not policy.origin_allowed("http://localhost.evil.com:6274")
    assert not policy.origin_allowed("https://evil.com")
    assert not policy.origin_allowed("null")


def test_concrete_bind_address_and_configured_names_are_added() -> None:
    policy = default_policy("10.1.2.3", ["hub.internal:*", "hub.example.com"], ["https://app.example.com/"])
    assert policy.host_allowed("10.1.2.3:7071")
    assert policy.host_allowed("hub.internal:443") and policy.host_allowed("HUB.EXAMPLE.COM")
    assert not policy.host_allowed("hub.example.com:8080")
    assert policy.origin_allowed("https://app.example.com")
    wildcard = default_policy("0.0.0.0")
    assert not wildcard.host_allowed("0.0.0.0:7071")


def test_every_failure_status_has_a_distinct_or_documented_code() -> None:
    assert STATUS_TO_JSONRPC[grpc.StatusCode.NOT_FOUND] == -32602
    assert STATUS_TO_JSONRPC[grpc.StatusCode.FAILED_PRECONDITION] == -32021
    own = [
        c
        for s, c in STATUS_TO_JSONRPC.items()
        if s not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
    ]
    assert len(own) == len(set(own))


async def _h(call: ToolCall) -> str:
    return ""


def test_tool_translation_keeps_schemas_exactly() -> None:
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object", "$defs": {"a": {}}}
    tool = Tool(
        "t",
        "desc",
        schema,
        _h,
        title="T",
        output_schema={"type": "object"},
        annotations=ToolAnnotations(read_only=True, open_world=False),
        meta={"k": 1},
    )
    assert tool_to_mcp(tool_to_proto(tool)) == {
        "name": "t",
        "title": "T",
        "description": "desc",
        "inputSchema": schema,
        "outputSchema": {"type": "object"},
        "annotations": {"readOnlyHint": True, "openWorldHint": False},
        "_meta": {"k": 1},
    }


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (TextContent("hi"), {"type": "text", "text": "hi"}),
        (
            ImageContent(b"\x89PNG", "image/png"),
            {"type": "image", "data": base64.b64encode(b"\x89PNG").decode(), "mimeType": "image/png"},
        ),
        (AudioContent(b"RIFF", "audio/wav"), {"type": "audio", "data": "UklGRg==", "mimeType": "audio/wav"}),
        (
            ResourceLink("file:///a", "a", mime_type="text/plain", size=3),
            {"type": "resource_link", "uri": "file:///a", "name": "a", "mimeType": "text/plain", "size": 3},
        ),
        (
            EmbeddedResource("x://t", "text/plain", text="t"),
            {"type": "resource", "resource": {"uri": "x://t", "mimeType": "text/plain", "text": "t"}},
        ),
        (
            EmbeddedResource("x://b", blob=b"\x00\x01"),
            {"type": "resource", "resource": {"uri": "x://b", "blob": "AAE="}},
        ),
        (
            TextContent("a", ContentAnnotations(("user",), 0.5)),
            {"type": "text", "text": "a", "annotations": {"audience": ["user"], "priority": 0.5}},
        ),
    ],
)
def test_content_blocks_translate_and_round_trip(block: object, expected: dict[str, object]) -> None:
    result = ToolResult(content=(block,), structured={"big": 2**62 + 1})  # type: ignore[arg-type]
    wire = result_to_proto(result)
    assert result_to_mcp(wire) == {"content": [expected], "structuredContent": {"big": 2**62 + 1}}
    assert result_from_proto(wire) == result


@pytest.mark.anyio
async def test_an_unavailable_hub_is_told_from_one_that_cannot_be_reached() -> None:
    """Every UNAVAILABLE became 'is `mcphub serve` running?': a hub whose audit log could not be
    written, which had run the tool and withheld its result, looked to the agent like no hub."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nobody = f"127.0.0.1:{s.getsockname()[1]}"  # bound, never listening: refused
    client = HubClient(nobody)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.call_tool(None, pb.CallToolRequest(name="echo"), timeout=10)
    finally:
        await client.close()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    unreachable = mcp_error_from_grpc(info.value)
    assert (unreachable.code, unreachable.message) == (
        -32033,
        "the mcphub hub is unavailable; is `mcphub serve` running?",
    )

    said = "the tool ran, but its result is withheld: its audit records could not be written"
    answered = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata((ERROR_FROM, FROM_HUB)),
        details=said,
    )
    assert (mcp_error_from_grpc(answered).code, mcp_error_from_grpc(answered).message) == (-32033, said)
    # Words that reach the bridge without the hub's mark are not taken for the hub's.
    unmarked = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details=said
    )
    assert "is `mcphub serve` running?" in mcp_error_from_grpc(unmarked).message


def _sse(data: bytes | str) -> Message:
    from sse_starlette.sse import ServerSentEvent

    text = data.decode() if isinstance(data, bytes) else data
    return {
        "type": "http.response.body",
        "body": ServerSentEvent(data=text, event="message").encode(),
        "more_body": True,
    }


@pytest.mark.parametrize(
    ("request_id", "answer", "at_once"),
    [
        # As the SDK writes its answers (its model's field order): found without parsing.
        (7, "sdk", True),
        ("a-7", "sdk-large", True),
        (7, "sdk-error", True),
        (2**70, "sdk", True),  # past 64 bits: JSON-RPC allows it, orjson does not
        # Another field order: a small event is parsed; a large one is not, and the id is free
        # when the stream ends (as before).
        ("7", "reordered", True),
        ("7", "reordered-large", False),
    ],
)
async def test_a_requests_id_is_free_once_its_answer_event_is_sent(
    request_id: int | str, answer: str, at_once: bool
) -> None:
    """On an SSE stream the answer is one event and the stream's end comes after it: the id was
    kept in flight until that end, so a client that had its answer and at once sent a request
    with the same id was refused (seen as a flaky test on a busy machine)."""
    from mcp_types import JSONRPCError, JSONRPCResponse

    from bridge.door import _answering

    forgotten: list[str] = []
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    cancels: list[bool] = []
    receiving, sending = _answering(
        receive, send, request_id, lambda: forgotten.append("id"), lambda: cancels.append(True)
    )
    await sending({"type": "http.response.start", "status": 200, "headers": []})
    progress = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}
    await sending(_sse(json.dumps(progress)))
    other = 8 if isinstance(request_id, int) else "a-8"
    await sending(_sse(json.dumps({"jsonrpc": "2.0", "id": other, "result": {}})))  # another id's
    asks = {"jsonrpc": "2.0", "id": request_id, "method": "sampling/createMessage", "params": {}}
    await sending(_sse(json.dumps(asks)))  # the server's own request, with the same id
    assert forgotten == []
    text = "x" * (200_000 if answer.endswith("large") else 10)
    if answer.startswith("sdk"):
        model = (
            JSONRPCError(jsonrpc="2.0", id=request_id, error={"code": -32603, "message": text})
            if answer == "sdk-error"
            else JSONRPCResponse(
                jsonrpc="2.0", id=request_id, result={"content": [{"type": "text", "text": text}]}
            )
        )
        data = model.model_dump_json(by_alias=True, exclude_unset=True)
        assert data.startswith('{"jsonrpc":"2.0","id":'), data[:40]  # what the fast path reads
    else:
        data = json.dumps({"result": {"text": text}, "id": request_id, "jsonrpc": "2.0"})
    await sending(_sse(data))
    assert forgotten == (["id"] if at_once else [])
    await sending({"type": "http.response.body", "body": b"", "more_body": False})
    await receiving()  # the client leaves after its answer: nothing to cancel
    assert forgotten == ["id"] and cancels == [] and len(sent) == 6

"""Bytes that are not a protobuf message get INVALID_ARGUMENT from every kind of method, on a real hub.

grpc.aio decodes requests before servicer code runs; a DecodeError there used to be
answered UNKNOWN ("Unexpected DecodeError") and logged as an ERROR with a traceback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from mcphub_proto.v1 import toolhub_pb2 as pb
from tests.support.hub import RunningHub

pytestmark = pytest.mark.anyio

GARBAGE = b"\xff\xff\xff\xff"
BAD_UTF8_NAME = (
    pb.CallToolRequest(name="echo", arguments_json=b'{"text":"x"}')
    .SerializeToString()
    .replace(b"echo", b"ec\xffo")
)


def _identity(data: bytes) -> bytes:
    return data


@pytest.mark.parametrize("body", [GARBAGE, BAD_UTF8_NAME], ids=["garbage", "invalid-utf8-string"])
@pytest.mark.parametrize(
    ("kind", "method"),
    [
        ("unary", "/mcphub.v1.ToolHub/CallTool"),
        ("server-stream", "/mcphub.v1.ToolHub/StreamCallTool"),
        ("bidi-stream", "/mcphub.v1.SandboxRegistry/Connect"),
    ],
)
async def test_an_undecodable_request_is_invalid_argument(
    open_hub: RunningHub, kind: str, method: str, body: bytes
) -> None:
    async with grpc.aio.insecure_channel(open_hub.grpc) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            if kind == "unary":
                await channel.unary_unary(method, _identity, _identity)(body, timeout=10)
            elif kind == "server-stream":
                async for _ in channel.unary_stream(method, _identity, _identity)(body, timeout=10):
                    pass
            else:

                async def one() -> AsyncIterator[bytes]:
                    yield body

                async for _ in channel.stream_stream(method, _identity, _identity)(one(), timeout=10):
                    pass
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
        assert f"{method}: the request is not a valid protobuf message" in (caught.value.details() or "")
        good = pb.CallToolRequest(name="echo", arguments_json=b'{"text":"still here"}')
        answer = await channel.unary_unary(
            "/mcphub.v1.ToolHub/CallTool", pb.CallToolRequest.SerializeToString, pb.CallToolResult.FromString
        )(good, timeout=10)
        assert answer.content[0].text.text == "still here"
    assert "DecodeError" not in open_hub.log()


async def test_an_integer_beyond_64_bits_is_invalid_argument_not_a_float(open_hub: RunningHub) -> None:
    """orjson reads 2**64 as 1.8446744073709552e+19: the tool would have run with another number."""
    async with grpc.aio.insecure_channel(open_hub.grpc) as channel:
        call = channel.unary_unary(
            "/mcphub.v1.ToolHub/CallTool", pb.CallToolRequest.SerializeToString, pb.CallToolResult.FromString
        )
        request = pb.CallToolRequest(name="echo", arguments_json=b'{"text": "x", "n": 18446744073709551616}')
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "integer beyond 64 bits" in (caught.value.details() or "")


async def test_arguments_that_are_not_utf8_say_so_and_where(open_hub: RunningHub) -> None:
    """orjson's message for any invalid UTF-8 was "surrogates not allowed: line 1 column 1 (char 0)"."""
    async with grpc.aio.insecure_channel(open_hub.grpc) as channel:
        call = channel.unary_unary(
            "/mcphub.v1.ToolHub/CallTool", pb.CallToolRequest.SerializeToString, pb.CallToolResult.FromString
        )
        request = pb.CallToolRequest(name="echo", arguments_json=b'{"text": "caf\xe9"}')
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details() or ""
    assert "not valid UTF-8: byte 0xe9 at offset 13" in details, details
    assert "surrogates" not in details

"""A tool handler that blocks the event loop is named in the log while it blocks, by the hub and
by the sidecar (the stall watch of `mcp_local.stalls`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bridge.hubclient import HubClient
from mcphub_proto.v1 import toolhub_pb2 as pb
from tests.support.hub import FAULTY_PACK, start_hub
from tests.support.sidecar import start_sidecar

pytestmark = pytest.mark.anyio

BLOCKS = {"name": FAULTY_PACK, "options": {"tools": "blocks"}}


@pytest.mark.parametrize("server", ["hub", "sidecar"])
async def test_a_handler_that_blocks_the_loop_is_named_while_it_blocks(tmp_path: Path, server: str) -> None:
    if server == "hub":
        running = start_hub(tmp_path, config={"packs": [BLOCKS]}, http=False)
    else:
        running = start_sidecar(tmp_path, {"packs": [BLOCKS]})
    client = HubClient(running.grpc)
    try:
        request = pb.CallToolRequest(name="blocks_loop", arguments_json=b'{"seconds": 2.5}')
        result = await client.call_tool(None, request)
        assert result.content[0].text.text == "woke"
        await asyncio.sleep(0.6)  # the watch says the stall ended at its next look
    finally:
        await client.close()
        running.stop()
    log = running.log_path.read_text()
    assert "the event loop has not run for 1." in log, log
    assert f"It is blocked in {FAULTY_PACK}:" in log and " in _blocks_loop, called from " in log, log
    assert "run blocking work with `await asyncio.to_thread(...)`" in log
    assert "the event loop ran again after 2." in log, log

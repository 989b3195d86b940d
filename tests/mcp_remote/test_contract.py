"""The hub does what proto/ says, for a client written from proto/ alone: keepalive pings it
permits, how watches end at a shutdown, what it logs for results a client cannot take."""

from __future__ import annotations

from pathlib import Path

import grpc
import orjson
import pytest

from mcp_local.servicer import CLIENT_PING_INTERVAL_MS
from mcphub_proto.v1 import toolhub_pb2 as pb
from mcphub_proto.v1 import toolhub_pb2_grpc as pb_grpc
from tests.support.hub import PROBE_PACK, start_hub

pytestmark = pytest.mark.anyio


async def test_a_client_pinging_at_the_permitted_interval_keeps_a_silent_call(tmp_path: Path) -> None:
    """gRPC's default let a client ping every 5 minutes at most: one pinging every few seconds
    lost a call silent for four of its pings to GOAWAY `too_many_pings` (UNAVAILABLE, which
    retry policies retry). At the interval toolhub.proto permits, the call lasts until its
    deadline. The test takes about 20 s: six and a half pings of the 3 s interval (the old
    limit ended the call at the fourth or fifth)."""
    hub = start_hub(tmp_path, packs=[PROBE_PACK], http=False)
    options = [
        ("grpc.keepalive_time_ms", CLIENT_PING_INTERVAL_MS),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    try:
        async with grpc.aio.insecure_channel(hub.grpc, options=options) as channel:
            tools = pb_grpc.ToolHubStub(channel)
            # wait_for_cancel runs a minute; CallTool sends nothing until it ends.
            request = pb.CallToolRequest(
                name="wait_for_cancel", arguments_json=orjson.dumps({"marker": "ka"})
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await tools.CallTool(request, timeout=CLIENT_PING_INTERVAL_MS * 6.5 / 1000)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, caught.value.details()
    finally:
        hub.stop()
    assert "too_many_pings" not in hub.log()

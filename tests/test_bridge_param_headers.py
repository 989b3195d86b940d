"""2026-07-28 `Mcp-Param-*` headers are checked against the tool's schema, which the bridge
takes from the hub's registry (no ListTools round trip per call)."""

from __future__ import annotations

import httpx2
import orjson
import pytest
from mcp_types import HEADER_MISMATCH

from tests.support.hub import RunningHub

pytestmark = pytest.mark.anyio


def _post(hub: RunningHub, region: str, header: str | None) -> httpx2.Response:
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {
            "name": "routed",
            "arguments": {"region": region},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": "routed",
    }
    if header is not None:
        headers["Mcp-Param-Region"] = header
    assert hub.mcp_url is not None
    return httpx2.post(hub.mcp_url, content=orjson.dumps(body), headers=headers, timeout=30)


async def test_matching_header_is_served(open_hub: RunningHub) -> None:
    response = _post(open_hub, "eu-west", "eu-west")
    assert response.status_code == 200, response.text
    assert response.json()["result"]["content"] == [{"type": "text", "text": "eu-west"}]


@pytest.mark.parametrize("header", ["us-east", None])
async def test_mismatched_or_missing_header_is_refused(open_hub: RunningHub, header: str | None) -> None:
    response = _post(open_hub, "eu-west", header)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == HEADER_MISMATCH

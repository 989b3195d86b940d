"""2026-07-28 `Mcp-Param-*` headers are checked against the tool's schema, which the bridge
takes from the hub's registry (no ListTools round trip per call), and only for a caller the
tool is visible to: for anybody else the hub's own refusal answers, and the header cannot
reveal that the tool exists."""

from __future__ import annotations

import httpx2
import orjson
import pytest
from mcp_types import HEADER_MISMATCH

from tests.conftest import TOKENS
from tests.support.hub import RunningHub

pytestmark = pytest.mark.anyio


def _post(
    hub: RunningHub, region: str, header: str | None, *, token: str | None = None, progress: bool = False
) -> httpx2.Response:
    meta: dict[str, object] = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    if progress:  # a call with a progress token is the SDK's, not the bridge's express lane
        meta["progressToken"] = "p1"
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {
            "name": "routed",
            "arguments": {"region": region},
            "_meta": meta,
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
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
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


def _message(response: httpx2.Response) -> dict[str, object]:
    """The JSON-RPC answer, whether it came as JSON or as the last event of an SSE stream."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        return orjson.loads(response.text.rsplit("data: ", 1)[1])  # type: ignore[no-any-return]
    return response.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("progress", [False, True], ids=["express-lane", "sdk"])
async def test_the_header_check_still_runs_for_a_caller_who_sees_the_tool(
    secured_hub: RunningHub, progress: bool
) -> None:
    response = _post(secured_hub, "eu-west", "us-east", token=TOKENS["agent-a"], progress=progress)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == HEADER_MISMATCH


@pytest.mark.parametrize("progress", [False, True], ids=["express-lane", "sdk"])
@pytest.mark.parametrize(
    "token", [TOKENS["agent-b"], "a-token-this-hub-does-not-know"], ids=["hidden", "unknown"]
)
async def test_a_header_tells_nothing_about_a_tool_the_caller_may_not_see(
    secured_hub: RunningHub, progress: bool, token: str
) -> None:
    # agent-b may call only echo and who*: `routed` is not theirs. A wrong header must get the
    # answer the call gets with the right one (the hub's refusal), not "header mismatch".
    wrong = _post(secured_hub, "eu-west", "us-east", token=token, progress=progress)
    right = _post(secured_hub, "eu-west", "eu-west", token=token, progress=progress)
    assert wrong.status_code == right.status_code < 500, wrong.text
    assert _message(wrong) == _message(right)
    error = _message(wrong)["error"]
    assert isinstance(error, dict) and error["code"] != HEADER_MISMATCH
    expected = "may not call tool 'routed'" if token == TOKENS["agent-b"] else "bearer token"
    assert expected in str(error["message"]), error

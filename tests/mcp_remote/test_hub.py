"""The hub built in this process from a config, as `mcphub serve` builds it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import pytest

from bridge.express import ExpressLane
from mcp_remote.config import load_config
from mcp_remote.hub import Hub
from tests.bench.wire import ECHO_TEXT, mcp_call

pytestmark = pytest.mark.anyio


def _layers(app: Any) -> list[type]:
    """The ASGI wrappers from the outside in (each keeps the next as `.app` or `.sdk_app`)."""
    found = []
    while app is not None:
        found.append(type(app))
        app = getattr(app, "sdk_app", None) or getattr(app, "app", None)
    return found


@pytest.mark.parametrize(
    ("yaml", "env", "lane"),
    [
        ("", {}, True),
        ("bridge_express: false\n", {}, False),
        ("", {"MCPHUB_BRIDGE_EXPRESS": "false"}, False),
    ],
    ids=["default", "config", "environment"],
)
async def test_bridge_express_switch(tmp_path: Path, yaml: str, env: dict[str, str], lane: bool) -> None:
    path = tmp_path / "hub.yaml"
    path.write_text(yaml + "packs: [diagnostics]\n")
    overrides = {"grpc": "127.0.0.1:0", "http": "127.0.0.1:0", "state_dir": tmp_path / "state"}
    config = load_config(path, {"HOME": str(tmp_path), **env}, overrides)
    assert config.bridge_express is lane
    hub = Hub(config, {})
    addresses = await hub.start()
    try:
        assert hub.bridge_app is not None and hub.bridge_app.app is None  # built on the first MCP request
        assert addresses.mcp_url is not None
        call = mcp_call(addresses.mcp_url, None)  # the benchmark's 2026-07-28 echo call
        async with httpx2.AsyncClient(timeout=30) as http:
            response = await http.post(call.url, content=call.body, headers=dict(call.headers))
        assert response.status_code == 200, response.text
        assert response.json()["result"]["content"] == [{"type": "text", "text": ECHO_TEXT}]
        assert (ExpressLane in _layers(hub.bridge_app.app)) is lane
    finally:
        await hub.stop()

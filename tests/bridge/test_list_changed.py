"""`notifications/tools/list_changed` reaches MCP clients (official SDK client) when a sandbox registers
with the hub or goes away: on the session's stream (handshake versions) and on a `subscriptions/listen`
stream (2026-07-28)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import ToolListChangedNotification

from tests.support.hub import RunningHub, start_hub
from tests.support.sidecar import start_sidecar

pytestmark = pytest.mark.anyio

SANDBOX_TOKEN = "sandbox-list-changed-0123456789"
AGENT_TOKEN = "agent-list-changed-0123456789"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    config = {
        "principals": [
            {"name": "sbx-lc", "token": SANDBOX_TOKEN, "roles": ["sandbox"]},
            {"name": "agent", "token": AGENT_TOKEN, "tools": ["sbx-lc__*", "echo"]},
        ]
    }
    running = start_hub(tmp_path_factory.mktemp("lc-hub"), config=config)
    yield running
    running.stop()


def _manifest(root: Path) -> dict[str, Any]:
    (root / "ws").mkdir(parents=True, exist_ok=True)
    return {"workspace": str(root / "ws"), "packs": ["files"]}


async def _client(hub: RunningHub, mode: str, on_message: Any = None) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {AGENT_TOKEN}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http,
        Client(
            streamable_http_client(hub.mcp_url or "", http_client=http),
            mode=mode,
            cache=None,
            message_handler=on_message,
        ) as client,
    ):
        yield client


async def test_handshake_sessions_hear_of_a_sandbox_coming_and_going(hub: RunningHub, tmp_path: Path) -> None:
    changes = 0
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        nonlocal changes, changed
        if isinstance(message, ToolListChangedNotification):
            changes += 1
            changed.set()

    async for client in _client(hub, "legacy", on_message):
        assert client.protocol_version != "2026-07-28"
        caps = client.server_capabilities
        assert caps is not None and caps.tools is not None and caps.tools.list_changed is True
        before = {t.name for t in (await client.list_tools()).tools}
        assert "sbx-lc__files_read" not in before
        sidecar = start_sidecar(tmp_path, _manifest(tmp_path), hub=hub.grpc, token=SANDBOX_TOKEN)
        try:
            with anyio.fail_after(30):
                await changed.wait()
            names = {t.name for t in (await client.list_tools()).tools}
            assert "sbx-lc__files_read" in names
            changed = anyio.Event()
        finally:
            sidecar.stop()
        with anyio.fail_after(30):
            await changed.wait()
        assert "sbx-lc__files_read" not in {t.name for t in (await client.list_tools()).tools}
        assert changes >= 2


async def test_a_2026_listen_stream_hears_of_a_sandbox_registering(hub: RunningHub, tmp_path: Path) -> None:
    async for client in _client(hub, "auto"):
        assert client.protocol_version == "2026-07-28"
        async with client.listen(tools_list_changed=True) as subscription:
            sidecar = start_sidecar(tmp_path, _manifest(tmp_path), hub=hub.grpc, token=SANDBOX_TOKEN)
            try:
                with anyio.fail_after(30):
                    async for _event in subscription:
                        names = {t.name for t in (await client.list_tools()).tools}
                        if "sbx-lc__files_read" in names:
                            break
            finally:
                sidecar.stop()

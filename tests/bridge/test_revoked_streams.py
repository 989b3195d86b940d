"""A reload (SIGHUP) that revokes or rotates a token ends the MCP sessions and streams opened with it.

Before, they stayed: a 2025-era session's GET stream stayed open (kept alive by pings) and held
its place under `max_sessions_per_principal`, so the principal's new token got 429; a 2026
`subscriptions/listen` stream stayed open and silent, so a client never learned it had to
listen again.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from tests.bridge.test_session_door import ACCEPT, HANDSHAKE, INITIALIZE, LIST
from tests.mcp_remote.test_reload import reload
from tests.support.hub import RunningHub, start_hub

pytestmark = pytest.mark.anyio

OLD = "rotating-token-OLD-0123456789ab"
NEW = "rotating-token-NEW-0123456789ab"
MODERN = "2026-07-28"


def _config(token: str) -> dict[str, Any]:
    return {
        "principals": [{"name": "rot", "token": token, "tools": ["echo"]}],
        "max_sessions_per_principal": 2,
    }


def _in_session(token: str, session: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}", "mcp-session-id": session, "mcp-protocol-version": HANDSHAKE}


async def _open(http: httpx2.AsyncClient, token: str, *, initialized: bool = True) -> str:
    opened = await http.post("/mcp", json=INITIALIZE, headers=ACCEPT | {"authorization": f"Bearer {token}"})
    assert opened.status_code == 200, opened.text
    session = opened.headers["mcp-session-id"]
    if initialized:  # what starts the session's tool-list watch
        done = await http.post(
            "/mcp",
            json={"jsonrpc": "2.0", "method": "notifications/initialized"},
            headers=ACCEPT | _in_session(token, session),
        )
        assert done.status_code == 202, done.text
    return session


async def _rotated_sessions_end(tmp_path: Path, *, initialized: bool) -> RunningHub:
    hub = start_hub(tmp_path, config=_config(OLD))
    try:
        async with (
            httpx2.AsyncClient(base_url=hub.http_base, timeout=httpx2.Timeout(30, read=60)) as http,
            contextlib.AsyncExitStack() as stack,
        ):
            sessions = [await _open(http, OLD, initialized=initialized) for _ in range(2)]
            streams = []
            for session in sessions:
                headers = {"accept": "text/event-stream"} | _in_session(OLD, session)
                stream = await stack.enter_async_context(http.stream("GET", "/mcp", headers=headers))
                assert stream.status_code == 200
                streams.append(stream)
            assert "new token: rot" in reload(hub, _config(NEW))
            if initialized:  # the watches end the sessions at the reload, before anyone needs the room
                for stream in streams:
                    await asyncio.wait_for(stream.aread(), 20)
            # The principal's new token is not refused for sessions nobody can use any more.
            fresh = [await _open(http, NEW) for _ in range(2)]
            # The old sessions are gone: their GET streams close, their IDs are unknown.
            for stream in streams:
                await asyncio.wait_for(stream.aread(), 20)
            for session in sessions:
                gone = await http.post("/mcp", json=LIST, headers=ACCEPT | _in_session(NEW, session))
                assert gone.status_code == 404, gone.text
            for session in fresh:
                listed = await http.post("/mcp", json=LIST, headers=ACCEPT | _in_session(NEW, session))
                assert listed.status_code == 200 and '"tools"' in listed.text, listed.text
    except BaseException:
        hub.stop()
        raise
    return hub


async def test_sessions_whose_token_a_reload_rotated_end_with_their_get_streams(tmp_path: Path) -> None:
    """The sessions' tool-list watches end as UNAUTHENTICATED at the reload, and end them."""
    hub = await _rotated_sessions_end(tmp_path, initialized=True)
    try:
        assert "Traceback" not in hub.log()
    finally:
        hub.stop()


async def test_sessions_without_a_watch_free_their_places_once_their_token_is_rotated(tmp_path: Path) -> None:
    """Sessions that never sent `notifications/initialized` (so have no watch) but hold GET streams:
    the door ends them when their principal needs the room."""
    hub = await _rotated_sessions_end(tmp_path, initialized=False)
    try:
        assert "Traceback" not in hub.log()
    finally:
        hub.stop()


async def test_a_listen_stream_ends_when_its_token_is_rotated(tmp_path: Path) -> None:
    hub = start_hub(tmp_path, config=_config(OLD))
    listen = {
        "jsonrpc": "2.0",
        "id": "listen-1",
        "method": "subscriptions/listen",
        "params": {
            "notifications": {"toolsListChanged": True},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
    headers = ACCEPT | {
        "authorization": f"Bearer {OLD}",
        "mcp-protocol-version": MODERN,
        "mcp-method": "subscriptions/listen",
    }
    try:
        async with (
            httpx2.AsyncClient(base_url=hub.http_base, timeout=httpx2.Timeout(30, read=60)) as http,
            http.stream("POST", "/mcp", json=listen, headers=headers) as stream,
        ):
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            first = await asyncio.wait_for(anext(lines), 20)
            while not first.startswith("data:"):
                first = await asyncio.wait_for(anext(lines), 20)
            assert "notifications/subscriptions/acknowledged" in first, first
            assert "new token: rot" in reload(hub, _config(NEW))

            async def rest() -> list[str]:
                return [line async for line in lines if line.startswith("data:")]

            events = [orjson.loads(line[5:]) for line in await asyncio.wait_for(rest(), 20)]
        assert events, "the listen stream ended without an answer"
        answer = events[-1]
        assert answer["id"] == "listen-1" and answer["error"]["code"] == -32030, answer
        assert "not one this hub knows" in answer["error"]["message"], answer
        assert "listen stream has ended" in answer["error"]["message"], answer
    finally:
        hub.stop()

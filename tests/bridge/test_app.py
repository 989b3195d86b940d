"""The bridge's outer app: the MCP app is built on the first request that needs it, its lifespan is
owned and ended before the HTTP server waits for connections, and the hub and the sidecar do not
import the MCP SDK until an MCP client arrives."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from bridge.app import BridgeApp
from bridge.security import default_policy
from tests.bench.wire import ECHO_TEXT, mcp_call, mcp_session_call
from tests.support.clients import connect
from tests.support.hub import RunningHub, start_hub
from tests.support.sidecar import RunningSidecar, start_sidecar

pytestmark = pytest.mark.anyio


# --- the app itself, over ASGI -----------------------------------------------------------------


class Inner:
    """A real Starlette app whose lifespan and builds are counted."""

    def __init__(self, failures: int = 0) -> None:
        self.builds = 0
        self.events: list[str] = []
        self._failures = failures

    def build(self) -> ASGIApp:
        if self._failures:
            self._failures -= 1
            raise RuntimeError("the SDK is broken today")
        self.builds += 1

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            self.events.append("startup")
            yield
            self.events.append("shutdown")

        async def mcp(request: Request) -> JSONResponse:
            await asyncio.sleep(0.05)  # concurrent first requests overlap the build
            return JSONResponse({"served": True, "events": list(self.events)})

        return Starlette(routes=[Route("/mcp", mcp, methods=["GET", "POST"])], lifespan=lifespan)


@contextlib.asynccontextmanager
async def served(inner: Inner) -> AsyncIterator[tuple[BridgeApp, httpx2.AsyncClient]]:
    app = BridgeApp(inner.build, default_policy("127.0.0.1", [], []))
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1:7071") as http:
        yield app, http


async def test_the_mcp_app_is_built_once_by_the_first_requests_and_its_lifespan_started() -> None:
    inner = Inner()
    async with served(inner) as (app, http):
        assert inner.builds == 0 and app.app is None
        health = await http.get("/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        assert inner.builds == 0, "/healthz does not load the MCP app"
        answers = await asyncio.gather(*(http.post("/mcp") for _ in range(5)))
        assert [a.json() for a in answers] == [{"served": True, "events": ["startup"]}] * 5
        assert inner.builds == 1 and app.app is not None
        await app.aclose()
        assert inner.events == ["startup", "shutdown"]


async def test_after_close_requests_get_a_json_rpc_503_and_health_still_answers() -> None:
    inner = Inner()
    async with served(inner) as (app, http):
        await http.post("/mcp")
        await app.aclose()
        late = await http.post("/mcp")
        assert late.status_code == 503
        # -32033, as a call the hub refused a moment before for the same stop (UNAVAILABLE).
        assert late.json()["error"] == {"code": -32033, "message": "the server is shutting down"}
        health = await http.get("/healthz")  # answers, and tells a load balancer to look elsewhere
        assert health.status_code == 503
        assert health.json() == {"status": "unavailable", "reason": "the server is shutting down"}


async def test_closing_before_any_mcp_request_builds_nothing() -> None:
    inner = Inner()
    async with served(inner) as (app, http):
        await app.aclose()
        assert (await http.post("/mcp")).status_code == 503
    assert inner.builds == 0 and inner.events == []


async def test_a_failed_build_is_a_json_rpc_error_and_the_next_request_tries_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inner = Inner(failures=1)
    async with served(inner) as (app, http):
        failed = await http.post("/mcp")
        assert failed.status_code == 500
        assert failed.json()["error"]["code"] == -32603
        assert "could not be loaded" in failed.json()["error"]["message"]
        assert "the SDK is broken today" in caplog.text
        again = await http.post("/mcp")
        assert again.status_code == 200 and again.json()["served"] is True
        await app.aclose()


async def test_health_takes_get_and_head_only_and_the_guard_comes_first() -> None:
    inner = Inner()
    async with served(inner) as (_, http):
        assert (await http.head("/healthz")).status_code == 200
        refused = await http.post("/healthz")
        assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD"
        foreign = await http.post("/mcp", headers={"host": "evil.example.com"})
        assert foreign.status_code == 421
        assert (await http.get("/healthz", headers={"origin": "https://evil.example.com"})).status_code == 403
    assert inner.builds == 0


async def test_the_outer_lifespan_starts_nothing_and_its_shutdown_ends_the_inner_one() -> None:
    inner = Inner()
    app = BridgeApp(inner.build, default_policy("127.0.0.1", [], []))
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    lifespan = asyncio.create_task(app({"type": "lifespan", "state": {}}, to_app.get, from_app.put))
    await to_app.put({"type": "lifespan.startup"})
    assert (await from_app.get())["type"] == "lifespan.startup.complete"
    assert inner.builds == 0
    await app.load()
    assert inner.events == ["startup"]
    await to_app.put({"type": "lifespan.shutdown"})
    assert (await from_app.get())["type"] == "lifespan.shutdown.complete"
    await lifespan
    assert inner.events == ["startup", "shutdown"]


# --- in the hub and the sidecar ----------------------------------------------------------------


def _imported(log: str) -> set[str]:
    return {line.split("|")[-1].strip() for line in log.splitlines() if line.startswith("import time:")}


def _start_hub(tmp_path: Path, env: dict[str, str]) -> RunningHub:
    return start_hub(tmp_path, env=env)


def _start_sidecar(tmp_path: Path, env: dict[str, str]) -> RunningSidecar:
    return start_sidecar(tmp_path, {"packs": ["diagnostics"]}, http=True, env=env)


SERVERS: dict[str, Callable[[Path, dict[str, str]], RunningHub | RunningSidecar]] = {
    "hub": _start_hub,
    "sidecar": _start_sidecar,
}


@pytest.mark.parametrize("kind", SERVERS)
async def test_the_mcp_sdk_is_imported_by_the_first_mcp_request(kind: str, tmp_path: Path) -> None:
    server = SERVERS[kind](tmp_path, {"PYTHONPROFILEIMPORTTIME": "1"})
    try:
        assert server.mcp_url is not None
        async with connect("grpc", server.grpc, None, None) as client:
            assert (await client.call("echo", {"text": "grpc"})).text == "grpc"
        async with httpx2.AsyncClient(timeout=30) as http:
            assert (await http.get(server.mcp_url.removesuffix("/mcp") + "/healthz")).status_code == 200
            assert not {m for m in _imported(server.log()) if m.split(".")[0] in ("mcp", "mcp_types")}
            call = mcp_call(server.mcp_url, None)
            answer = await http.post(call.url, content=call.body, headers=dict(call.headers))
        assert answer.status_code == 200, answer.text
        assert answer.json()["result"]["content"] == [{"type": "text", "text": ECHO_TEXT}]
        log = server.log()
        assert "mcp.server.lowlevel.server" in _imported(log)
        assert "MCP bridge loaded for its first request" in log
    finally:
        server.stop()


@pytest.mark.parametrize("kind", SERVERS)
async def test_stopping_with_a_handshake_era_session_open_ends_it_without_waiting(
    kind: str, tmp_path: Path
) -> None:
    """A 2025-11-25 client holds its GET stream open. Stopping ends its session first, so the
    HTTP server does not wait its grace period for that stream and cancel it (an ERROR and a
    traceback in the log, before this was fixed)."""
    server = SERVERS[kind](tmp_path, {})
    assert server.mcp_url is not None
    try:
        opened = await asyncio.to_thread(mcp_session_call, server.mcp_url, None)  # initialize, initialized
        session = {k: v for k, v in opened.headers if k.lower() in ("mcp-session-id", "mcp-protocol-version")}
        async with httpx2.AsyncClient(timeout=httpx2.Timeout(30, read=60)) as http:
            get = {"accept": "text/event-stream"} | session
            async with http.stream("GET", server.mcp_url, headers=get) as stream:
                assert stream.status_code == 200
                server.process.send_signal(signal.SIGTERM)
                with anyio.fail_after(30):
                    async for _ in stream.aiter_bytes():  # the server ends the stream
                        pass
            assert await asyncio.to_thread(server.process.wait, 30) == 0
    finally:
        server.stop()
    log = server.log()
    # Had the session been left open, uvicorn would have waited out its 2 s grace and said so.
    assert "timeout graceful shutdown exceeded" not in log and " ERROR " not in log, log


@pytest.mark.parametrize("era", ["2026-07-28", "2025-11-25"])
@pytest.mark.parametrize("kind", SERVERS)
def test_stopping_while_a_body_is_still_coming_answers_503_at_once(
    kind: str, era: str, tmp_path: Path
) -> None:
    """A client that has sent half its body when the server stops used to get a 500 two seconds
    later, when uvicorn cancelled the request, and the log an ERROR with a traceback."""
    server = SERVERS[kind](tmp_path, {})
    assert server.mcp_url is not None
    url = urlsplit(server.mcp_url)
    modern = "mcp-protocol-version: 2026-07-28\r\nmcp-method: tools/call\r\nmcp-name: echo\r\n"
    head = (
        f"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1:{url.port}\r\ncontent-type: application/json\r\n"
        f"accept: application/json, text/event-stream\r\n{modern if era.startswith('2026') else ''}"
        "content-length: 1000\r\n\r\n"
    )
    try:
        call = mcp_call(server.mcp_url, None)  # loads the MCP app: the request below reaches it
        assert (
            httpx2.post(call.url, content=call.body, headers=dict(call.headers), timeout=30).status_code
            == 200
        )
        with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
            sock.sendall(head.encode() + b'{"jsonrpc": "2.0", ')
            time.sleep(0.3)  # the request is in, waiting for the rest of its body
            stopped_at = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert server.process.wait(30) == 0
        waited = time.monotonic() - stopped_at
    finally:
        server.stop()
    assert answer.startswith(b"HTTP/1.1 503"), answer[:300]
    assert b'"the server is shutting down"' in answer
    assert waited < 1.9, waited  # not uvicorn's 2 s grace (the margin below it is for a busy machine)
    log = server.log()
    assert " ERROR " not in log and "Traceback" not in log, log

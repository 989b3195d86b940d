"""The bridge's ASGI app as a server runs it: the Host/Origin guard, `/healthz`, and the MCP app
behind them, built when the first request needs it.

Importing the MCP SDK and building its server costs about 20 MB and 0.4 s. A hub or sidecar that
serves only gRPC, or has not had an MCP client yet, does not pay that. The MCP app's lifespan
(the SDK's session manager) runs in a task this app owns. So a stopping server can end the MCP
sessions, and the GET streams that handshake-era clients hold open, *before* it waits for its
connections to close, rather than waiting out its grace period and cancelling them.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_local.memory import settle_memory

from .security import HostOriginGuard, OriginPolicy

if TYPE_CHECKING:
    from .hubclient import ToolHubClient
    from .options import BridgeOptions

__all__ = ["BridgeApp", "bridge_app"]

logger = logging.getLogger(__name__)

SERVER_STOPPING = -32033
"""JSON-RPC code for a request that arrives while the server stops: the one the bridge gives gRPC's
UNAVAILABLE (`bridge/errors.py`), which is what a call refused by the hub's drain just before gets."""


class _Stopping(Exception):
    pass


async def _respond(
    send: Send, status: int, payload: Any, *, extra: Sequence[tuple[bytes, bytes]] = (), body: bool = True
) -> None:
    data = orjson.dumps(payload)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data if body else b""})


async def _health(scope: Scope, send: Send, problem: str | None) -> None:
    method = scope["method"]
    if method in ("GET", "HEAD") and problem is not None:
        # A load balancer sends callers elsewhere: this server refuses every call for now.
        await _respond(send, 503, {"status": "unavailable", "reason": problem}, body=method == "GET")
    elif method in ("GET", "HEAD"):
        await _respond(send, 200, {"status": "ok"}, body=method == "GET")
    else:
        await _respond(
            send, 405, {"error": f"{method} is not allowed here; use GET"}, extra=[(b"allow", b"GET, HEAD")]
        )


def _rpc_error(code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}


class _Lifespan:
    """An ASGI app's lifespan, run in a task of its own and stepped by its owner."""

    def __init__(self, app: ASGIApp, state: dict[str, Any]) -> None:
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": state}
        self._task = asyncio.create_task(self._run(app, scope), name="mcphub-bridge-lifespan")

    async def _run(self, app: ASGIApp, scope: Scope) -> None:
        try:
            await app(scope, self._inbox.get, self._outbox.put)
        except Exception as exc:
            await self._outbox.put({"type": "lifespan.failed", "message": f"{type(exc).__name__}: {exc}"})
        else:
            await self._outbox.put({"type": "lifespan.ended", "message": "the app's lifespan ended early"})

    async def step(self, event: str) -> None:
        """Send `lifespan.{event}` and wait for the app to complete it; RuntimeError saying why not."""
        await self._inbox.put({"type": f"lifespan.{event}"})
        message = await self._outbox.get()
        if message["type"] != f"lifespan.{event}.complete":
            raise RuntimeError(f"the MCP app's {event} failed: {message.get('message') or message['type']}")

    async def stop(self) -> None:
        try:
            await self.step("shutdown")
        finally:
            try:
                await asyncio.wait_for(self._task, 5)
            except TimeoutError:
                logger.warning("the MCP app's lifespan did not end within 5 s after shutdown; cancelled it")


class BridgeApp:
    """ASGI app: the Host/Origin guard in front of everything, `/healthz`, and the MCP app built
    by `build()` when the first request for it arrives (`imports` are imported first, off the
    event loop, so gRPC calls are served while they load; then `loaded()` runs).

    `aclose()` ends the MCP app's lifespan; `HttpServer.stop` calls it once the server has stopped
    accepting connections and before it waits for the open ones. Requests after that get 503.
    """

    def __init__(
        self,
        build: Callable[[], ASGIApp],
        policy: OriginPolicy,
        *,
        imports: Sequence[str] = (),
        loaded: Callable[[], None] | None = None,
        health: Callable[[], str | None] | None = None,
    ) -> None:
        """`health`: why the server behind the bridge refuses every call right now (its audit log
        cannot be written, it is stopping), or None; `/healthz` answers 503 with it."""
        self.app: ASGIApp | None = None
        self._health = health
        """The MCP app, once built."""
        self._build = build
        self._imports = tuple(imports)
        self._loaded = loaded
        self._guarded = HostOriginGuard(self._route, policy)
        self._loading: asyncio.Task[ASGIApp] | None = None
        self._lifespan: _Lifespan | None = None
        self._state: dict[str, Any] = {}
        self._stopping = False
        self._reading: set[asyncio.Task[Any]] = set()
        """Requests waiting for more of their body."""
        self._cut: set[asyncio.Task[Any]] = set()
        """Requests `aclose` cancelled while they waited for their body."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._serve_lifespan(receive, send)
        else:
            await self._guarded(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/healthz":
            problem = "the server is shutting down" if self._stopping else None
            await _health(scope, send, problem or (self._health() if self._health is not None else None))
            return
        if self._stopping:
            await _respond(send, 503, _rpc_error(SERVER_STOPPING, "the server is shutting down"))
            return
        app = self.app
        if app is None:
            try:
                app = await self.load()  # not stopping (checked above, nothing awaited between)
            except Exception:
                logger.exception("could not load the MCP bridge")
                await _respond(
                    send, 500, _rpc_error(-32603, "the MCP bridge could not be loaded; see the server log")
                )
                return
            if self._stopping:  # it stopped while the MCP app loaded
                await _respond(send, 503, _rpc_error(SERVER_STOPPING, "the server is shutting down"))
                return
        if self._state:  # what the MCP app's lifespan put in its state, as a server passes it on
            scope = {**scope, "state": {**self._state, **scope.get("state", {})}}
        task = asyncio.current_task()
        assert task is not None

        body_done = False

        async def tracked() -> Message:
            # While the body is still coming, a stopping server may cut the request short (`aclose`);
            # once it is in, later receives (the SDK's disconnect watches) are left alone.
            nonlocal body_done
            if body_done:
                return await receive()
            self._reading.add(task)
            try:
                message = await receive()
            finally:
                self._reading.discard(task)
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        try:
            await app(scope, tracked, send)
        except asyncio.CancelledError:
            if task not in self._cut:
                raise
            # Stopping while the client was still sending its body: it gets a precise 503 now,
            # rather than the 500 and the ERROR traceback of a task uvicorn cancels 2 s later.
            self._cut.discard(task)
            task.uncancel()
            await _respond(send, 503, _rpc_error(SERVER_STOPPING, "the server is shutting down"))
        except Exception as exc:
            from starlette.requests import ClientDisconnect  # loaded with the MCP app by now

            if not isinstance(exc, ClientDisconnect):
                raise
            # The client hung up mid-request: nobody to answer, and nothing wrong on this side.
            logger.debug("a client disconnected before its request was read: %s", scope["path"])

    async def load(self) -> ASGIApp:
        """The MCP app, built (and its lifespan started) now if it is not yet."""
        if self.app is not None:
            return self.app
        if self._stopping:
            raise _Stopping
        if self._loading is None:
            self._loading = asyncio.create_task(self._load(), name="mcphub-bridge-load")
        return await asyncio.shield(self._loading)

    async def _load(self) -> ASGIApp:
        started = time.perf_counter()
        try:
            for name in self._imports:
                await asyncio.to_thread(importlib.import_module, name)
            app = self._build()
            lifespan = _Lifespan(app, self._state)
            await lifespan.step("startup")
        except BaseException:
            self._loading = None
            raise
        self._lifespan, self.app = lifespan, app
        if self._loaded is not None:
            self._loaded()
        logger.info("MCP bridge loaded for its first request in %.2f s", time.perf_counter() - started)
        return app

    async def aclose(self) -> None:
        """End the MCP app's lifespan (its sessions and their streams); later requests get 503."""
        self._stopping = True
        for task in list(self._reading):
            self._cut.add(task)
            task.cancel("the server is shutting down")
        if self._loading is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._loading)
        lifespan, self._lifespan = self._lifespan, None
        if lifespan is not None:
            await lifespan.stop()

    async def _serve_lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.aclose()
                except Exception as exc:
                    await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                return


def bridge_app(
    hub: ToolHubClient,
    options: BridgeOptions,
    policy: OriginPolicy,
    health: Callable[[], str | None] | None = None,
) -> BridgeApp:
    """The bridge in front of `hub`: the MCP SDK is imported, and the MCP server built, on the
    first request that needs them."""

    def build() -> ASGIApp:
        from .server import build_mcp_server, mcp_app

        return mcp_app(build_mcp_server(hub, options), options, hub)

    # Settled as the server settles after start-up: what the SDK loaded is frozen out of the
    # collector's way, so full collections during calls do not walk it.
    return BridgeApp(build, policy, imports=("bridge.server",), loaded=settle_memory, health=health)

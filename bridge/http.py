"""Serving an ASGI app (the bridge) with uvicorn on a socket we bind ourselves, so port 0 works."""

from __future__ import annotations

import asyncio
import socket

import uvicorn
from starlette.types import ASGIApp

__all__ = ["HttpServer"]


class HttpServer:
    """One uvicorn server on `host:port` (port 0: any free port), started and stopped by the caller."""

    def __init__(self, app: ASGIApp, host: str, port: int) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None
        self.port = 0

    def bind(self) -> int:
        """Take the port now (a busy one fails here, before anything slow has started)."""
        if self._socket is not None:
            return self.port
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
        except OSError as exc:
            sock.close()
            raise OSError(f"cannot listen for HTTP on {self._host}:{self._port}: {exc.strerror}") from exc
        sock.listen(1024)
        sock.setblocking(False)
        self._socket = sock
        self.port = sock.getsockname()[1]
        return self.port

    async def start(self) -> int:
        self.bind()
        sock = self._socket
        assert sock is not None
        config = uvicorn.Config(
            self._app,
            lifespan="on",
            log_config=None,
            access_log=False,
            ws="none",
            timeout_graceful_shutdown=2,
            server_header=False,
        )
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self._server = server
        self._task = asyncio.create_task(server.main_loop(), name="mcphub-http")
        return self.port

    async def stop(self) -> None:
        """Stop accepting, let the app end what it holds open (`BridgeApp.aclose`: the MCP sessions
        and their GET streams), then wait up to 2 s for the connections left and stop."""
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        await self._task
        aclose = getattr(self._app, "aclose", None)
        if aclose is not None:
            await aclose()
        await self._server.shutdown(sockets=[self._socket] if self._socket else None)
        self._server = None

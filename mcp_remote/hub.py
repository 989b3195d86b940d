"""The hub: tool packs, the dispatch pipeline, the gRPC server and the MCP bridge, in one process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import uvicorn

from bridge import BridgeOptions, HubClient, build_asgi_app, build_mcp_server, default_policy
from mcp_local.errors import ConfigError
from mcp_local.outputs import OutputStore, output_read_tool
from mcp_local.packs import PackEnv, ToolPack, load_pack
from mcp_local.pipeline import Authenticate, Authorize, Pipeline, ResolveTool, Stage, ValidateArguments
from mcp_local.principals import Authenticator, OpenAccess, Principal
from mcp_local.redaction import Redactor
from mcp_local.registry import ToolRegistry
from mcp_local.servicer import ToolHubServicer, start_grpc_server

from .auth import TokenAuthenticator
from .config import Address, HubConfig
from .federation import Federation

__all__ = ["Hub", "HubAddresses", "read_hub_file"]

logger = logging.getLogger(__name__)

HUB_FILE = "hub.json"


@dataclass(frozen=True, slots=True)
class HubAddresses:
    grpc: str
    mcp_url: str | None


def _dial_address(bound: Address, port: int) -> str:
    """Where a local client reaches a server bound to `bound` (wildcards become loopback)."""
    host = bound.host
    if host in ("0.0.0.0", ""):  # noqa: S104 - a comparison
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def read_hub_file(state_dir: Path) -> dict[str, Any] | None:
    """The addresses a running hub wrote into its state directory, if any."""
    try:
        data = json.loads((state_dir / HUB_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class Hub:
    def __init__(self, config: HubConfig, environ: Mapping[str, str]) -> None:
        self.config = config
        self.registry = ToolRegistry()
        self.outputs = OutputStore()
        self.redactor = Redactor()
        self.authenticator = self._authenticator(config, environ)
        self.pipeline = Pipeline(self.stages())
        self.federation = Federation(self.registry, self.authenticator, config.state_dir)
        self.packs: list[ToolPack] = []
        self.addresses: HubAddresses | None = None
        self._grpc: grpc.aio.Server | None = None
        self._http: uvicorn.Server | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._http_socket: socket.socket | None = None
        self._bridge_hub: HubClient | None = None

    @staticmethod
    def _authenticator(config: HubConfig, environ: Mapping[str, str]) -> Authenticator:
        if not config.principals:
            return OpenAccess()
        return TokenAuthenticator(
            (p.resolve_token(environ), Principal(p.name, tuple(p.tools), frozenset(p.roles)))
            for p in config.principals
        )

    def stages(self) -> list[Stage]:
        """The dispatch path, in order. Later parts of the hub insert their stages here."""
        return [
            Authenticate(self.authenticator),
            ResolveTool(self.registry),
            Authorize(),
            ValidateArguments(self.registry),
        ]

    async def start(self) -> HubAddresses:
        config = self.config
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self._load_packs()
        servicer = ToolHubServicer(self.registry, self.pipeline, self.authenticator)
        self._grpc, grpc_port = await start_grpc_server(
            str(config.grpc), servicer, extra_services=[self.federation.service()]
        )
        grpc_dial = _dial_address(config.grpc, grpc_port)
        mcp_url = None
        if config.http is not None:
            mcp_url = await self._start_bridge(config.http, grpc_dial)
        self.addresses = HubAddresses(grpc=grpc_dial, mcp_url=mcp_url)
        self._write_hub_file()
        return self.addresses

    def listen_addresses(self) -> tuple[str, ...]:
        """The hub's own addresses once bound (packs use them to refuse calls back into the hub)."""
        if self.addresses is None:
            return ()
        found = [self.addresses.grpc]
        if self.addresses.mcp_url:
            found.append(self.addresses.mcp_url.removeprefix("http://").removesuffix("/mcp"))
        return tuple(found)

    async def _load_packs(self) -> None:
        self.registry.set_source("hub:outputs", [output_read_tool(self.outputs)])
        env = PackEnv(
            state_dir=self.config.state_dir,
            outputs=self.outputs,
            redactor=self.redactor,
            listen_addresses=self.listen_addresses,
        )
        for spec in self.config.packs:
            pack = load_pack(spec.name, spec.options, env)
            await pack.start()
            self.packs.append(pack)
            try:
                self.registry.set_source(f"pack:{pack.name}", pack.tools())
            except ConfigError as exc:
                raise ConfigError(f"packs[{spec.name}]: {exc}") from exc
        logger.info("loaded %d tools from %d packs", len(self.registry), len(self.packs))

    async def _start_bridge(self, address: Address, grpc_dial: str) -> str:
        config = self.config
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address.host, address.port))
        except OSError as exc:
            sock.close()
            raise OSError(f"cannot listen for HTTP on {address}: {exc.strerror}") from exc
        sock.listen(1024)
        sock.setblocking(False)
        self._http_socket = sock
        port = sock.getsockname()[1]
        self._bridge_hub = HubClient(grpc_dial)
        options = BridgeOptions(max_body_bytes=config.max_request_bytes)
        app = build_asgi_app(
            build_mcp_server(self._bridge_hub, options),
            default_policy(address.host, config.allowed_hosts, config.allowed_origins),
            options,
        )
        uv_config = uvicorn.Config(
            app,
            lifespan="on",
            log_config=None,
            access_log=False,
            ws="none",
            timeout_graceful_shutdown=2,
            server_header=False,
        )
        uv_config.load()
        server = uvicorn.Server(uv_config)
        server.lifespan = uv_config.lifespan_class(uv_config)
        await server.startup(sockets=[sock])
        self._http = server
        self._http_task = asyncio.create_task(server.main_loop(), name="mcphub-http")
        host = _dial_address(address, port)
        return f"http://{host}/mcp"

    def _write_hub_file(self) -> None:
        assert self.addresses is not None
        path = self.config.state_dir / HUB_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"grpc": self.addresses.grpc, "mcp": self.addresses.mcp_url, "pid": os.getpid()})
        )
        tmp.replace(path)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking calls, give running ones `grace` seconds, then stop the packs."""
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            await self._http_task
            await self._http.shutdown(sockets=[self._http_socket] if self._http_socket else None)
            self._http = None
        if self._bridge_hub is not None:
            await self._bridge_hub.close()
        await self.federation.close()
        if self._grpc is not None:
            await self._grpc.stop(grace)
            self._grpc = None
        for pack in reversed(self.packs):
            try:
                await pack.stop()
            except Exception:  # one pack failing to stop must not keep the others running
                logger.exception("pack %s did not stop cleanly", pack.name)
        self.packs.clear()
        with contextlib.suppress(OSError):
            hub_file = self.config.state_dir / HUB_FILE
            if (read_hub_file(self.config.state_dir) or {}).get("pid") == os.getpid():
                hub_file.unlink()

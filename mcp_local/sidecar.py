"""The sidecar: one sandbox's own tools, served to the agent next to it and (optionally) to the hub.

    agent --MCP (HTTP on loopback, or stdio)--> bridge --gRPC--> ToolHub (this sidecar)
    hub   <--one gRPC stream, dialled from here-- HubLink ------> the same registry and packs

It loads the packs the image's manifest names, serves `ToolHub` on loopback
and, when asked, the MCP bridge in front of it, and registers with a hub. It
imports nothing of `mcp_remote` and loads the bridge (the MCP SDK, uvicorn)
only when MCP is served, so an image that only needs gRPC and registration
stays small.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from .addresses import split_host_port
from .errors import ConfigError
from .hublink import HubLink, LinkState
from .linkhealth import LinkHealth
from .packs import PackEnv, ToolPack, start_packs, stop_packs
from .pipeline import (
    Authenticate,
    Authorize,
    InFlight,
    Pipeline,
    RedactErrors,
    ResolveTool,
    ValidateArguments,
)
from .principals import OpenAccess, Principal
from .redaction import Redactor
from .registry import ToolRegistry
from .service import ToolService
from .servicer import ToolHubServicer, start_grpc_server
from .settings import SidecarSettings
from .stalls import StallWatch
from .workspace import Workspace

if TYPE_CHECKING:
    from bridge.http import HttpServer

__all__ = ["BUILTIN_PACKS", "Sidecar", "SidecarAddresses", "SidecarSettings", "split_address"]

logger = logging.getLogger(__name__)

STOP_GRACE_S = 3.0
"""On SIGTERM, how long running calls may finish before they are stopped (and told why)."""


@dataclass(frozen=True, slots=True)
class _Spec:
    name: str
    options: Mapping[str, Any]
    ref: str


BUILTIN_PACKS = {
    name: f"mcp_local.packs.{name}:create_pack" for name in ("sql", "files", "git", "process", "diagnostics")
}
"""The packs that ship with the sidecar, loaded without scanning entry points (which costs memory)."""

AGENT = Principal("agent", ("*",))
"""Every caller of the sidecar's own endpoints: they listen on the sandbox's loopback only."""


def split_address(value: str, *, key: str) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT` or `:PORT` -> (host, port); the host must be a loopback address."""
    host, sep, port = split_host_port(value)
    host = host or "127.0.0.1"
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{key}: expected HOST:PORT (e.g. 127.0.0.1:7072), got {value!r}")
    loopback = host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
    if not loopback:
        raise ConfigError(
            f"{key}: {value} is not a loopback address; the sidecar serves its own sandbox only "
            "(others reach its tools through the hub: use --hub)"
        )
    return host, int(port)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class SidecarAddresses:
    grpc: str
    mcp_url: str | None


class Sidecar:
    def __init__(self, settings: SidecarSettings, *, version: str = "") -> None:
        self.settings = settings
        self.registry = ToolRegistry()
        self.redactor = Redactor()
        self.authenticator = OpenAccess(AGENT)
        self.calls = InFlight()
        self.pipeline = Pipeline(
            [
                self.calls,
                RedactErrors(self.redactor),
                Authenticate(self.authenticator),
                ResolveTool(self.registry),
                Authorize(),
                ValidateArguments(self.registry),
            ]
        )
        self._service = ToolService(self.registry, self.pipeline, self.authenticator)
        self.packs: list[ToolPack] = []
        self.addresses: SidecarAddresses | None = None
        self.link: HubLink | None = None
        self._version = version
        self._stalls = StallWatch()
        self._grpc: grpc.aio.Server | None = None
        self._http: HttpServer | None = None
        self._bridge_hub: Any = None

    async def load_packs(self) -> None:
        manifest = self.settings.manifest
        workspace = Workspace.at(manifest.workspace, key=f"{manifest.source}: workspace")
        env = PackEnv(
            state_dir=self.settings.state_dir,
            redactor=self.redactor,
            extra={"workspace": str(workspace.root), "environ": self.settings.environ},
        )
        specs = [_Spec(s.name, s.options, BUILTIN_PACKS.get(s.name, s.name)) for s in manifest.packs]
        # A database's DSN variable leaves this process's environment: the helpers packs start
        # (files_search's regex worker) run as the agent's uid, and would hold it.
        self.packs = await start_packs(specs, env, self.registry, os.environ)
        logger.info("loaded %d tools from %d packs", len(self.registry), len(self.packs))

    async def start(self) -> SidecarAddresses:
        s = self.settings
        if s.grpc is None and s.http is None and not s.stdio and s.hub is None:
            raise ConfigError("nothing to serve: give --grpc, --http, --stdio or --hub")
        grpc_host, grpc_port = split_address(s.grpc or "127.0.0.1:0", key="--grpc")
        http_addr = split_address(s.http, key="--http") if s.http else None
        self.settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._stalls.start()
        await self.load_packs()
        servicer = ToolHubServicer(self._service, speaker="sidecar")
        self._grpc, port = await start_grpc_server(
            _join(grpc_host, grpc_port),
            servicer,
            health_servicer=LinkHealth(self._link_state, self._service.streams),
        )
        grpc_dial = _join(grpc_host, port)
        mcp_url = None
        if http_addr is not None:
            mcp_url = await self._start_http(grpc_dial, *http_addr)
        if s.hub:
            self.link = HubLink(
                s.hub,
                s.token,
                s.sandbox or s.manifest.sandbox,
                self.registry,
                version=self._version,
                backoff=s.backoff,
                redactor=self.redactor,
                calls=self.calls,
            )
            self.link.start()
        self.addresses = SidecarAddresses(grpc_dial, mcp_url)
        return self.addresses

    def _link_state(self) -> tuple[str, LinkState] | None:
        return (self.link.target, self.link.state) if self.link is not None else None

    async def _start_http(self, grpc_dial: str, host: str, port: int) -> str:
        from bridge.app import bridge_app
        from bridge.http import HttpServer
        from bridge.options import BridgeOptions
        from bridge.security import default_policy

        from .localhub import LocalHub

        self._bridge_hub = LocalHub(self._service, speaker="sidecar")
        options = BridgeOptions(
            name="mcphub-sidecar",
            instructions=_INSTRUCTIONS,
            tool_input_schema=self.registry.header_schema_lookup(self.authenticator),
            authenticate=self.authenticator.authenticate,
        )
        # The MCP SDK is imported on the first MCP request (`bridge/app.py`).
        app = bridge_app(self._bridge_hub, options, default_policy(host, [], [], speaker="sidecar"))
        self._http = HttpServer(app, host, port)
        bound = await self._http.start()
        return f"http://{_join(host, bound)}/mcp"

    async def serve_stdio(self) -> None:
        """MCP on stdin/stdout until the client closes stdin."""
        from bridge import BridgeOptions, serve_stdio

        from .localhub import LocalHub

        await serve_stdio(
            LocalHub(self._service, speaker="sidecar"),
            BridgeOptions(name="mcphub-sidecar", instructions=_INSTRUCTIONS),
        )

    async def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Stop taking calls, give running ones `grace` seconds, stop the rest (their callers are
        told why), then stop the link, the servers and the packs. Calls from the hub count among
        them: the link ends once their answers are sent."""
        self._service.streams.close("the sandbox's sidecar is shutting down")  # open watches, at once
        await self.calls.drain(grace, "the sandbox's sidecar is shutting down")
        if self.link is not None:
            await self.link.stop()
        if self._http is not None:
            await self._http.stop()
            self._http = None
        if self._bridge_hub is not None:
            await self._bridge_hub.close()
            self._bridge_hub = None
        if self._grpc is not None:
            await self._grpc.stop(grace)
            self._grpc = None
        await stop_packs(self.packs)
        self.packs.clear()
        await self._stalls.stop()


_INSTRUCTIONS = (
    "mcphub sidecar: this sandbox's own tools (its databases, workspace files, git repository, processes)."
)

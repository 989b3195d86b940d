"""A configured cloud service: its routes, credential, client, principals and generated operations."""

from __future__ import annotations

import fnmatch
import ipaddress
import logging
import re
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

from mcp_local.errors import ConfigError

from ..addresses import IPAddress
from .client import ServiceClient
from .credentials import CredentialSource
from .netguard import AddressPolicy, literal_address
from .openapi import Operation, load_document, operations
from .routes import Route, RouteTable
from .settings import ServiceSettings

__all__ = ["Service", "build_service", "own_addresses"]

logger = logging.getLogger("mcphub.cloud")


@dataclass(frozen=True, slots=True, eq=False)
class Service:
    name: str
    settings: ServiceSettings
    routes: RouteTable
    credential: CredentialSource
    client: ServiceClient
    operations: tuple[Operation, ...]
    _principals: re.Pattern[str]

    def allows(self, principal: str) -> bool:
        return self._principals.match(principal) is not None

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {
            "service": self.name,
            "description": s.description,
            "base_url": s.base_url,
            "auth": s.auth.type,
            "routes": self.routes.describe(),
            "rate_limit": {"per_minute": s.rate_limit.per_minute, "burst": s.rate_limit.burst},
            "timeout_s": s.timeout_s,
        }


def own_addresses(listen: Callable[[], tuple[str, ...]]) -> Callable[[], Iterable[tuple[IPAddress, int]]]:
    """The hub's listening sockets as (address, port), read when asked (they are bound after packs load)."""

    def read() -> list[tuple[IPAddress, int]]:
        found = []
        for entry in listen():
            host, _, port = entry.rpartition(":")
            ip = literal_address(host)
            if ip is not None and port.isdigit():
                found.append((ip, int(port)))
        return found

    return read


def _principal_pattern(globs: Iterable[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs) or "(?!)")


def build_service(
    name: str,
    settings: ServiceSettings,
    *,
    environ: MutableMapping[str, str],
    register_secret: Callable[[str], None],
    listen: Callable[[], tuple[str, ...]],
) -> Service:
    """Build a service; raises `SecretMissing` when its credential is absent, `ConfigError` when wrong."""
    where = f"services.{name}"
    credential = CredentialSource(f"{where}.auth", settings.auth, environ, register_secret, scrub_env=False)
    ops: list[Operation] = []
    if settings.openapi is not None:
        doc = load_document(settings.openapi.document, f"{where}.openapi")
        ops = operations(doc, settings.openapi.operations, f"{where}.openapi")
    routes = [Route(frozenset(r.methods), tuple(r.paths), r.risk, "config") for r in settings.allow] + [
        Route(frozenset({op.method}), (op.path,), op.risk, op.operation_id) for op in ops
    ]
    policy = AddressPolicy.from_setting(settings.allow_private_network, own_addresses(listen))
    client = ServiceClient(name, settings, policy)
    literal = literal_address(client.base.host)
    if literal is not None and policy.problem(literal) is not None:
        # Not an error (DNS names can resolve anywhere too), but an operator should know at once.
        logger.warning(
            "%s.base_url names %s (%s): every call will be refused unless allow_private_network covers it",
            where,
            literal,
            policy.problem(literal),
        )
    if isinstance(settings.allow_private_network, list):
        for net in settings.allow_private_network:
            if ipaddress.ip_network(net, strict=False).num_addresses > 2**24:
                raise ConfigError(f"{where}.allow_private_network: {net} is too wide; list narrow networks")
    return Service(
        name=name,
        settings=settings,
        routes=RouteTable(routes, settings.risk),
        credential=credential,
        client=client,
        operations=tuple(ops),
        _principals=_principal_pattern(settings.principals),
    )

"""The SSRF guard: which addresses a service call may reach, checked at connect time.

A tool caller controls the path and, through redirects, the service controls
where the hub connects next. Neither may steer the hub at its own network:
private, loopback, link-local, shared (100.64/10), reserved, multicast and
unspecified addresses are refused, IPv4 written as one decimal or hex number
(`2130706433`, `0x7f000001`) or embedded in IPv6 (`::ffff:127.0.0.1`, 6to4,
NAT64) is unwrapped first, and cloud metadata endpoints are refused always.

The check runs inside the HTTP client's network backend: the host is resolved
once, every address it resolves to is checked, and the connection is made to
a checked address (never resolved again), so a DNS answer that changes between
check and connect (rebinding) cannot slip through. TLS still verifies the
certificate against the host name (SNI), because the HTTP layer above passes it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import httpcore2

from mcp_local.errors import ToolError

from ..addresses import METADATA_ADDRESSES, IPAddress, IPNetwork

__all__ = [
    "METADATA_ADDRESSES",
    "AddressPolicy",
    "AddressRefused",
    "GuardedBackend",
    "literal_address",
]

_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NUMERIC_HOST = re.compile(r"^(?:0x[0-9a-f]+|[0-9]+)(?:\.(?:0x[0-9a-f]+|[0-9]+)){0,3}$", re.IGNORECASE)


class AddressRefused(ToolError):
    """A call would connect to an address the guard does not allow."""


def literal_address(host: str) -> IPAddress | None:
    """The address a host written as an IP literal means, in any form a resolver accepts; else None.

    `127.0.0.1`, `[::1]`, `2130706433`, `0x7f000001`, `0177.0.0.1`, `127.1` all name loopback.
    """
    text = host.strip().strip("[]").rstrip(".")
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        pass
    if _NUMERIC_HOST.match(text):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def _unwrap(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo, NAT64), or the address itself."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip.teredo is not None:
            return ip.teredo[1]
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def _why_internal(ip: IPAddress) -> str | None:
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "a site-local address"
    if not ip.is_global:
        return "a non-global address"
    return None


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which addresses a service may reach. Pure: no sockets."""

    allow_private: bool = False
    """Any non-global address except metadata endpoints (operators and tests only)."""
    allowed_networks: tuple[IPNetwork, ...] = ()
    """Only these non-global networks (still never metadata endpoints)."""
    own_addresses: Callable[[], Iterable[tuple[IPAddress, int]]] = field(default=lambda: ())
    """The hub's own listening sockets: a service never calls back into the hub."""

    @classmethod
    def from_setting(
        cls,
        setting: bool | Sequence[str],
        own_addresses: Callable[[], Iterable[tuple[IPAddress, int]]] = lambda: (),
    ) -> AddressPolicy:
        if isinstance(setting, bool):
            return cls(allow_private=setting, own_addresses=own_addresses)
        nets = tuple(ipaddress.ip_network(n, strict=False) for n in setting)
        return cls(allowed_networks=nets, own_addresses=own_addresses)

    def problem(self, ip: IPAddress, port: int | None = None) -> str | None:
        """None when `ip` may be reached; otherwise what it is, for the refusal message."""
        if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
            ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
        inner = _unwrap(ip)
        for candidate in {ip, inner}:
            if candidate in METADATA_ADDRESSES:
                return "a cloud metadata endpoint"
        if inner.is_unspecified or ip.is_unspecified:
            # Connecting to 0.0.0.0 or :: reaches this host: refused even with
            # allow_private_network, like the hub's own addresses (it reaches those too).
            return "an unspecified address (0.0.0.0 or ::), which connects to this host"
        if port is not None:
            for own_ip, own_port in self.own_addresses():
                if own_port == port and (own_ip == inner or own_ip.is_unspecified):
                    return "the hub's own listening address"
        why = _why_internal(inner) or (_why_internal(ip) if inner is not ip else None)
        if why is None:
            return None
        if self.allow_private:
            return None
        if any(inner in net or ip in net for net in self.allowed_networks):
            return None
        return why


class GuardedBackend(httpcore2.AsyncNetworkBackend):
    """An httpcore network backend that resolves, checks, and connects to the checked address."""

    def __init__(self, policy: AddressPolicy, inner: httpcore2.AsyncNetworkBackend | None = None) -> None:
        self.policy = policy
        self._inner = inner or httpcore2.AnyIOBackend()

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address `host` stands for, each checked; raises `AddressRefused` if any is refused."""
        literal = literal_address(host)
        if literal is not None:
            found: list[IPAddress] = [literal]
        else:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
            except socket.gaierror as exc:
                raise httpcore2.ConnectError(f"cannot resolve {host}: {exc.strerror}") from exc
            found = []
            for info in infos:
                ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
                if ip not in found:
                    found.append(ip)
        if not found:
            raise httpcore2.ConnectError(f"{host} resolves to no address")
        for ip in found:
            why = self.policy.problem(ip, port)
            if why is not None:
                shown = host if literal is None or host.strip("[]") == str(ip) else f"{host} ({ip})"
                via = f" (it resolves to {ip})" if literal is None else ""
                raise AddressRefused(
                    f"refused to connect to {shown}{via}: {why}. Calls may only reach public addresses "
                    "(an operator can allow a private network per service with allow_private_network)"
                )
        return found

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await self.resolve(host, port)
        except TimeoutError as exc:
            raise httpcore2.ConnectTimeout(f"resolving {host} timed out") from exc
        last: Exception | None = None
        for ip in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(ip), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        raise AddressRefused("unix sockets are not reachable through the cloud pack")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

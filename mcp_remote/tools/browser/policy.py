"""Where the browser may go: the URL policy, as plain functions with no sockets in them.

Every request the browser makes (navigations, redirects, subresources, WebSockets)
passes through the policy proxy (`proxy.py`), which resolves the host itself and asks
`UrlPolicy.check_target` with the addresses it will connect to; tools ask
`UrlPolicy.check_url` before navigating, for a clear refusal.

The order of a decision, first match wins:

1. a scheme other than http, https (and `about:blank`) is refused (`file:`, `chrome:`, `view-source:`);
2. the hub's own listening ports (gRPC, MCP, this proxy), on any address of this machine, are
   refused (no exception);
3. a rule of the `block` option refused;
4. a rule of the `allow` option allowed;
5. what is blocked by default (cloud metadata names and addresses, loopback and this machine's
   other addresses, link-local, unspecified and multicast addresses) refused;
6. everything else follows the `default` option (`allow` or `block`).

A rule is a host name (`example.com`), a wildcard (`*.example.com`, which also
matches `example.com`), an IP address or CIDR network (`10.0.0.0/8`, `::1`), each
with an optional port (`127.0.0.1:8080`, `[::1]:8080`, `example.com:*`).
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..addresses import METADATA_ADDRESSES, IPAddress, IPNetwork

__all__ = [
    "DEFAULT_BLOCKED_NAMES",
    "METADATA_ADDRESSES",
    "HostRule",
    "IPAddress",
    "UrlPolicy",
    "literal_ip",
    "parse_rule",
]

DEFAULT_BLOCKED_NAMES: tuple[str, ...] = (
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
)
NAVIGABLE_SCHEMES = ("http", "https")
PROXIED_SCHEMES = ("http", "https", "ws", "wss")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@dataclass(frozen=True, slots=True)
class HostRule:
    """One entry of the `allow` or `block` option."""

    text: str
    name: str | None = None
    network: IPNetwork | None = None
    port: int | None = None

    def matches(self, host: str, port: int, addresses: Iterable[IPAddress]) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.name is not None:
            host = host.lower().rstrip(".")
            if self.name.startswith("*."):
                return host == self.name[2:] or fnmatch.fnmatchcase(host, self.name)
            return fnmatch.fnmatchcase(host, self.name)
        assert self.network is not None
        literal = literal_ip(host)
        candidates = [literal] if literal is not None else list(addresses)
        return any(ip.version == self.network.version and ip in self.network for ip in candidates)


def parse_rule(text: str) -> HostRule:
    """A rule from its text; raises ValueError naming what was expected."""
    raw = text.strip()
    if not raw:
        raise ValueError("an empty rule; expected a host, *.domain, an IP address or a CIDR network")
    host, port_text = raw, ""
    if raw.startswith("["):
        host, _, rest = raw[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected [IPv6]:PORT")
        port_text = rest[1:]
    elif raw.count(":") == 1:
        host, _, port_text = raw.partition(":")
    port: int | None = None
    if port_text and port_text != "*":
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{text!r}: the port must be 1-65535 or *")
        port = int(port_text)
    try:
        network = ipaddress.ip_network(host, strict=False)
    except ValueError:
        name = host.lower().rstrip(".")
        if not name or any(c in name for c in "/ \t@"):
            raise ValueError(
                f"{text!r}: expected a host name, *.domain, an IP address or a CIDR network"
            ) from None
        return HostRule(raw, name=name, port=port)
    return HostRule(raw, network=network, port=port)


def literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _unmapped(ip: IPAddress) -> IPAddress:
    """The IPv4 address inside `::ffff:a.b.c.d`, which connects to it."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _blocked_by_default(ip: IPAddress) -> str | None:
    ip = _unmapped(ip)
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address (this machine)"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_unspecified:
        return "the unspecified address (this machine)"
    if ip.is_multicast:
        return "a multicast address"
    return None


def _host_port(address: str) -> tuple[str, int] | None:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class UrlPolicy:
    """The decision, given the rules, the default and the hub's own addresses."""

    allow: tuple[HostRule, ...] = ()
    block: tuple[HostRule, ...] = ()
    default_allow: bool = True
    hub_addresses: Callable[[], Sequence[str]] = field(default=lambda: ())
    """The hub's listening `host:port` list (known once it has bound)."""
    local_addresses: frozenset[IPAddress] = frozenset()
    """This machine's own addresses: blocked by default like loopback, the hub's ports always."""

    @classmethod
    def build(
        cls,
        allow: Iterable[str] = (),
        block: Iterable[str] = (),
        *,
        default_allow: bool = True,
        hub_addresses: Callable[[], Sequence[str]] = lambda: (),
        local_addresses: Iterable[IPAddress] = (),
    ) -> UrlPolicy:
        return cls(
            tuple(parse_rule(r) for r in allow),
            tuple(parse_rule(r) for r in block),
            default_allow,
            hub_addresses,
            frozenset(local_addresses),
        )

    def check_url(self, url: str, addresses: Iterable[IPAddress] = ()) -> str | None:
        """Why `url` may not be opened in a tab, or None when it may."""
        if url == "about:blank":
            return None
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            return f"{url!r} is not a valid URL ({exc})"
        scheme = parts.scheme.lower()
        if scheme not in NAVIGABLE_SCHEMES:
            shown = f"{scheme}:" if scheme else "a URL without a scheme"
            return f"{shown} URLs may not be opened (only http and https)"
        host = parts.hostname or ""
        if not host:
            return f"{url!r} has no host"
        return self.check_target(host, port or _DEFAULT_PORTS[scheme], addresses)

    def check_target(
        self, host: str, port: int, addresses: Iterable[IPAddress] = (), *, local: Iterable[IPAddress] = ()
    ) -> str | None:
        """Why the browser may not connect to `host:port` (resolved to `addresses`), or None.

        `local`: addresses found to be this machine's besides `local_addresses` (the proxy sees
        that from a connection whose two ends have one address).
        """
        host = host.lower().rstrip(".").strip("[]")
        literal = literal_ip(host)
        ips = [literal] if literal is not None else list(addresses)
        where = f"{host}:{port}"
        mine = self.local_addresses.union(local)
        if self._is_hub(host, port, ips, mine):
            return f"{where} is this hub's own address"
        for rule in self.block:
            if rule.matches(host, port, ips):
                return f"{where} is blocked by the browser option block ({rule.text!r})"
        for rule in self.allow:
            if rule.matches(host, port, ips):
                return None
        if host in DEFAULT_BLOCKED_NAMES:
            return f"{where} is a cloud metadata service, blocked by default"
        for ip in ips:
            reason = _blocked_by_default(ip)
            if reason is None and _unmapped(ip) in mine:
                reason = "an address of this machine"
            if reason is not None:
                resolved = "" if literal is not None else f" (resolves to {ip})"
                return (
                    f"{where}{resolved} is {reason}, blocked by default; an operator can allow it "
                    "with the browser option allow"
                )
        if not self.default_allow:
            return f"{where} is not in the browser option allow (default: block)"
        return None

    def _is_hub(self, host: str, port: int, ips: Sequence[IPAddress], mine: frozenset[IPAddress]) -> bool:
        for address in self.hub_addresses():
            parsed = _host_port(address)
            if parsed is None or parsed[1] != port:
                continue
            hub_ip = literal_ip(parsed[0])
            if host == parsed[0] or host == "localhost":
                return True
            for ip in ips:
                if ip == hub_ip or ip.is_loopback or ip.is_unspecified or _unmapped(ip) in mine:
                    return True
        return False

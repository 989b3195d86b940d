"""`HOST:PORT` as every command reads it: the hub's binds and `--hub`, the sidecar's binds,
`--hub` and `local health --grpc`. Each caller says what it accepts of the parts (a port of 0,
an empty host, only loopback) in its own words; the split and the host's check are shared, so a
scheme such as `http://` is refused alike everywhere. Standard library only."""

from __future__ import annotations

import re

__all__ = ["host_problem", "split_host_port"]

_HOST = re.compile(r"[A-Za-z0-9._%:-]*")
"""Host names, IPv4 and IPv6 addresses (with a `%zone`); empty is the caller's to judge."""


def split_host_port(value: str) -> tuple[str, str, str]:
    """`HOST:PORT`, `[V6]:PORT` or `:PORT` as (host, separator, port text); the separator is
    empty when `value` has none."""
    text = value.strip()
    return text[1:].partition("]:") if text.startswith("[") else text.rpartition(":")


def host_problem(host: str, value: str, example: str) -> str | None:
    """What is wrong with `host` (of `value`), or None: a URL's scheme, or characters no host
    name or address has. `example` is a good address to show."""
    if "://" in host:  # `http://host:7070` was taken for a host named "http://host"
        return f"expected HOST:PORT, without a scheme (e.g. {example}), got {value!r}"
    if not _HOST.fullmatch(host):
        return f"{host!r} of {value!r} is no host name or IP address (expected HOST:PORT)"
    return None

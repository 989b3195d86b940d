"""What `mcphub local serve` decided before serving: the manifest and the addresses.

Standard library only (and the manifest's dataclasses), so that the command can build them
without loading gRPC, and hand them to the process that serves (see `mcp_local.serving`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .addresses import host_problem, split_host_port
from .manifest import Manifest
from .plainerrors import ConfigError

__all__ = ["Backoff", "SidecarSettings", "hub_address"]


def hub_address(value: str, *, key: str, example: str = "hub.internal:7070") -> str:
    """A hub's gRPC address, `HOST:PORT` or `[V6]:PORT`, as given; a ConfigError naming `key` when
    it is none: a sidecar given `http://hub:7070` or port 0 dialled it for ever, logging a
    resolver's error each time, and `local health` said its link was down."""
    host, sep, port = split_host_port(value)
    # A scheme is named even when the rest is wrong too (`http://hub:0`).
    if "://" not in host and (not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535):
        raise ConfigError(f"{key}: expected HOST:PORT (e.g. {example}), got {value!r}")
    if problem := host_problem(host, value, example):
        raise ConfigError(f"{key}: {problem}")
    return value.strip()


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: `first_s` doubling up to `max_s`.

    Full jitter by default (a delay anywhere from half of `first_s` up to the step); with
    `min_share`, never less than that share of the step.
    """

    first_s: float = 0.5
    max_s: float = 30.0
    min_share: float = 0.0

    def delay(self, attempt: int) -> float:
        ceiling = min(self.max_s, self.first_s * (1 << min(attempt, 30)))
        floor = max(min(self.first_s, ceiling) / 2, ceiling * self.min_share)
        # A uniform draw from os.urandom: `random` would cost every sidecar its module for this.
        return floor + (ceiling - floor) * (int.from_bytes(os.urandom(7), "big") / (1 << 56))


@dataclass(frozen=True, slots=True)
class SidecarSettings:
    manifest: Manifest
    grpc: str | None = "127.0.0.1:7072"
    """Where ToolHub listens; None serves it only internally (for --http/--stdio) on a free port."""
    http: str | None = None
    """Where the MCP bridge listens (Streamable HTTP at /mcp), or None."""
    stdio: bool = False
    hub: str | None = None
    token: str | None = None
    sandbox: str | None = None
    backoff: Backoff = field(default_factory=Backoff)
    environ: Mapping[str, str] = field(default_factory=dict)
    state_dir: Path = Path("/tmp/mcphub-sidecar")  # noqa: S108 - only a default for pack scratch space

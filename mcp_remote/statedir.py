"""The hub's state directory: where it is by default, and the file naming the running hub's addresses.

Kept free of heavy imports: client commands read it to find the local hub.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mcp_local.plainerrors import ConfigError

__all__ = [
    "DEFAULT_GRPC",
    "DEFAULT_HTTP",
    "HUB_FILE",
    "StateError",
    "default_state_dir",
    "read_hub_file",
    "remove_hub_file",
    "write_hub_file",
]

DEFAULT_GRPC = "127.0.0.1:7070"
DEFAULT_HTTP = "127.0.0.1:7071"
HUB_FILE = "hub.json"


class StateError(ConfigError):
    """The state directory, or a file the hub keeps in it (its signing key, the operator's token),
    cannot be used as it is: damaged, unreadable, open to other users, on a full or read-only
    disk. Not the config's fault: `mcphub serve` exits 3 for it, as for an audit log it refuses,
    and 2 for a config or command line it cannot use. A ConfigError still, for the commands
    that read the state directory and treat both alike."""


def default_state_dir(environ: Mapping[str, str]) -> Path:
    """`$XDG_STATE_HOME/mcphub`, else `~/.local/state/mcphub`."""
    base = environ.get("XDG_STATE_HOME") or str(
        Path(environ.get("HOME", "~")).expanduser() / ".local" / "state"
    )
    return Path(base) / "mcphub"


def read_hub_file(state_dir: Path) -> dict[str, Any] | None:
    """The addresses a running hub wrote into its state directory, if any."""
    try:
        data = json.loads((state_dir / HUB_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_hub_file(state_dir: Path, grpc: str, mcp_url: str | None) -> None:
    path = state_dir / HUB_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"grpc": grpc, "mcp": mcp_url, "pid": os.getpid()}))
    tmp.replace(path)


def remove_hub_file(state_dir: Path) -> None:
    """Remove the file if this process wrote it (another hub may have taken the directory over)."""
    if (read_hub_file(state_dir) or {}).get("pid") == os.getpid():
        (state_dir / HUB_FILE).unlink(missing_ok=True)

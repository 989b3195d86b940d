"""The hub's state directory: where it is by default, and the file naming the running hub's addresses.

Kept free of heavy imports: client commands read it to find the local hub.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_GRPC",
    "DEFAULT_HTTP",
    "HUB_FILE",
    "default_state_dir",
    "read_hub_file",
    "remove_hub_file",
    "write_hub_file",
]

DEFAULT_GRPC = "127.0.0.1:7070"
DEFAULT_HTTP = "127.0.0.1:7071"
HUB_FILE = "hub.json"


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

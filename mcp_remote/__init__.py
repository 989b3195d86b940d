"""The hub: everything `mcp_local` has plus authentication, the gate, the audit log and shared tools.

Names are imported on first use so that `mcphub` client commands start quickly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .auth import TokenAuthenticator as TokenAuthenticator
    from .config import (
        HubConfig as HubConfig,
    )
    from .config import (
        PackConfig as PackConfig,
    )
    from .config import (
        PrincipalConfig as PrincipalConfig,
    )
    from .config import (
        load_config as load_config,
    )
    from .hub import Hub as Hub
    from .hub import HubAddresses as HubAddresses

_HOMES = {
    "TokenAuthenticator": "auth",
    "HubConfig": "config",
    "PackConfig": "config",
    "PrincipalConfig": "config",
    "load_config": "config",
    "Hub": "hub",
    "HubAddresses": "hub",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'mcp_remote' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{home}", __name__), name)

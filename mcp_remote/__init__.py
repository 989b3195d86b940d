"""The hub: everything `mcp_local` has plus authentication, the gate, the audit log and shared tools.

The names below are imported on first use (PEP 562): `mcphub local ...` (the sidecar) runs through
`mcp_remote.cli` and must not pay for loading the hub, the bridge and the MCP SDK it never uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .auth import TokenAuthenticator
    from .config import HubConfig, PackConfig, PrincipalConfig, load_config
    from .hub import Hub, HubAddresses

__all__ = [
    "Hub",
    "HubAddresses",
    "HubConfig",
    "PackConfig",
    "PrincipalConfig",
    "TokenAuthenticator",
    "load_config",
]

_MODULE_OF = {
    "Hub": ".hub",
    "HubAddresses": ".hub",
    "HubConfig": ".config",
    "PackConfig": ".config",
    "PrincipalConfig": ".config",
    "TokenAuthenticator": ".auth",
    "load_config": ".config",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)

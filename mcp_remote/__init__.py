"""The hub: everything `mcp_local` has plus authentication, the gate, the audit log and shared tools."""

from __future__ import annotations

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

"""The hub: everything `mcp_local` has plus authentication, the gate, the audit log and shared tools.

Names are imported on first use so that `mcphub` client commands start quickly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcp_local.lazy import names_on_first_use

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

__getattr__ = names_on_first_use(__name__, _HOMES)

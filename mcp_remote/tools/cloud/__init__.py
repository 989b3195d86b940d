"""The `cloud` tool pack: the team's cloud APIs, called with credentials that never leave the hub.

    settings.py     pack options (pydantic): services, auth, secret references, routes, limits
    credentials.py  secrets from env or file, rotation, redactor registration
    netguard.py     the SSRF guard (address policy, guarded network backend)
    routes.py       path hygiene, method/path patterns, risk levels
    openapi.py      OpenAPI 3 operations -> tool input schemas
    client.py       one service's HTTP client (pool, redirects, size cap)
    ratelimit.py    token buckets and usage counters
    service.py      a configured service, assembled
    results.py      a response as a tool result (redacted, previewed, stored when large)
    pack.py         the tools and the pack's lifecycle

See docs/cloud.md.
"""

from __future__ import annotations

from .netguard import AddressPolicy, AddressRefused, GuardedBackend, literal_address
from .pack import CloudPack, create_pack
from .settings import CloudOptions, ServiceSettings, parse_options

__all__ = [
    "AddressPolicy",
    "AddressRefused",
    "CloudOptions",
    "CloudPack",
    "GuardedBackend",
    "ServiceSettings",
    "create_pack",
    "literal_address",
    "parse_options",
]

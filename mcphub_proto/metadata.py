"""Wire constants that are part of the contract but not of the `.proto` schema: gRPC metadata keys."""

from __future__ import annotations

__all__ = ["AUTHORIZATION", "ERROR_DATA", "ERROR_FROM", "FROM_HUB"]

AUTHORIZATION = "authorization"
"""Call metadata: `Bearer <token>`; the token names the calling principal."""

ERROR_DATA = "mcphub-error-data"
"""Trailing metadata of a failed call: the error's data as a JSON object (e.g. `requiredCapabilities`)."""

ERROR_FROM = "mcphub-error-from"
FROM_HUB = "hub"
"""Trailing metadata `mcphub-error-from: hub` of a call the hub (or a sidecar) failed itself: its
status and message are the hub's own. gRPC answers a hub it cannot reach UNAVAILABLE too,
without it; a hub that answers UNAVAILABLE (it is stopping, its audit log cannot be written)
says why, and whether the tool ran."""

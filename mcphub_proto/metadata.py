"""Wire constants that are part of the contract but not of the `.proto` schema: gRPC metadata keys."""

from __future__ import annotations

__all__ = ["AUTHORIZATION", "ERROR_DATA"]

AUTHORIZATION = "authorization"
"""Call metadata: `Bearer <token>`; the token names the calling principal."""

ERROR_DATA = "mcphub-error-data"
"""Trailing metadata of a failed call: the error's data as a JSON object (e.g. `requiredCapabilities`)."""

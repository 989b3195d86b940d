"""The mcphub version, as a constant: reading it from the installed metadata would load
`importlib.metadata` (and `email`, `zipfile`, `csv`), a few MB a sidecar does not otherwise need.
A test checks it against the installed distribution."""

from __future__ import annotations

__all__ = ["VERSION"]

VERSION = "0.1.0"

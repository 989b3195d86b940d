"""Waiting, in async tests, for something another process does."""

from __future__ import annotations

import time
from pathlib import Path

import anyio

__all__ = ["file_appears"]


async def file_appears(path: Path, seconds: float) -> bool:
    """Whether `path` exists within `seconds` (a marker a tool in the hub leaves)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists():
            return True
        await anyio.sleep(0.02)
    return False

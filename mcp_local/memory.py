"""After a server has started: give back what loading left behind, and keep it out of the collector's way."""

from __future__ import annotations

import contextlib
import ctypes
import gc

__all__ = ["settle_memory"]


def settle_memory() -> None:
    """Collect once, freeze what survives, and return freed heap pages to the system.

    Everything alive at this point (modules, schemas, the SDK's models, the packs) lives
    as long as the process. Frozen, it is skipped by every later collection, so a full
    collection during a call walks only what calls allocate, not the whole server.
    """
    gc.collect()
    gc.freeze()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)

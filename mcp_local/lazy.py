"""Package names imported on first use (PEP 562), for the packages' `__init__` modules.

    __getattr__ = names_on_first_use(__name__, {"Hub": "hub", ...})

maps each exported name to the submodule (relative to the package) that defines it, so that a
command which needs one light submodule does not import the whole package's dependencies.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["names_on_first_use"]


def names_on_first_use(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package` that imports `homes[name]` when `name` is first read."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f".{home}", package), name)

    return __getattr__

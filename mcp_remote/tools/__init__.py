"""The hub's tool packs, one sub-package each (browser, cloud, shell), each with `create_pack`."""

from __future__ import annotations

__all__: list[str] = []

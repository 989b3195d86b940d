"""The hub's tool packs (shell, browser, cloud): each a sub-module or sub-package with `create_pack`."""

from __future__ import annotations

__all__: list[str] = []

"""The hub's shared tool packs (shell, browser, cloud), each loaded by its entry point."""

from __future__ import annotations

__all__: list[str] = []

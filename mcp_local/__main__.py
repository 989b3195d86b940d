"""`python -m mcp_local serve ...` is `mcphub local serve ...` without loading the hub's CLI."""

from __future__ import annotations

from .cli import main

__all__: list[str] = []

raise SystemExit(main())

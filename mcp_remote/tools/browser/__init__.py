"""The browser pack: playwright-mcp's tools served from the hub, one isolated context per session.

Playwright is imported only when the pack starts (see `pack.py`); this package
imports without it.
"""

from __future__ import annotations

from .options import BrowserOptions, parse_options
from .pack import BrowserPack, chromium_problem, create_pack
from .policy import HostRule, UrlPolicy, parse_rule
from .tools import DEFAULT_SESSION, TOOL_SPECS

__all__ = [
    "DEFAULT_SESSION",
    "TOOL_SPECS",
    "BrowserOptions",
    "BrowserPack",
    "HostRule",
    "UrlPolicy",
    "chromium_problem",
    "create_pack",
    "parse_options",
    "parse_rule",
]

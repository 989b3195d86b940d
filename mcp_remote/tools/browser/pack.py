"""The `browser` pack: its tools always load; without Chromium (or Playwright) they say so clearly.

Playwright is imported only when the pack starts and finds Chromium, so a hub
without either still serves its other packs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcp_local.content import ToolResult
from mcp_local.packs import PackEnv
from mcp_local.tools import Tool, ToolCall, ToolHandler

from .options import BrowserOptions, parse_options
from .tools import build_tools

if TYPE_CHECKING:
    from .actions import BrowserRuntime

__all__ = ["BrowserPack", "chromium_problem", "create_pack"]

logger = logging.getLogger(__name__)


def chromium_problem(path: Path) -> str | None:
    """Why Chromium at `path` cannot be used, or None."""
    advice = (
        "install it (Debian/Ubuntu: `apt-get install chromium`) or point the browser pack's "
        "executable_path option at a Chromium; the hub's other tools work without it"
    )
    if not path.exists():
        return f"the browser is unavailable: Chromium is not installed ({path} does not exist); {advice}"
    if not path.is_file() or not os.access(path, os.X_OK):
        return f"the browser is unavailable: {path} is not an executable file; {advice}"
    return None


class BrowserPack:
    name = "browser"

    def __init__(self, options: BrowserOptions, env: PackEnv) -> None:
        self.options = options
        self.env = env
        self.unavailable: str | None = None
        self.runtime: BrowserRuntime | None = None
        self._tools = build_tools(self._handler, options.call_timeout_s)

    def tools(self) -> Sequence[Tool]:
        return self._tools

    async def start(self) -> None:
        self.unavailable = chromium_problem(self.options.executable_path)
        if self.unavailable is None:
            try:
                from .actions import BrowserRuntime
            except ImportError as exc:
                self.unavailable = (
                    f"the browser is unavailable: Playwright is not installed ({exc}); "
                    "install the hub with its `remote` extra (pip install 'mcphub[remote]')"
                )
            else:
                self.runtime = BrowserRuntime(self.options, self.env)
                await self.runtime.start()
                return
        logger.warning("%s", self.unavailable)

    async def stop(self) -> None:
        if self.runtime is not None:
            await self.runtime.stop()
            self.runtime = None

    def _handler(self, name: str) -> ToolHandler:
        async def handle(call: ToolCall) -> ToolResult:
            if self.runtime is None:
                return ToolResult.error(self.unavailable or "the browser pack has not started")
            return await self.runtime.call(name, call)

        return handle


def create_pack(options: Mapping[str, Any], env: PackEnv) -> BrowserPack:
    return BrowserPack(parse_options(options), env)

"""The browser pack's options (the `options:` of its entry in the hub's `packs:` list)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mcp_local.errors import ConfigError

from .policy import parse_rule

__all__ = ["CHROMIUM_ARGS", "DEFAULT_EXECUTABLE", "BrowserOptions", "parse_options"]

DEFAULT_EXECUTABLE = Path("/usr/bin/chromium")

CHROMIUM_ARGS: tuple[str, ...] = (
    "--no-sandbox",  # the hub often runs as root in a container; contexts are the isolation here
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-breakpad",
    "--metrics-recording-only",
    "--no-default-browser-check",
    "--password-store=basic",
    # WebRTC must not open UDP around the policy proxy.
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
    "--webrtc-ip-handling-policy=disable_non_proxied_udp",
)


class BrowserOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    executable_path: Path = DEFAULT_EXECUTABLE
    """Chromium to drive (Debian's package by default; Playwright's own downloads are not used)."""
    headless: bool = True
    launch_at_start: bool = True
    """Start Chromium in the background when the hub starts, so the first call finds it warm."""
    extra_args: list[str] = Field(default_factory=list)

    allow: list[str] = Field(default_factory=list)
    """Hosts, *.domains, IPs or CIDRs (optional :port) the browser may reach even if blocked by default."""
    block: list[str] = Field(default_factory=list)
    """Hosts, *.domains, IPs or CIDRs (optional :port) the browser may never reach."""
    default: Literal["allow", "block"] = "allow"
    """What happens to a host that neither list names and that is not blocked by default."""

    idle_timeout_s: float = Field(default=600.0, gt=0)
    """A session unused this long is closed (its pages, cookies and storage are dropped)."""
    max_sessions: int = Field(default=64, ge=1)
    max_sessions_per_principal: int = Field(default=16, ge=1)
    max_tabs_per_session: int = Field(default=16, ge=1)
    spare_contexts: int = Field(default=2, ge=0, le=8)
    """Fresh contexts (with a blank page) kept ready, so a new session does not wait for one."""

    action_timeout_s: float = Field(default=5.0, gt=0, le=300)
    navigation_timeout_s: float = Field(default=30.0, gt=0, le=600)
    call_timeout_s: float = Field(default=120.0, gt=0, le=3600)
    max_wait_s: float = Field(default=60.0, gt=0, le=3600)
    """The longest `browser_wait_for` may wait."""

    snapshot_timeout_s: float = Field(default=10.0, gt=0, le=600)
    """The longest a page snapshot may take; past it the renderer's work is stopped (a huge page)."""
    snapshot_max_chars: int = Field(default=40_000, ge=1000)
    """A larger snapshot is kept whole in the output store; the result shows this many characters."""
    snapshot_after_actions: bool = True
    """Append the page snapshot to the result of navigation and input tools (as playwright-mcp does)."""
    viewport_width: int = Field(default=1280, ge=100, le=8192)
    viewport_height: int = Field(default=720, ge=100, le=8192)
    downloads: bool = True
    """Save downloads into the principal's workspace (`<state_dir>/workspaces/<principal>/downloads`)."""
    workspace_root: Path | None = None
    """Where principals' workspaces live (default `<state_dir>/workspaces`), shared with the shell pack."""

    @field_validator("allow", "block")
    @classmethod
    def _rules(cls, value: list[str]) -> list[str]:
        for rule in value:
            parse_rule(rule)  # raises ValueError naming the rule and what was expected
        return value


def parse_options(options: Mapping[str, Any]) -> BrowserOptions:
    try:
        return BrowserOptions.model_validate(dict(options))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown option (see docs/browser.md for the browser pack's options)"
            problems.append(f"{loc}: {msg}")
        raise ConfigError("browser pack options: " + "; ".join(problems)) from None

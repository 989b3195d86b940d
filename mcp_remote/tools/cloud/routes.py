"""Which calls a service accepts: request paths made safe, matched against method and path patterns.

Pure functions, no I/O. A path pattern is a sequence of segments where `*`
matches one segment, `**` any number (including none), `{name}` is the same
as `*` (OpenAPI templates read as patterns), and anything else matches itself.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mcp_local.errors import ToolError

from .settings import Risk

__all__ = ["Route", "RouteTable", "clean_path", "default_risk"]

MAX_PATH = 4096
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_TEMPLATE = re.compile(r"^\{[^{}/]+\}$")


def default_risk(method: str) -> Risk:
    if method in ("GET", "HEAD", "OPTIONS"):
        return "read-only"
    if method == "DELETE":
        return "destructive"
    return "write"


def clean_path(path: str) -> str:
    """A request path that can only mean what it looks like, or a `ToolError` saying why not.

    Refused: a missing leading `/`, a query or fragment (those go in `query`), a
    scheme or `//` (an absolute URL), dot segments in any encoding, backslashes,
    encoded slashes, control characters and whitespace. Other characters that
    are not allowed in a path are percent-encoded.
    """
    if not path.startswith("/"):
        raise ToolError(f"path must start with '/', got {path[:80]!r}")
    if len(path) > MAX_PATH:
        raise ToolError(f"path is longer than {MAX_PATH} characters")
    if "?" in path or "#" in path:
        raise ToolError("path takes no query or fragment: put query parameters in `query`")
    if path.startswith("//"):
        raise ToolError("path must not start with '//'")
    if "\\" in path or _CONTROL.search(path):
        raise ToolError("path has a backslash, whitespace or a control character")
    lowered = path.lower()
    if "%2f" in lowered or "%5c" in lowered or "%00" in lowered:
        raise ToolError("path has an encoded '/', '\\' or NUL")
    segments = path.split("/")[1:]
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        decoded = urllib.parse.unquote(segment)
        if decoded in (".", ".."):
            raise ToolError("path has a '.' or '..' segment")
        if segment == "" and index != last:
            raise ToolError("path has an empty segment ('//')")
    # Encode what is not allowed in a path, keep existing escapes as they are.
    return urllib.parse.quote(path, safe="/%:@!$&'()*+,;=-._~")


def _segment_regex(segment: str) -> str:
    if segment == "**":
        return "(?:/[^/]*)*"
    if segment == "*" or _TEMPLATE.match(segment):
        return "/[^/]+"
    parts = segment.split("*")
    return "/" + "[^/]*".join(re.escape(p) for p in parts)


def compile_pattern(pattern: str) -> re.Pattern[str]:
    segments = pattern.split("/")[1:]
    if segments and segments[-1] == "" and len(segments) > 1:
        # "/services/" matches "/services/" exactly (trailing slashes matter to some APIs)
        body = "".join(_segment_regex(s) for s in segments[:-1]) + "/"
    else:
        body = "".join(_segment_regex(s) for s in segments if s != "") or "/"
    return re.compile(f"^{body}$")


@dataclass(frozen=True, slots=True)
class Route:
    methods: frozenset[str]
    patterns: tuple[str, ...]
    risk: Risk | None = None
    source: str = "config"
    """`config` or the operationId a generated tool came from."""

    def risk_for(self, method: str, service_risk: Risk | None) -> Risk:
        return self.risk or service_risk or default_risk(method)


class RouteTable:
    """A service's routes, in order; the first whose method and pattern match decides."""

    def __init__(self, routes: Iterable[Route], service_risk: Risk | None = None) -> None:
        self.routes = tuple(routes)
        self.service_risk = service_risk
        self._compiled = [(r, [compile_pattern(p) for p in r.patterns]) for r in self.routes]

    def match(self, method: str, path: str) -> tuple[Route, Risk] | None:
        for route, patterns in self._compiled:
            if method in route.methods and any(p.match(path) for p in patterns):
                return route, route.risk_for(method, self.service_risk)
        return None

    def methods(self) -> list[str]:
        seen: list[str] = []
        for route in self.routes:
            seen.extend(m for m in sorted(route.methods) if m not in seen)
        return seen

    def describe(self) -> list[dict[str, object]]:
        return [
            {
                "methods": sorted(r.methods),
                "paths": list(r.patterns),
                "risk": sorted({r.risk_for(m, self.service_risk) for m in r.methods}),
                **({"operation": r.source} if r.source != "config" else {}),
            }
            for r in self.routes
        ]

    def refusal(self, method: str, path: str, service: str) -> str:
        allowed: Sequence[str] = [
            f"{' '.join(sorted(r.methods))} {' '.join(r.patterns)}"
            for r in self.routes
            if r.source == "config"
        ][:8]
        listed = "; ".join(allowed) or "none"
        return (
            f"{method} {path[:200]} is not allowed for service {service!r} (allowed: {listed}); "
            "cloud_services lists what each service accepts"
        )

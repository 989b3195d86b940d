"""Who is calling: principals, the tools each may call, and how a bearer token names one."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Protocol

from .errors import Unauthenticated

__all__ = ["LOCAL", "Authenticator", "OpenAccess", "Principal", "bearer_token"]


@dataclass(frozen=True, slots=True, eq=False)
class Principal:
    """An agent, a sandbox or a service. `tools` are globs (`*`, `shell_*`, `browser_?lick`)."""

    name: str
    tools: tuple[str, ...] = ("*",)
    roles: frozenset[str] = frozenset()
    _pattern: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        joined = "|".join(f"(?:{fnmatch.translate(glob)})" for glob in self.tools) or "(?!)"
        object.__setattr__(self, "_pattern", re.compile(joined))

    def may_call(self, tool_name: str) -> bool:
        return self._pattern.match(tool_name) is not None

    def has_role(self, role: str) -> bool:
        return role in self.roles


LOCAL = Principal("local", ("*",), frozenset({"approver", "operator"}))
"""The principal of every caller of a loopback hub that has no principals configured."""


class Authenticator(Protocol):
    def authenticate(self, token: str | None) -> Principal:
        """The principal a bearer token names; raises `Unauthenticated` otherwise."""
        ...


class OpenAccess:
    """Everyone is `principal`: for loopback hubs without principals, and sidecars."""

    __slots__ = ("principal",)

    def __init__(self, principal: Principal = LOCAL) -> None:
        self.principal = principal

    def authenticate(self, token: str | None) -> Principal:
        return self.principal


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `authorization: Bearer <token>` value; None when absent."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
    return token.strip()

"""Who is calling: principals, the tools each may call, and how a bearer token names one."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .errors import Unauthenticated

if TYPE_CHECKING:
    from .tools import Tool

__all__ = [
    "AMBIGUOUS_AUTHORIZATION",
    "LOCAL",
    "OPERATOR",
    "Authenticator",
    "OpenAccess",
    "Principal",
    "RawAuthorization",
    "authorization_value",
    "bearer_token",
    "first_authorization",
]


@dataclass(frozen=True, slots=True, eq=False)
class Principal:
    """An agent, a sandbox or a service. `tools` are globs (`*`, `shell_*`, `browser_?lick`)."""

    name: str
    tools: tuple[str, ...] = ("*",)
    roles: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    """Approver groups this principal belongs to (rules may require an approver from a group)."""
    _pattern: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        joined = "|".join(f"(?:{fnmatch.translate(glob)})" for glob in self.tools) or "(?!)"
        object.__setattr__(self, "_pattern", re.compile(joined))

    def may_call(self, tool_name: str) -> bool:
        return self._pattern.match(tool_name) is not None

    def has_role(self, role: str) -> bool:
        return role in self.roles

    def may_use(self, tool: Tool) -> bool:
        """May call `tool`: its name matches the principal's globs, and the principal has one
        of the roles the tool is restricted to, if any."""
        return self.may_call(tool.name) and (not tool.roles or not tool.roles.isdisjoint(self.roles))


LOCAL = Principal("local", ("*",))
"""The principal of every caller of a loopback hub that has no principals configured."""

OPERATOR = Principal("operator", ("*",), frozenset({"approver", "operator"}))
"""The hub host's operator: named by the token in the state directory's `operator.token`."""


class Authenticator(Protocol):
    def authenticate(self, token: str | None) -> Principal:
        """The principal a bearer token names; raises `Unauthenticated` otherwise."""
        ...


class OpenAccess:
    """Everyone is `principal` (loopback hubs without principals, sidecars), except the holders of
    the tokens in `known`: the operator must stay distinct from the agents whose calls it approves."""

    __slots__ = ("_known", "principal")

    def __init__(self, principal: Principal = LOCAL, known: dict[str, Principal] | None = None) -> None:
        self.principal = principal
        self._known = dict(known or {})

    def replace_known(self, known: dict[str, Principal]) -> None:
        """Know these tokens from the next lookup on, and no others (a reload)."""
        self._known = dict(known)

    def authenticate(self, token: str | None) -> Principal:
        if token is not None and self._known:
            found = self._known.get(token)
            if found is not None:
                return found
        return self.principal


class RawAuthorization(str):
    """An `Authorization` value that is not `Bearer <token>`: sent to the hub unchanged (never
    with `Bearer ` put in front, which turned `Authorization: <token>` into a valid one), so
    the hub refuses it with its own words."""

    __slots__ = ()


def authorization_value(token: str) -> str:
    """The `authorization` metadata value the hub expects for `token`."""
    return token if isinstance(token, RawAuthorization) else f"Bearer {token}"


AMBIGUOUS_AUTHORIZATION = "Ambiguous more-than-one-authorization-value"
"""Stands for a request that carried more than one `authorization` value: which one names the
caller would depend on their order, which a proxy that adds its own can change, so the call is
refused as unauthenticated. A valid header value, so a bridge can forward it to a hub over gRPC."""


def first_authorization(values: Iterable[str | bytes]) -> str | None:
    """The one `authorization` value of a request, AMBIGUOUS_AUTHORIZATION for several, or None."""
    found: str | None = None
    for value in values:
        if found is not None:
            return AMBIGUOUS_AUTHORIZATION
        found = value if isinstance(value, str) else value.decode("latin-1")
    return found


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `authorization: Bearer <token>` value; None when absent."""
    if not authorization:
        return None
    if authorization == AMBIGUOUS_AUTHORIZATION:
        raise Unauthenticated("more than one authorization value was sent; send one 'Bearer <token>'")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
    return token.strip()

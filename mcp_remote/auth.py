"""Bearer tokens to principals, for a hub with principals configured."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from mcp_local.errors import ConfigError, Unauthenticated
from mcp_local.principals import Principal

__all__ = ["TokenAuthenticator"]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenAuthenticator:
    """Looks tokens up by their SHA-256, so the table holds no token and lookups leak no timing about one."""

    __slots__ = ("_by_digest",)

    def __init__(self, entries: Iterable[tuple[str, Principal]]) -> None:
        self._by_digest: dict[bytes, Principal] = {}
        for token, principal in entries:
            digest = _digest(token)
            if digest in self._by_digest:
                raise ConfigError(
                    f"principals {self._by_digest[digest].name!r} and {principal.name!r} share a token "
                    "(each principal needs its own: the token is what names it)"
                )
            self._by_digest[digest] = principal

    def authenticate(self, token: str | None) -> Principal:
        if token is None:
            raise Unauthenticated("this hub needs a bearer token: send 'authorization: Bearer <token>'")
        principal = self._by_digest.get(_digest(token))
        if principal is None:
            raise Unauthenticated("the bearer token is not one this hub knows")
        return principal

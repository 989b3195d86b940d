"""Bearer tokens to principals, for a hub with principals configured."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from mcp_local.errors import ConfigError, Unauthenticated
from mcp_local.principals import Principal

__all__ = ["TokenAuthenticator", "token_digest"]


class TokenAuthenticator:
    """Looks tokens up by their SHA-256, so the table holds no token and lookups leak no timing about one."""

    __slots__ = ("_by_digest",)

    def __init__(self, entries: Iterable[tuple[str, Principal]]) -> None:
        self._by_digest = _table((token_digest(token), principal) for token, principal in entries)

    @classmethod
    def of_digests(cls, entries: Iterable[tuple[bytes, Principal]]) -> TokenAuthenticator:
        authenticator = cls(())
        authenticator.replace(entries)
        return authenticator

    def replace(self, entries: Iterable[tuple[bytes, Principal]]) -> None:
        """Serve a new table (token digests to principals) from the next lookup on: a reload.
        Everything that authenticates holds this object, so nobody keeps the old table."""
        self._by_digest = _table(entries)

    def by_name(self) -> Mapping[str, tuple[bytes, Principal]]:
        """Each principal's token digest and grants, by name."""
        return {principal.name: (digest, principal) for digest, principal in self._by_digest.items()}

    def authenticate(self, token: str | None) -> Principal:
        if token is None:
            raise Unauthenticated("this hub needs a bearer token: send 'authorization: Bearer <token>'")
        principal = self._by_digest.get(token_digest(token))
        if principal is None:
            raise Unauthenticated("the bearer token is not one this hub knows")
        return principal


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _table(entries: Iterable[tuple[bytes, Principal]]) -> dict[bytes, Principal]:
    table: dict[bytes, Principal] = {}
    for digest, principal in entries:
        if digest in table:
            raise ConfigError(
                f"principals {table[digest].name!r} and {principal.name!r} share a token "
                "(each principal needs its own: the token is what names it)"
            )
        table[digest] = principal
    return table

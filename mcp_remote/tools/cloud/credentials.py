"""Credentials the hub injects: read from a secret reference, re-read when the file changes.

A `CredentialSource` holds one secret. File secrets are checked with one `stat`
per call (inode, size, mtime, ctime) and re-read when any changed; `reload()`
re-reads unconditionally (SIGHUP). A call takes the current `Credential` once,
at its start, and uses that object for every request it makes (redirects too):
a rotation takes effect on the next call and never tears one in flight.

Every value a credential can take on the wire (the raw secret, its URL-encoded
and base64 forms) is registered with the hub's redactor before first use, and
kept registered after rotation: an old key must not surface in a log either.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
import urllib.parse
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass

from mcp_local.errors import ConfigError, ToolError

from .settings import AuthSettings, SecretRef

__all__ = ["Credential", "CredentialSource", "SecretMissing"]

logger = logging.getLogger("mcphub.cloud")

MIN_SECRET_LENGTH = 8
MAX_SECRET_BYTES = 64 * 1024


class SecretMissing(ConfigError):
    """The secret a service needs is not there (unset variable, absent file): the service stays off."""


@dataclass(frozen=True, slots=True)
class Credential:
    """What one call adds to its requests. `repr` never shows a value."""

    headers: tuple[tuple[str, str], ...] = ()
    query: tuple[tuple[str, str], ...] = ()
    generation: int = 0

    def __repr__(self) -> str:
        names = [h for h, _ in self.headers] + [f"?{q}" for q, _ in self.query]
        return f"Credential(generation={self.generation}, carries={names})"


def _wire_forms(secret: str, auth: AuthSettings) -> list[str]:
    """Every form the secret can travel or be echoed in, for the redactor."""
    forms = {
        secret,
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret)[1:-1].replace("/", "\\/"),  # PHP's json_encode escapes slashes
    }
    if auth.type == "basic":
        forms.add(base64.b64encode(f"{auth.username}:{secret}".encode()).decode())
    return [f for f in forms if len(f) >= MIN_SECRET_LENGTH]


def _build(secret: str, auth: AuthSettings, generation: int) -> Credential:
    if auth.type == "bearer":
        return Credential(headers=(("Authorization", f"Bearer {secret}"),), generation=generation)
    if auth.type == "header":
        assert auth.name is not None
        return Credential(headers=((auth.name, f"{auth.prefix}{secret}"),), generation=generation)
    if auth.type == "query":
        assert auth.name is not None
        return Credential(query=((auth.name, secret),), generation=generation)
    if auth.type == "basic":
        token = base64.b64encode(f"{auth.username}:{secret}".encode()).decode()
        return Credential(headers=(("Authorization", f"Basic {token}"),), generation=generation)
    return Credential(generation=generation)


class CredentialSource:
    """One service's credential, from `{env: NAME}` or `{file: PATH}`."""

    def __init__(
        self,
        where: str,
        auth: AuthSettings,
        environ: MutableMapping[str, str],
        register: Callable[[str], None],
        *,
        scrub_env: bool = True,
    ) -> None:
        self.where = where
        self.auth = auth
        self._register = register
        self._environ = environ
        self._scrub_env = scrub_env
        self._stamp: tuple[int, int, int, int] | None = None
        self._credential: Credential | None = None
        self.generation = 0
        self.loaded_at: float | None = None
        self.failures = 0
        if auth.type == "none":
            self._credential = Credential()
        else:
            assert auth.secret is not None
            self._load(self._read(auth.secret))

    @property
    def ref(self) -> SecretRef | None:
        return self.auth.secret

    def describe(self) -> str:
        return self.ref.describe() if self.ref is not None else "no credential"

    def _read(self, ref: SecretRef) -> str:
        if ref.env is not None:
            value = self._environ.get(ref.env)
            if value is None:
                raise SecretMissing(f"{self.where}: environment variable {ref.env} is not set")
            return value.strip()
        assert ref.file is not None
        try:
            st = os.stat(ref.file)
            if st.st_size > MAX_SECRET_BYTES:
                raise ConfigError(
                    f"{self.where}: {ref.file} is {st.st_size} bytes; a secret is at most 64 KiB"
                )
            with open(ref.file, encoding="utf-8") as f:
                value = f.read().strip()
        except FileNotFoundError as exc:
            raise SecretMissing(f"{self.where}: secret file {ref.file} does not exist") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{self.where}: cannot read secret file {ref.file}: {exc}") from exc
        self._stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        return value

    def _load(self, secret: str) -> None:
        if len(secret) < MIN_SECRET_LENGTH:
            raise ConfigError(
                f"{self.where}: the secret ({self.describe()}) is {len(secret)} characters; "
                f"expected at least {MIN_SECRET_LENGTH} (too short to be redacted safely)"
            )
        if any(c in secret for c in "\r\n\0"):
            raise ConfigError(f"{self.where}: the secret ({self.describe()}) spans several lines")
        for form in _wire_forms(secret, self.auth):
            self._register(form)
        fresh = _build(secret, self.auth, self.generation + 1)
        old = self._credential
        if old is None or (old.headers, old.query) != (fresh.headers, fresh.query):
            self.generation += 1
            self._credential = fresh
        self.loaded_at = time.time()
        ref = self.auth.secret
        if ref is not None and ref.env is not None and self._scrub_env:
            # The value now lives in this object; no child process of the hub may inherit it.
            self._environ.pop(ref.env, None)

    def current(self) -> Credential:
        """The credential for a call starting now (re-read first if the file changed)."""
        ref = self.auth.secret
        if ref is not None and ref.file is not None:
            try:
                st = os.stat(ref.file)
                stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            except OSError:
                stamp = None
            if stamp is not None and stamp != self._stamp:
                self._refresh("the file changed")
        if self._credential is None:
            raise ToolError(f"{self.where}: no credential is loaded; an operator must provide it")
        return self._credential

    def reload(self) -> None:
        """Re-read a file secret now (SIGHUP). An environment secret cannot change in a running process."""
        ref = self.auth.secret
        if ref is not None and ref.file is not None:
            self._refresh("reload requested")

    def _refresh(self, why: str) -> None:
        assert self.auth.secret is not None
        try:
            secret = self._read(self.auth.secret)
            self._load(secret)
        except ConfigError as exc:
            # Keep serving with the last good key: a half-written file must not take a service down.
            self.failures += 1
            logger.warning("%s: keeping the previous credential, %s", self.where, exc)
            return
        logger.info("%s: credential reloaded (%s; generation %d)", self.where, why, self.generation)

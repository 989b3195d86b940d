"""The hub's settings: one YAML file validated by pydantic, environment overrides, then command-line flags.

    defaults  <  YAML file (--config)  <  MCPHUB_* environment  <  command-line flags

An error names the key and what was expected. Tokens are never printed.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from bridge.options import MAX_BODY_BYTES  # standard library only
from mcp_local.addresses import host_problem, split_host_port
from mcp_local.errors import ConfigError
from mcp_local.plainerrors import read_text, yaml_problem
from mcp_local.principals import OPERATOR, Principal

from .approvals import KEEP_S, MAX_PENDING_PER_PRINCIPAL
from .policy import PolicyConfig
from .statedir import DEFAULT_GRPC, DEFAULT_HTTP, default_state_dir

DEFAULT_PACKS = ("diagnostics", "shell", "browser")

__all__ = [
    "DEFAULT_GRPC",
    "DEFAULT_HTTP",
    "DEFAULT_PACKS",
    "ENV_OVERRIDES",
    "SANDBOX_NAME",
    "SANDBOX_NAME_RULE",
    "Address",
    "ApprovalsConfig",
    "AuditConfig",
    "HubConfig",
    "PackConfig",
    "PrincipalConfig",
    "default_state_dir",
    "format_validation_error",
    "load_config",
    "parse_address",
]

MIN_TOKEN_LENGTH = 16
MAX_STREAMS_PER_PRINCIPAL = 256
"""Default of `max_streams_per_principal`, when it is not below `max_sessions_per_principal`."""
PRINCIPAL_NAME = r"^[a-zA-Z0-9_.@-]{1,64}$"
SANDBOX_NAME = r"^(?!.*__)[a-zA-Z0-9_-]{0,47}[a-zA-Z0-9-]$"
"""A sandbox's name: its tools are `<sandbox>__<tool>`, so a name holding `__`, or ending in `_`
(`a_` + `__` + `t` is `a___t`), would put its tools under another sandbox's `<name>__*` glob."""
SANDBOX_NAME_RULE = (
    "1-48 characters of [a-zA-Z0-9_-], with no `__` (it separates a sandbox's name from its tools' "
    "names) and no `_` at the end"
)


class Address(BaseModel):
    model_config = ConfigDict(frozen=True)
    host: str
    port: int = Field(ge=0, le=65535)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_address(value: str) -> Address:
    """`HOST:PORT`, `[V6]:PORT` or `:PORT` (loopback)."""
    host, sep, port = split_host_port(value)
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:7070), got {value!r}")
    if int(port) > 65535:
        raise ValueError(f"port {int(port)} of {value!r} is past 65535 (0 picks a free one)")
    if problem := host_problem(host, value, "127.0.0.1:7070"):
        raise ValueError(problem)
    return Address(host=host or "127.0.0.1", port=int(port))


class PrincipalConfig(BaseModel):
    """A caller: an agent, a sandbox or a service, named by a bearer token."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=PRINCIPAL_NAME)
    token: SecretStr | None = None
    token_env: str | None = None
    token_file: Path | None = None
    tools: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    roles: list[Literal["approver", "operator", "sandbox"]] = Field(default_factory=list)
    """`sandbox`: a sidecar's token; it registers the sandbox of this name (docs/sidecar.md)."""
    groups: list[str] = Field(default_factory=list)
    """Approver groups (policy rules may require an approver from one of them)."""

    @model_validator(mode="before")
    @classmethod
    def _sandbox_calls_only_its_own_tools(cls, data: Any) -> Any:
        # A sidecar's token is readable inside its sandbox: by default it reaches that sandbox's tools only.
        if isinstance(data, dict) and "sandbox" in (data.get("roles") or []) and "tools" not in data:
            return {**data, "tools": [f"{data.get('name')}__*"]}
        return data

    @model_validator(mode="after")
    def _sandbox_name(self) -> PrincipalConfig:
        # Refused here, not when its sidecar first connects: it could never register.
        if "sandbox" in self.roles and not re.fullmatch(SANDBOX_NAME, self.name):
            raise ValueError(
                f"name {self.name!r}: a principal with the role `sandbox` registers the sandbox of its "
                f"name, which must be {SANDBOX_NAME_RULE}"
            )
        return self

    @model_validator(mode="after")
    def _one_token_source(self) -> PrincipalConfig:
        given = [k for k in ("token", "token_env", "token_file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of token, token_env, token_file (got {given or 'none'})")
        return self

    def principal(self) -> Principal:
        """Who this entry names, as the hub authorizes it."""
        return Principal(self.name, tuple(self.tools), frozenset(self.roles), frozenset(self.groups))

    def resolve_token(self, environ: Mapping[str, str]) -> str:
        if self.token is not None:
            token = self.token.get_secret_value()
        elif self.token_env is not None:
            if self.token_env not in environ:
                raise ConfigError(
                    f"principals[{self.name}].token_env: environment variable {self.token_env} is not set"
                )
            token = environ[self.token_env]
        else:
            assert self.token_file is not None
            try:
                token = self.token_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"principals[{self.name}].token_file: cannot read {self.token_file}: {exc.strerror}"
                ) from exc
            except UnicodeDecodeError:
                raise ConfigError(
                    f"principals[{self.name}].token_file: {self.token_file} is not text (UTF-8); a token "
                    "is a line of printable characters"
                ) from None
        if len(token) < MIN_TOKEN_LENGTH:
            raise ConfigError(
                f"principals[{self.name}]: the token must be at least {MIN_TOKEN_LENGTH} characters"
            )
        return token


class PackConfig(BaseModel):
    """A tool pack: an entry-point name or an import path, and its options."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)


class AuditConfig(BaseModel):
    """Where the audit log (and the approvals) live, and how often the chain is signed."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    store: Literal["sqlite", "postgres"] = "sqlite"
    """`sqlite`: a file in the state directory (one hub). `postgres`: one log shared by several hubs."""
    dsn_env: str | None = None
    """Environment variable holding the PostgreSQL connection string (store: postgres)."""
    dsn_file: Path | None = None
    """File holding the PostgreSQL connection string (store: postgres)."""
    checkpoint_every: int = Field(default=1000, ge=1)
    """Sign a checkpoint after this many records, when the writer next pauses between batches of
    records (under load, a batch or two of the callers' records later: 64 callers and N=10 gave
    gaps of up to 127 records; a checkpoint covers everything before it)..."""
    checkpoint_interval_s: float = Field(default=60.0, gt=0)
    """...or after this many seconds with new records, whichever comes first."""
    max_argument_bytes: int = Field(default=64 * 1024, ge=1024)
    """A call's arguments longer than this are recorded as their size, with their
    short top-level values (a path, a flag), not whole (a file's content written by fs_write)."""
    sync: bool = False
    """SQLite store: true puts each durable record on the disk before the call goes on
    (O_DSYNC journal writes, SQLite `synchronous=FULL`), so it survives a power loss, at the
    disk's write latency per commit. False: it survives the hub process dying (SIGKILL
    included), as SQLite's `synchronous=NORMAL` in WAL mode does. PostgreSQL commits are
    durable by its own `fsync` setting."""

    @model_validator(mode="after")
    def _dsn(self) -> AuditConfig:
        if self.store == "postgres" and (self.dsn_env is None) == (self.dsn_file is None):
            raise ValueError("store: postgres needs exactly one of dsn_env, dsn_file")
        if self.store == "postgres" and self.sync:
            raise ValueError("sync applies to the sqlite store; PostgreSQL's own fsync setting decides")
        return self

    def resolve_dsn(self, environ: Mapping[str, str]) -> str:
        if self.dsn_env is not None:
            if self.dsn_env not in environ:
                raise ConfigError(f"audit.dsn_env: environment variable {self.dsn_env} is not set")
            return environ[self.dsn_env]
        assert self.dsn_file is not None
        try:
            return read_text(self.dsn_file, "the DSN file").strip()
        except ConfigError as exc:
            raise ConfigError(f"audit.dsn_file: {exc}") from None


class ApprovalsConfig(BaseModel):
    """Bounds on the approvals a hub keeps: its working state (the audit log is the record)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_pending_per_principal: int = Field(default=MAX_PENDING_PER_PRINCIPAL, ge=1, le=100_000)
    """Approvals one principal may have pending at once (whoever asked through any hub sharing
    the store); past it, a call that needs one is refused at once and the refusal recorded. A
    caller that gives up waiting leaves its approval pending until it expires."""
    keep_days: float = Field(default=KEEP_S / 86400, gt=0)
    """Denied, expired and used approvals are deleted this long after they expired (checked
    hourly); the audit log keeps their records."""


class HubConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    grpc: Address = Field(default_factory=lambda: parse_address(DEFAULT_GRPC))
    http: Address | None = Field(default_factory=lambda: parse_address(DEFAULT_HTTP))
    """The MCP bridge's address; null runs the hub without it."""
    state_dir: Path = Field(default_factory=lambda: default_state_dir(os.environ))
    principals: list[PrincipalConfig] = Field(default_factory=list)
    packs: list[PackConfig] = Field(default_factory=lambda: [PackConfig(name=n) for n in DEFAULT_PACKS])
    """Default: diagnostics, the shell in a bubblewrap jail, and the browser (which reports clearly
    when Chromium is missing, without stopping the hub)."""
    allowed_hosts: list[str] = Field(default_factory=list)
    """Extra `Host` values the bridge accepts (`name:*` for any port); loopback names always are."""
    allowed_origins: list[str] = Field(default_factory=list)
    """Extra browser `Origin` values the bridge accepts (e.g. `https://inspector.example.com`)."""
    max_request_bytes: int = Field(default=MAX_BODY_BYTES, gt=0)
    """The largest HTTP request body the bridge takes (then 413)."""
    shutdown_grace_s: float = Field(default=5.0, ge=0)
    """On SIGTERM/SIGINT, how long running calls may finish; the rest are stopped, and their
    callers get an error saying the hub is shutting down (match your orchestrator's grace period)."""
    bridge_express: bool = True
    """The bridge answers a plain 2026-07-28 `tools/call` POST itself, with the SDK's checks
    (`bridge/express.py`, about half the CPU per call); false sends every request through the
    SDK's own machinery: the switch to throw if a client ever trips over the lane."""
    max_sessions_per_principal: int = Field(default=100, ge=1, le=10_000)
    """Handshake-era (2025) MCP sessions one principal may hold open on the bridge; one more ends
    its least recently used idle session, or gets 429 when every one is in use."""
    max_streams_per_principal: int = Field(default=MAX_STREAMS_PER_PRINCIPAL, ge=1, le=100_000)
    """Watch streams (WatchTools, WatchApprovals) one principal may hold open at once; one more is
    RESOURCE_EXHAUSTED. Each MCP session of the bridge holds one: keep it above
    max_sessions_per_principal (unset, it is 256 or max_sessions_per_principal if more)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("log_level", mode="before")
    @classmethod
    def _level(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value  # `DEBUG`, as logging spells it

    policy: PolicyConfig | None = None
    """The gate's rules; absent means the shipped default policy (`mcphub policy check` validates one)."""
    audit: AuditConfig = Field(default_factory=AuditConfig)
    approvals: ApprovalsConfig = Field(default_factory=ApprovalsConfig)
    instance: str | None = None
    """This hub's name among replicas sharing a store (default: host name and state directory)."""

    @model_validator(mode="before")
    @classmethod
    def _streams_follow_sessions(cls, data: Any) -> Any:
        # A default bounded by a key the config sets follows it: a file valid before the stream
        # limit came in (`max_sessions_per_principal: 500` alone) is not refused for a key it
        # never named. Set explicitly below the sessions, it still is (`_exposed_needs_principals`).
        if isinstance(data, dict) and "max_streams_per_principal" not in data:
            sessions = data.get("max_sessions_per_principal")
            if isinstance(sessions, int) and not isinstance(sessions, bool):
                return {**data, "max_streams_per_principal": max(MAX_STREAMS_PER_PRINCIPAL, sessions)}
        return data

    @field_validator("grpc", "http", mode="before")
    @classmethod
    def _address(cls, value: Any) -> Any:
        if value is False:  # YAML reads a bare `off` as false
            return None
        if isinstance(value, str):
            if value.lower() in ("off", "none", ""):
                return None
            return parse_address(value)
        return value

    @field_validator("packs", mode="before")
    @classmethod
    def _packs(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _exposed_needs_principals(self) -> HubConfig:
        if not self.principals:
            for key, addr in (("grpc", self.grpc), ("http", self.http)):
                if addr is not None and not addr.is_loopback:
                    raise ValueError(
                        f"{key}: binding {addr} (not loopback) needs at least one entry under `principals` "
                        "so callers must present a token; bind 127.0.0.1 for an open local hub"
                    )
        names = [p.name for p in self.principals]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"principals: the name {dupes[0]!r} appears more than once")
        if OPERATOR.name in names:
            # Audit records, approvals (no approving one's own call) and MCP sessions know a
            # caller by name: a second "operator" would pass for the host's operator in all three.
            raise ValueError(
                f"principals: the name {OPERATOR.name!r} is reserved for the hub host's operator "
                "(its token is `operator.token` in the state directory); choose another name"
            )
        if self.max_streams_per_principal < self.max_sessions_per_principal:
            raise ValueError(
                f"max_streams_per_principal ({self.max_streams_per_principal}) is below "
                f"max_sessions_per_principal ({self.max_sessions_per_principal}): each MCP session holds "
                "a watch stream, so sessions past it would fail; raise it or lower the other"
            )
        return self


ENV_OVERRIDES: dict[str, str] = {
    "MCPHUB_GRPC": "grpc",
    "MCPHUB_HTTP": "http",
    "MCPHUB_STATE_DIR": "state_dir",
    "MCPHUB_LOG_LEVEL": "log_level",
    "MCPHUB_PACKS": "packs",
    "MCPHUB_ALLOWED_HOSTS": "allowed_hosts",
    "MCPHUB_ALLOWED_ORIGINS": "allowed_origins",
    "MCPHUB_BRIDGE_EXPRESS": "bridge_express",
}
_LIST_KEYS = {"packs", "allowed_hosts", "allowed_origins"}


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `mcphub serve --help` lists the keys)"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def load_config(
    path: Path | None,
    environ: Mapping[str, str],
    overrides: Mapping[str, Any] | None = None,
) -> HubConfig:
    """Build the settings from the file, the environment and explicit overrides; raises ConfigError."""
    data: dict[str, Any] = {}
    source = str(path) if path else "configuration"
    if path is not None:
        text = read_text(path, "the config file")
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {yaml_problem(exc)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{path}: expected a mapping of settings at the top level, got {type(loaded).__name__}"
            )
        data.update(loaded)
    for var, key in ENV_OVERRIDES.items():
        if var in environ:
            raw = environ[var]
            data[key] = [v.strip() for v in raw.split(",") if v.strip()] if key in _LIST_KEYS else raw
    if "state_dir" not in data:
        data["state_dir"] = default_state_dir(environ)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return HubConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None

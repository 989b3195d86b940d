"""The cloud pack's options, validated by pydantic at the YAML edge.

    packs:
      - name: cloud
        options:
          examples: [github]            # shipped services to load (see examples/)
          services:
            render:
              base_url: https://api.render.com/v1
              auth: {type: bearer, secret: {env: RENDER_API_KEY}}
              allow:
                - {methods: [GET], paths: ["/services", "/services/*"]}
                - {methods: [POST], paths: ["/services/*/deploys"], risk: write}

A secret is always a reference (`{env: NAME}` or `{file: PATH}`), never a value:
an inline value would end up in config files, backups and diffs. Errors name the
key (`services.render.auth.secret`) and what was expected.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mcp_local.errors import ConfigError
from mcp_local.plainerrors import yaml_problem

__all__ = [
    "HTTP_METHODS",
    "SERVICE_NAME",
    "AuthSettings",
    "CloudOptions",
    "OpenApiSettings",
    "RateLimitSettings",
    "Risk",
    "RouteSettings",
    "SecretRef",
    "ServiceSettings",
    "load_service_file",
    "parse_options",
]

Risk = Literal["read-only", "write", "destructive"]
HTTP_METHODS = ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE")
SERVICE_NAME = r"^[a-z][a-z0-9_-]{0,31}$"
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")
_INLINE_KEYS = ("value", "token", "secret", "password", "key")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(_Model):
    """Where a credential comes from: an environment variable or a file (re-read when it changes)."""

    env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
    file: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_inline(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError(
                "a secret must be a reference, {env: NAME} or {file: PATH}, never the value itself "
                "(inline secrets end up in files, backups and logs)"
            )
        if isinstance(value, Mapping):
            inline = [k for k in _INLINE_KEYS if k in value]
            if inline:
                raise ValueError(
                    f"inline secret under {inline[0]!r} refused: give {{env: NAME}} or {{file: PATH}} instead"
                )
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env and file")
        return self

    def describe(self) -> str:
        return f"env {self.env}" if self.env is not None else f"file {self.file}"


class AuthSettings(_Model):
    """How the hub authenticates to the service. The caller never sees or sends the credential.

    bearer  `Authorization: Bearer <secret>`
    header  `<name>: <prefix><secret>` (e.g. `X-Api-Key`)
    query   `?<name>=<secret>` (avoid where possible: URLs end up in the service's logs)
    basic   `Authorization: Basic base64(<username>:<secret>)`
    none    no credential (public APIs)
    """

    type: Literal["bearer", "header", "query", "basic", "none"]
    secret: SecretRef | None = None
    name: str | None = None
    prefix: str = ""
    username: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> AuthSettings:
        if self.type == "none":
            if self.secret is not None:
                raise ValueError("type none takes no secret")
            return self
        if self.secret is None:
            raise ValueError(f"type {self.type} needs a secret: {{env: NAME}} or {{file: PATH}}")
        if self.type in ("header", "query") and not self.name:
            raise ValueError(f"type {self.type} needs `name` (the header or query parameter to carry it)")
        if self.type == "header" and self.name and not _HEADER_NAME.match(self.name):
            raise ValueError(f"name {self.name!r} is not a valid header name")
        if self.type == "basic" and self.username is None:
            raise ValueError("type basic needs `username` (the secret is the password)")
        if self.type == "basic" and self.username is not None and ":" in self.username:
            raise ValueError("username must not contain ':'")
        return self


class RouteSettings(_Model):
    """Calls a service accepts: methods and path patterns (`*` one segment, `**` any number)."""

    methods: list[Literal["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"]] = Field(min_length=1)
    paths: list[str] = Field(min_length=1)
    risk: Risk | None = None
    """The risk the gate sees; by default GET/HEAD/OPTIONS read-only, DELETE destructive, others write."""

    @field_validator("methods", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [v.upper() if isinstance(v, str) else v for v in value]
        return value

    @field_validator("paths")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not pattern.startswith("/"):
                raise ValueError(f"path pattern {pattern!r} must start with '/'")
            if "?" in pattern or "#" in pattern:
                raise ValueError(f"path pattern {pattern!r}: no query or fragment in a pattern")
        return value


class RateLimitSettings(_Model):
    """A token bucket per (principal, service): `per_minute` refill, up to `burst` at once."""

    per_minute: float = Field(default=120.0, gt=0)
    burst: int = Field(default=20, ge=1)


class OpenApiSettings(_Model):
    """Tools generated from an OpenAPI 3 document: one `<service>_<operationId>` per chosen operation."""

    document: Path
    """YAML or JSON; a relative path is taken from the directory of the service's definition."""
    operations: list[str] | Literal["*"] = Field(min_length=1)


NetworkAllowance = bool | list[str]


class ServiceSettings(_Model):
    base_url: str
    description: str = ""
    auth: AuthSettings
    allow: list[RouteSettings] = Field(
        default_factory=lambda: [RouteSettings(methods=["GET", "HEAD"], paths=["/**"])]
    )
    """Method and path patterns callers may use; by default read-only (GET, HEAD) on every path."""
    risk: Risk | None = None
    """The risk of every route that names none (instead of deriving it from the method)."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Fixed headers sent on every call (e.g. `Accept`, an API version)."""
    principals: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    """Globs of the principals that may call this service."""
    timeout_s: float = Field(default=30.0, gt=0, le=600)
    connect_timeout_s: float = Field(default=10.0, gt=0, le=120)
    max_response_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    """A response is read up to this size; past it the body is cut and the result says so."""
    inline_bytes: int = Field(default=64 * 1024, ge=256)
    """A body larger than this is stored whole (see `output_read`) and the result carries a preview."""
    max_redirects: int = Field(default=5, ge=0, le=20)
    max_connections: int = Field(default=20, ge=1, le=1000)
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    allow_private_network: NetworkAllowance = False
    """Operators and tests only: `true` lets calls reach private, loopback and link-local addresses
    (never cloud metadata endpoints); a list of CIDRs allows only those networks."""
    ca_file: Path | None = None
    """A CA bundle for a service with a private certificate authority (self-hosted)."""
    openapi: OpenApiSettings | None = None
    enabled: bool = True

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if not sep or scheme.lower() not in ("http", "https") or not rest or rest.startswith("/"):
            raise ValueError(f"expected an http(s) URL such as https://api.example.com/v1, got {value!r}")
        if "?" in rest or "#" in rest or "@" in rest.partition("/")[0]:
            raise ValueError("base_url takes no query, fragment or user info")
        return value.rstrip("/")

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, header_value in value.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in ("authorization", "proxy-authorization", "cookie", "host"):
                raise ValueError(f"{name!r} cannot be a fixed header (credentials go under `auth`)")
            if "\n" in header_value or "\r" in header_value:
                raise ValueError(f"header {name!r}: the value has a line break")
        return value

    @field_validator("allow_private_network")
    @classmethod
    def _networks(cls, value: NetworkAllowance) -> NetworkAllowance:
        if isinstance(value, list):
            for net in value:
                try:
                    ipaddress.ip_network(net, strict=False)
                except ValueError as exc:
                    raise ValueError(f"{net!r} is not a network (expected CIDR like 127.0.0.1/32)") from exc
        return value

    @model_validator(mode="after")
    def _plain_http(self) -> ServiceSettings:
        if self.base_url.lower().startswith("http://") and self.allow_private_network is False:
            raise ValueError(
                "base_url: plain http would send the credential in clear text; use https "
                "(http is accepted only together with allow_private_network, for local services)"
            )
        return self


class CloudOptions(_Model):
    services: dict[Annotated[str, Field(pattern=SERVICE_NAME)], ServiceSettings] = Field(default_factory=dict)
    examples: list[Literal["render", "sentry", "github"]] | Literal["all"] = Field(default_factory=list)
    """Shipped example services to load; each stays off until its secret is provided."""

    @field_validator("examples", mode="before")
    @classmethod
    def _examples(cls, value: Any) -> Any:
        # Checked here, not by the type: pydantic's error for the union names its members
        # (`examples.list[literal[...]].0`, `examples.literal['all']`) instead of the mistake.
        if value == "all":
            return value
        if not isinstance(value, list):
            raise ValueError(
                f'expected a list of shipped examples (render, sentry, github) or "all", got {value!r}'
            )
        unknown = [v for v in value if v not in ("render", "sentry", "github")]
        if unknown:
            raise ValueError(
                f"no shipped example {unknown[0]!r}: the examples are render, sentry and github "
                '(or "all" for every one)'
            )
        return value

    usage_flush_s: float = Field(default=10.0, gt=0)
    """How often the usage counters file (`<state_dir>/cloud/usage.json`) is rewritten."""
    keep_secret_env: bool = False
    """By default an environment variable a secret was read from is removed from the hub's own
    environment, so no process the hub starts (a shell, a sandbox) inherits it."""


def parse_options(options: Mapping[str, Any], where: str = "packs[cloud].options") -> CloudOptions:
    try:
        return CloudOptions.model_validate(dict(options))
    except ValidationError as exc:
        lines = [f"{where}: invalid configuration"]
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-")) or "(top)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (docs/cloud.md lists the keys)"
            lines.append(f"  {loc}: {msg}")
        raise ConfigError("\n".join(lines)) from None


def load_service_file(path: Path) -> dict[str, Any]:
    """A YAML service definition (the shipped examples); relative paths are taken from its folder."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot load service definition: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: cannot load service definition: {yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping")
    openapi = data.get("openapi")
    if isinstance(openapi, dict) and "document" in openapi:
        doc = Path(str(openapi["document"]))
        if not doc.is_absolute():
            data["openapi"] = {**openapi, "document": str(path.parent / doc)}
    return data

"""The `shell` pack's options: which sandbox each principal gets, its limits, and output sizes.

    packs:
      - name: shell
        options:
          default_target: {kind: jail, network: false, limits: {memory_mb: 1024}}
          targets:
            agent-b: {kind: ssh, host: 10.0.0.5, user: sandbox, key_file: /etc/mcphub/agent-b.key,
                      known_host_key: "ssh-ed25519 AAAA..."}

Validated by pydantic; an error names the key (`shell.options.targets.agent-b.port`) and what was expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mcp_local.errors import ConfigError

__all__ = [
    "JailTargetOptions",
    "Limits",
    "ShellOptions",
    "SshLimits",
    "SshTargetOptions",
    "TargetOptions",
    "UnjailedTargetOptions",
    "parse_options",
]

MIB = 1024 * 1024


class Limits(BaseModel):
    """Resource limits of a local sandbox.

    rlimits apply to every process (`cpu_s`, `address_space_mb`, `processes`, `file_size_mb`,
    `open_files`); cgroup limits apply to all the processes of one principal together
    (`memory_mb`, `processes`, `cpus`) where the kernel offers them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    cpu_s: int = Field(default=600, ge=1, description="CPU seconds per process (RLIMIT_CPU)")
    memory_mb: int = Field(default=2048, ge=16, description="memory of the principal's processes (cgroup)")
    address_space_mb: int | None = Field(
        default=None,
        ge=16,
        description="virtual memory per process (RLIMIT_AS); default 4 x memory_mb with a memory "
        "cgroup, memory_mb without one",
    )
    processes: int = Field(
        default=256, ge=4, description="processes of the principal (pids cgroup, RLIMIT_NPROC)"
    )
    file_size_mb: int = Field(
        default=1024, ge=1, description="largest file a process may write (RLIMIT_FSIZE)"
    )
    open_files: int = Field(default=1024, ge=16, description="open files per process (RLIMIT_NOFILE)")
    cpus: float = Field(default=1.0, gt=0, le=1024, description="CPU bandwidth of the principal (cgroup)")
    tmp_mb: int = Field(default=256, ge=1, description="size of the private /tmp and of /dev/shm (tmpfs)")


class SshLimits(BaseModel):
    """Limits the SSH target applies on the remote side with `ulimit` (memory and process limits
    are the remote sandbox's own business)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cpu_s: int | None = Field(default=600, ge=1)
    file_size_mb: int | None = Field(default=1024, ge=1)
    open_files: int | None = Field(default=1024, ge=16)
    address_space_mb: int | None = Field(default=None, ge=16)


class JailTargetOptions(BaseModel):
    """The local bubblewrap jail (the default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["jail"] = "jail"
    network: bool = False
    """False: a private network namespace with only loopback. True: the host's network (including
    the hub's own ports; see docs/shell.md)."""
    limits: Limits = Field(default_factory=Limits)
    bwrap_path: str | None = None
    """Where bubblewrap is; default: `bwrap` in /usr/bin, /bin, /usr/local/bin."""
    ro_paths: list[str] = Field(default_factory=list)
    """More host paths bound read-only at the same place in the jail (e.g. /opt/toolchain)."""
    env: dict[str, str] = Field(default_factory=dict)
    """Environment every command starts with (after PATH, HOME, LANG)."""
    seccomp: bool = True
    """Refuse the system calls a command has no use for (`seccomp.py`: io_uring, BPF, kernel
    keyrings, mounts, ...). False only for tools that need one of them."""

    @field_validator("ro_paths")
    @classmethod
    def _absolute(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith("/") or "\0" in path:
                raise ValueError(f"{path!r}: expected an absolute host path")
        return value


class UnjailedTargetOptions(BaseModel):
    """Commands run directly on the hub's machine as the hub's user: only for trusted setups."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["unjailed"]
    limits: Limits = Field(default_factory=Limits)
    env: dict[str, str] = Field(default_factory=dict)


class SshTargetOptions(BaseModel):
    """A remote sandbox reached over SSH, with a pinned host key."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["ssh"]
    host: str = Field(min_length=1)
    port: int = Field(default=22, ge=1, le=65535)
    user: str = Field(min_length=1, pattern=r"^[a-zA-Z0-9_.][a-zA-Z0-9_.-]{0,63}$")
    key_file: Path
    key_passphrase_env: str | None = None
    """Environment variable holding the key's passphrase, if the key has one."""
    known_host_key: str | None = None
    """The server's public host key, as in known_hosts: `ssh-ed25519 AAAA...`."""
    known_hosts_file: Path | None = None
    workspace: str = "."
    """The remote working directory (relative to the login directory, or absolute); created if missing."""
    limits: SshLimits = Field(default_factory=SshLimits)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    max_connections: int = Field(default=4, ge=1, le=64)
    sessions_per_connection: int = Field(default=8, ge=1, le=64)
    """Channels one connection carries at once (OpenSSH's MaxSessions is 10 by default)."""
    keepalive_s: float = Field(default=30.0, gt=0)
    idle_close_s: float = Field(default=300.0, gt=0)

    @model_validator(mode="after")
    def _pinned(self) -> SshTargetOptions:
        if (self.known_host_key is None) == (self.known_hosts_file is None):
            raise ValueError(
                "give exactly one of known_host_key (e.g. 'ssh-ed25519 AAAA...') and known_hosts_file: "
                "the host key is pinned, never trusted blindly"
            )
        return self


TargetOptions = Annotated[
    JailTargetOptions | UnjailedTargetOptions | SshTargetOptions, Field(discriminator="kind")
]


PREVIEW_BYTES = 16 * 1024
"""Default of `preview_bytes`, when it does not exceed `max_output_bytes`."""
DEFAULT_TIMEOUT_S = 120.0
"""Default of `default_timeout_s`, when it does not exceed `max_timeout_s`."""


class ShellOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    default_target: TargetOptions = Field(default_factory=JailTargetOptions)
    targets: dict[str, TargetOptions] = Field(default_factory=dict)
    """Per principal name: its own target instead of the default."""
    workspace_root: Path | None = None
    """Where local workspaces live; default `<state_dir>/workspaces`."""
    uid_base: int = Field(default=200_000_000, ge=1000, le=4_000_000_000)
    uid_count: int = Field(default=65_536, ge=1, le=1_000_000)
    """Jailed principals run as uids uid_base+1 ... uid_base+uid_count (group uid_base) when the hub
    runs as root."""
    default_timeout_s: float = Field(default=DEFAULT_TIMEOUT_S, gt=0)
    """Unset, 120 s or max_timeout_s if less."""
    max_timeout_s: float = Field(default=3600.0, gt=0)
    preview_bytes: int = Field(default=PREVIEW_BYTES, ge=256)
    """How much of stdout and of stderr a result carries; the rest is stored (see output_read).
    Unset, 16 KiB or max_output_bytes if less."""
    max_output_bytes: int = Field(default=16 * MIB, ge=1024)
    """How much output one command may leave for output_read; beyond it output is counted, not kept."""
    max_background: int = Field(default=16, ge=1)
    """Background processes one principal may have running."""
    background_log_bytes: int = Field(default=4 * MIB, ge=1024)
    """Output kept per background process (the most recent bytes)."""
    background_keep_s: float = Field(default=600.0, gt=0)
    """How long a finished background process's output is kept after it ends; then it is dropped
    (its state and exit code stay)."""
    max_concurrent: int = Field(default=64, ge=1)
    """Commands one principal may have running at once (shell_exec)."""
    max_file_bytes: int = Field(default=4 * MIB, ge=1024)
    """Largest read or write of one fs_read / fs_write call."""

    @field_validator("default_target", mode="before")
    @classmethod
    def _default_kind(cls, value: Any) -> Any:
        return _with_kind(value)

    @field_validator("targets", mode="before")
    @classmethod
    def _targets_kind(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: _with_kind(v) for k, v in value.items()}
        return value

    @model_validator(mode="before")
    @classmethod
    def _defaults_follow_their_bounds(cls, data: Any) -> Any:
        # A default bounded by a key the options set follows it: `max_output_bytes: 8192` alone
        # (valid before preview_bytes was checked against it) is not refused for the default
        # preview. Set explicitly past its bound, a key still is (`_timeouts`).
        if not isinstance(data, dict):
            return data
        for key, bound, default in (
            ("preview_bytes", "max_output_bytes", PREVIEW_BYTES),
            ("default_timeout_s", "max_timeout_s", DEFAULT_TIMEOUT_S),
        ):
            limit = data.get(bound)
            if key not in data and isinstance(limit, int | float) and not isinstance(limit, bool):
                data = {**data, key: min(default, limit)}
        return data

    @model_validator(mode="after")
    def _timeouts(self) -> ShellOptions:
        if self.default_timeout_s > self.max_timeout_s:
            raise ValueError(
                f"default_timeout_s ({self.default_timeout_s:g}) must not exceed "
                f"max_timeout_s ({self.max_timeout_s:g})"
            )
        if self.preview_bytes > self.max_output_bytes:
            # Output between the two would be cut to max_output_bytes and shown as if whole.
            raise ValueError(
                f"preview_bytes ({self.preview_bytes}) must not exceed "
                f"max_output_bytes ({self.max_output_bytes})"
            )
        return self

    def target_for(self, principal: str) -> JailTargetOptions | UnjailedTargetOptions | SshTargetOptions:
        return self.targets.get(principal, self.default_target)


def _with_kind(value: Any) -> Any:
    """A target without `kind` is a jail."""
    if isinstance(value, dict) and "kind" not in value:
        return {"kind": "jail", **value}
    return value


def parse_options(options: Mapping[str, Any], pack: str = "shell") -> ShellOptions:
    """Validate the pack's options; a `ConfigError` names every bad key and what was expected."""
    try:
        return ShellOptions.model_validate(dict(options))
    except ValidationError as exc:
        lines = [f"packs[{pack}].options: invalid"]
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (docs/shell.md lists the options)"
            elif err["type"] == "union_tag_invalid":
                msg = "unknown kind; expected one of: jail, unjailed, ssh"
            lines.append(f"  {pack}.options.{loc}: {msg}")
        raise ConfigError("\n".join(lines)) from None

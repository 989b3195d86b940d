"""What every sandbox target offers the shell pack: run a command, stream its output, kill it, and a
workspace of files.

    SandboxTarget        one kind of sandbox (local jail, unjailed host, SSH); serves many principals
      spawn()  -> SandboxProcess   one running command: output chunks, exit status, kill
      workspace() -> Workspace     the principal's files (see workspace.py)

Targets know nothing of tool calls: timeouts, cancellation, output capture and results are the
pack's (`runner.py`, `shell.py`). A target that cannot run anything (bubblewrap missing, the remote
host unreachable) raises `SandboxUnavailable`, a `ToolError` whose message says what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from mcp_local.errors import ToolError

from .workspace import Workspace

__all__ = [
    "ENV_NAME",
    "ExecSpec",
    "ExitStatus",
    "OutputChunk",
    "SandboxProcess",
    "SandboxTarget",
    "SandboxUnavailable",
    "check_text",
    "reap",
    "sandbox_cwd",
]

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class SandboxUnavailable(ToolError):
    """The sandbox cannot run commands at all; the message says why and how to fix it."""


def check_text(name: str, value: str) -> str:
    """Refuse strings no command line can carry (NUL ends a C string: the rest would vanish)."""
    if "\0" in value:
        raise ToolError(f"{name} contains a NUL character, which no command line can carry")
    return value


def sandbox_cwd(cwd: str | None, home: str) -> str:
    """The command's directory: absolute as given, or relative to the workspace; normalised."""
    if not cwd:
        return home
    return posixpath.normpath(cwd if cwd.startswith("/") else posixpath.join(home, cwd))


@dataclass(frozen=True, slots=True)
class ExecSpec:
    """One command to run: a shell command line for `/bin/sh -c` inside the sandbox."""

    command: str
    cwd: str | None = None
    """Inside the sandbox: absolute, or relative to the workspace."""
    env: Mapping[str, str] = field(default_factory=dict)
    stdin: bytes | None = None
    timeout_s: float | None = None
    """A limit the target also enforces on its side, where it can (SSH: `timeout`)."""

    def __post_init__(self) -> None:
        check_text("command", self.command)
        if self.cwd is not None:
            check_text("cwd", self.cwd)
        for key, value in self.env.items():
            if not ENV_NAME.match(key):
                raise ToolError(
                    f"env: {key[:80]!r} is not a variable name (expected letters, digits and _, "
                    "not starting with a digit)"
                )
            check_text(f"env.{key}", value)


@dataclass(frozen=True, slots=True)
class ExitStatus:
    exit_code: int | None
    """The command's exit code; None when it was killed by a signal."""
    signal: int | None = None
    killed: bool = False
    """True when the hub killed it (timeout, cancellation, shell_kill)."""
    lost: str | None = None
    """Why the command's fate is unknown (the connection to its sandbox was lost), for the caller."""


@dataclass(frozen=True, slots=True)
class OutputChunk:
    stream: str  # "stdout" | "stderr"
    data: bytes


class SandboxProcess(Protocol):
    """A command running in a sandbox."""

    def output(self) -> AsyncIterator[OutputChunk]:
        """Output as it comes, stdout and stderr interleaved, until both are closed."""
        ...

    async def wait(self) -> ExitStatus: ...

    async def kill(self) -> None:
        """Kill the command and everything it started; idempotent; returns promptly."""
        ...


class SandboxTarget(Protocol):
    """A kind of sandbox, shared by the principals configured to use it."""

    kind: str

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Kill what still runs and release resources (connections, cgroups)."""
        ...

    async def spawn(self, principal: str, spec: ExecSpec) -> SandboxProcess:
        """Start `spec.command` in the principal's sandbox; raises SandboxUnavailable or ToolError."""
        ...

    async def workspace(self, principal: str) -> Workspace: ...

    def describe(self, principal: str) -> dict[str, Any]:
        """What the sandbox is and which limits are in force, for shell_status."""
        ...


_REAP_S = 10.0
_reaping: set[asyncio.Task[None]] = set()


def reap(process: SandboxProcess) -> None:
    """After a kill on a path that cannot wait (the call was cancelled): wait for the process in
    the background, within _REAP_S, so what it holds until then is given back (a child to reap,
    an SSH session slot of its pool: a cancelled command used to keep its slot for good)."""

    async def wait() -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_REAP_S):
                await process.wait()

    task = asyncio.get_running_loop().create_task(wait(), name="mcphub-reap")
    _reaping.add(task)
    task.add_done_callback(_reaping.discard)

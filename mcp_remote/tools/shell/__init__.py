"""The `shell` pack: commands and files in each principal's sandbox (a local jail, or a host over SSH)."""

from __future__ import annotations

from .jail import JailHost, LocalJail, UnjailedTarget
from .options import ShellOptions, parse_options
from .pack import ShellPack, create_pack
from .sandbox import ExecSpec, ExitStatus, OutputChunk, SandboxProcess, SandboxTarget, SandboxUnavailable
from .workspace import Workspace

__all__ = [
    "ExecSpec",
    "ExitStatus",
    "JailHost",
    "LocalJail",
    "OutputChunk",
    "SandboxProcess",
    "SandboxTarget",
    "SandboxUnavailable",
    "ShellOptions",
    "ShellPack",
    "UnjailedTarget",
    "Workspace",
    "create_pack",
    "parse_options",
]

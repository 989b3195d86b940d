"""The hub's own tool packs. `shell`: a shell and files in each principal's sandbox (shell.py)."""

from __future__ import annotations

from .jail import JailHost, LocalJail, UnjailedTarget
from .options import ShellOptions, parse_options
from .sandbox import ExecSpec, ExitStatus, OutputChunk, SandboxProcess, SandboxTarget, SandboxUnavailable
from .shell import ShellPack, create_pack
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

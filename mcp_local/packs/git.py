"""The `git` pack: status, diff, log and commit on the workspace's git repository.

Options:

    root: /workspace                  # default: the manifest's `workspace`
    author: {name: Agent, email: agent@sandbox.invalid}   # used when the repository sets none
    allow_commit: true                # false leaves git_commit out
    timeout_s: 60                     # bound on each git command (the call fails, git and what it
                                      # started are killed)

git runs from an argv (never a shell), with `--end-of-options`/`--` before
anything the caller gave; refs that look like options are refused, and paths
must lie inside the workspace and are taken literally (no `:/` or `:(top)`
pathspec magic). The repository is the one whose root is the workspace: git is
given `--git-dir` and `--work-tree`, so it never finds a repository above the
workspace and ignores a `core.worktree` pointing elsewhere. Hooks, pagers,
external diff drivers, textconv, commit signing, automatic gc and fsmonitor are
switched off for every command, and the system git config is not read.

What git configuration can still run is a filter driver (`filter.<name>.clean`)
that `.gitattributes` selects: defining one takes writing `.git/config`, which
the `files` pack refuses, so only a process in the sandbox can. Every command
runs under `timeout_s` (default 60), in a process group of its own: at the timeout, or when
its call is cancelled, the group is killed, so a filter git ran does not live on; a process
that left the group (`setsid`) lives on, and the call ends without waiting for it.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigError, ToolError
from ..tools import Tool, ToolAnnotations, ToolCall
from ..workspace import Workspace
from . import PackEnv, StaticPack
from .cancelling import OWN_PROCESS_GROUP, kill_process_group
from .options import PackOptions

__all__ = ["create_pack"]

MAX_OUTPUT = 512 * 1024
DEFAULT_TIMEOUT_S = 60.0
_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/@{}~^:+-]{0,254}")
_HARDENING = (
    "-c", "core.fsmonitor=false",
    "-c", "core.pager=cat",
    "-c", "core.hooksPath=/dev/null",
    "-c", "diff.external=",
    "-c", "color.ui=false",
    "-c", "commit.gpgSign=false",
    "-c", "gc.auto=0",
    "-c", "maintenance.auto=false",
)  # fmt: skip


def check_ref(ref: str) -> str:
    """A revision the caller named; option-looking or odd values are refused before git sees them."""
    if ref.startswith("-") or not _REF.fullmatch(ref):
        raise ToolError(f"ref {ref[:80]!r} is not a revision name (e.g. HEAD, main, HEAD~2, v1.0, abc123)")
    return ref


class _Git:
    def __init__(self, workspace: Workspace, author: tuple[str, str] | None, git: str) -> None:
        self.ws = workspace
        self.author = author
        self.git = git

    async def run(self, *args: str, ok_codes: Sequence[int] = (0,)) -> str:
        if not os.path.lexists(self.ws.root / ".git"):  # noqa: ASYNC240 - one lstat
            # Checked here: without a repository `git diff` falls back to comparing files (--no-index).
            raise ToolError(
                f"the workspace {self.ws.root} is not a git repository (no .git at its root); "
                "the git tools work on the repository whose root is the workspace"
            )
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", str(self.ws.root)),
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_OPTIONAL_LOCKS": "0",
            "GIT_LITERAL_PATHSPECS": "1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "LC_ALL": "C.UTF-8",
        }
        if self.author is not None:
            env.update(
                GIT_AUTHOR_NAME=self.author[0],
                GIT_AUTHOR_EMAIL=self.author[1],
                GIT_COMMITTER_NAME=self.author[0],
                GIT_COMMITTER_EMAIL=self.author[1],
            )
        proc = await asyncio.create_subprocess_exec(
            self.git,
            "-C",
            str(self.ws.root),
            f"--git-dir={self.ws.root / '.git'}",
            f"--work-tree={self.ws.root}",
            "--no-pager",
            *_HARDENING,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            process_group=OWN_PROCESS_GROUP,
        )
        try:
            out, err = await proc.communicate()
        except asyncio.CancelledError:
            # The whole group: a program git started (a filter) would hold git's pipes and live on.
            await kill_process_group(proc)
            raise
        if proc.returncode not in ok_codes:
            message = err.decode(errors="replace").strip() or out.decode(errors="replace").strip()
            raise ToolError(f"git {args[0]} failed (exit {proc.returncode}): {message[:4000]}")
        text = out.decode(errors="replace")
        if len(text) > MAX_OUTPUT:
            text = text[:MAX_OUTPUT] + f"\n[... output cut at {MAX_OUTPUT} characters; narrow it with paths]"
        return text

    def paths(self, call: ToolCall) -> list[str]:
        return [
            self.ws.relative(self.ws.resolve(p, must_exist=False)) for p in call.arguments.get("paths", [])
        ]

    async def status(self, call: ToolCall) -> str:
        out = await self.run("status", "--short", "--branch", "--untracked-files=all")
        return out or "nothing to report"

    async def diff(self, call: ToolCall) -> str:
        args = ["diff", "--no-ext-diff", "--no-textconv", "--no-color"]
        if call.arguments.get("staged", False):
            args.append("--cached")
        if call.arguments.get("stat", False):
            args.append("--stat")
        ref = call.arguments.get("ref")
        args.append("--end-of-options")
        if ref:
            args.append(check_ref(ref))
        out = await self.run(*args, "--", *self.paths(call))
        return out or "no differences"

    async def log(self, call: ToolCall) -> str:
        count = int(call.arguments.get("max_count", 20))
        args = [
            "log",
            f"--max-count={count}",
            "--date=iso-strict",
            "--format=%H %ad %an%n    %s",
            "--end-of-options",
        ]
        ref = call.arguments.get("ref")
        if ref:
            args.append(check_ref(ref))
        return await self.run(*args, "--", *self.paths(call))

    async def commit(self, call: ToolCall) -> str:
        message: str = call.arguments["message"]
        if "\x00" in message:
            raise ToolError("message contains a NUL byte, which git cannot store")
        paths = self.paths(call)
        if call.arguments.get("all", False):
            await self.run("add", "--all", "--", *(paths or ["."]))
        elif paths:
            await self.run("add", "--", *paths)
        args = ["commit", "--no-verify", "-m", message]
        if call.arguments.get("allow_empty", False):
            args.append("--allow-empty")
        await self.run(*args)
        return await self.run("log", "--max-count=1", "--format=committed %H%n    %s")


def _find_program(name: str, search_path: str) -> str | None:
    """The first executable `name` in the absolute directories of `search_path`.

    Relative entries (`.`, an empty one) are skipped: they would find a `git` planted in the
    workspace. Not `shutil.which`: shutil brings bz2 and lzma, which a sidecar otherwise never loads.
    """
    for directory in search_path.split(os.pathsep):
        candidate = os.path.join(directory, name)
        if os.path.isabs(directory) and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def create_pack(options: Mapping[str, Any], env: PackEnv) -> StaticPack:
    opts = PackOptions("git", options)
    root = opts.string("root", default=str(env.extra.get("workspace", ".")))
    workspace = Workspace.at(root, key="packs[git].options.root")
    author_raw = opts.raw("author")
    author: tuple[str, str] | None = None
    if author_raw is not None:
        if (
            not isinstance(author_raw, Mapping)
            or not isinstance(author_raw.get("name"), str)
            or not isinstance(author_raw.get("email"), str)
        ):
            raise ConfigError(f"{opts.where('author')}: expected {{name: ..., email: ...}}")
        author = (author_raw["name"], author_raw["email"])
    allow_commit = opts.boolean("allow_commit", default=True)
    timeout = opts.number("timeout_s", default=DEFAULT_TIMEOUT_S, minimum=1, maximum=3600)
    opts.done()
    git = _find_program("git", os.environ.get("PATH", "/usr/bin:/bin"))
    if git is None:
        raise ConfigError("packs[git]: the git program is not installed in this image")
    g = _Git(workspace, author, git)
    ro = ToolAnnotations(read_only=True, destructive=False, idempotent=True, open_world=False)
    paths_prop = {
        "type": "array",
        "items": {"type": "string", "maxLength": 4096},
        "maxItems": 200,
        "description": "Limit to these paths (relative to the workspace).",
    }
    ref_prop = {
        "type": "string",
        "maxLength": 255,
        "description": "A revision, e.g. HEAD~1, main, a commit id.",
    }
    tools = [
        Tool(
            name="git_status",
            title="git status",
            description=(
                "Show the branch and the changed and untracked files of the workspace's git repository."
            ),
            input_schema={"type": "object", "properties": {}, "additionalProperties": False},
            handler=g.status,
            timeout_s=timeout,
            annotations=ro,
        ),
        Tool(
            name="git_diff",
            title="git diff",
            description=(
                "Show changes: of the working tree against the index (default), of the index against "
                "HEAD (staged=true), or against a ref; optionally only a summary (stat=true)."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "staged": {"type": "boolean", "default": False},
                    "ref": ref_prop,
                    "stat": {"type": "boolean", "default": False},
                    "paths": paths_prop,
                },
                "additionalProperties": False,
            },
            handler=g.diff,
            timeout_s=timeout,
            annotations=ro,
        ),
        Tool(
            name="git_log",
            title="git log",
            description="Show recent commits (id, date, author, subject), optionally of a ref or paths.",
            input_schema={
                "type": "object",
                "properties": {
                    "max_count": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 20},
                    "ref": ref_prop,
                    "paths": paths_prop,
                },
                "additionalProperties": False,
            },
            handler=g.log,
            timeout_s=timeout,
            annotations=ro,
        ),
    ]
    if allow_commit:
        tools.append(
            Tool(
                name="git_commit",
                title="git commit",
                description=(
                    "Commit: stage the given paths (or every change with all=true) and commit with the "
                    "message. Hooks do not run."
                ),
                input_schema={
                    "type": "object",
                    "properties": {
                        "message": {"type": "string", "minLength": 1, "maxLength": 20_000},
                        "paths": paths_prop,
                        "all": {"type": "boolean", "default": False},
                        "allow_empty": {"type": "boolean", "default": False},
                    },
                    "required": ["message"],
                    "additionalProperties": False,
                },
                handler=g.commit,
                timeout_s=timeout,
                annotations=ToolAnnotations(
                    read_only=False, destructive=False, idempotent=False, open_world=False
                ),
            )
        )
    return StaticPack("git", tools)

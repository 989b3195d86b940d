"""The `shell` pack: a shell in each principal's sandbox, background processes, and its files.

    shell_exec   run a command to completion, output streamed while it runs
    shell_start  start a background process        shell_status  list / inspect them
    shell_read   read a background process's output by offset
    shell_kill   kill a background process and everything it started
    fs_read, fs_write, fs_list, fs_search          the sandbox's workspace (fs.py)

Which sandbox a principal gets is chosen in the pack's options (options.py): the local bubblewrap
jail by default, `ssh` for a remote sandbox, `unjailed` only for trusted setups.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import resource
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import orjson

from mcp_local.content import TextContent, ToolResult
from mcp_local.outputs import only_a_cut_character, text_page
from mcp_local.packs import PackEnv
from mcp_local.tools import Tool, ToolAnnotations, ToolCall

from .fs import fs_tools
from .jail import JailHost, LocalJail, UnjailedTarget, rlimit_values
from .options import JailTargetOptions, ShellOptions, SshTargetOptions, UnjailedTargetOptions, parse_options
from .processes import FINISHED_LOGS, PROCESS_ID_PATTERN, BackgroundProcess, ProcessTable
from .runner import EXEC_OUTPUT_SCHEMA, run_command
from .sandbox import ExecSpec, SandboxTarget

__all__ = ["ShellPack", "create_pack"]

logger = logging.getLogger(__name__)

_LIMIT_KEYS = {
    "RLIMIT_CPU": "cpu_s",
    "RLIMIT_AS": "address_space_mb",
    "RLIMIT_FSIZE": "file_size_mb",
    "RLIMIT_NOFILE": "open_files",
}
_CAP_SYS_RESOURCE = 24
_MAX_COMMAND = 100_000  # one argv string may not exceed 128 KiB (MAX_ARG_STRLEN)
_READ_DEFAULT = 64 * 1024


def _command_schema(max_timeout_s: float, background: bool) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "command": {
                "type": "string",
                "minLength": 1,
                "maxLength": _MAX_COMMAND,
                "description": "A shell command line, run by /bin/sh -c inside the sandbox.",
            },
            "cwd": {
                "type": "string",
                "maxLength": 4096,
                "description": "Where to run: absolute inside the sandbox, or relative to the workspace.",
            },
            "env": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "maxProperties": 256,
                "description": "Extra environment variables.",
            },
            "stdin": {"type": "string", "maxLength": 16 * 1024 * 1024, "description": "Text fed to stdin."},
            "timeout_s": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": max_timeout_s,
                "description": (
                    "Kill the process (and all it started) after this many seconds."
                    + (" Default: none (it runs until shell_kill or the hub stops)." if background else "")
                ),
            },
        },
        "required": ["command"],
        "additionalProperties": False,
    }


_PROCESS_ID = {"type": "string", "pattern": PROCESS_ID_PATTERN}


class ShellPack:
    name = "shell"

    def __init__(self, options: ShellOptions, env: PackEnv, environ: Mapping[str, str]) -> None:
        self.options = options
        self.env = env
        self.host = JailHost(options, env.state_dir)
        self._targets: dict[str, SandboxTarget] = {}
        self._by_config: dict[str, SandboxTarget] = {}
        self._environ = dict(environ)
        self.processes = ProcessTable(
            max_running=options.max_background,
            log_bytes=options.background_log_bytes,
            keep_finished_s=options.background_keep_s,
        )
        self._running: dict[str, asyncio.Semaphore] = {}
        for principal, target_options in [("", options.default_target), *options.targets.items()]:
            self._targets[principal] = self._target(target_options)
        self._tools = self._make_tools()

    def _target(self, o: JailTargetOptions | UnjailedTargetOptions | SshTargetOptions) -> SandboxTarget:
        key = o.model_dump_json()
        found = self._by_config.get(key)
        if found is not None:
            return found
        target: SandboxTarget
        if isinstance(o, JailTargetOptions):
            target = LocalJail(o, self.host)
        elif isinstance(o, UnjailedTargetOptions):
            target = UnjailedTarget(o, self.host)
        else:
            from .ssh import SshTarget  # asyncssh is only imported when a target needs it

            target = SshTarget(o, self.env.redactor, self._environ)
        self._by_config[key] = target
        return target

    def target_for(self, principal: str) -> SandboxTarget:
        return self._targets.get(principal) or self._targets[""]

    def tools(self) -> Sequence[Tool]:
        return self._tools

    async def start(self) -> None:
        await self.host.start()
        for target in self._by_config.values():
            await target.start()
        kinds = sorted({t.kind for t in self._by_config.values()})
        logger.info("shell: targets %s, workspaces in %s", ", ".join(kinds), self.host.root)
        self._check_hard_limits()

    def _check_hard_limits(self) -> None:
        """Warn of a local target whose rlimits exceed the hub's own hard limits: a hub without
        CAP_SYS_RESOURCE (not root, or root in a container that dropped it) cannot raise them, so
        every command of that target would fail (exit 125)."""
        if _may_raise_hard_limits():
            return
        for target in self._by_config.values():
            if not isinstance(target, LocalJail | UnjailedTarget):
                continue
            limits = target.options.limits
            for name, value in rlimit_values(limits, cgroup_memory=False, nproc=False):
                hard = resource.getrlimit(getattr(resource, name))[1]
                if hard == resource.RLIM_INFINITY or hard >= value or name not in _LIMIT_KEYS:
                    continue
                logger.warning(
                    "shell: every command of the %s target will fail: it sets %s to %d (limits.%s), above "
                    "the hub's own hard limit, %d, which it cannot raise (no CAP_SYS_RESOURCE). Raise the "
                    "hub's limit (systemd: LimitNOFILE= and the like in its unit; a shell: ulimit -H before "
                    "`mcphub serve`) or lower limits.%s in the shell pack's options",
                    target.kind, name, value, _LIMIT_KEYS[name], hard, _LIMIT_KEYS[name],
                )  # fmt: skip

    async def stop(self) -> None:
        await self.processes.close()
        for target in self._by_config.values():
            try:
                await target.stop()
            except Exception:  # one target failing to stop must not keep the others running
                logger.exception("shell: target %s did not stop cleanly", target.kind)
        await self.host.stop()

    # --- shell tools --------------------------------------------------------------------------

    def _spec(self, call: ToolCall, *, timeout_s: float | None) -> ExecSpec:
        a = call.arguments
        stdin = a.get("stdin")
        return ExecSpec(
            command=a["command"],
            cwd=a.get("cwd"),
            env=dict(a.get("env") or {}),
            stdin=stdin.encode() if isinstance(stdin, str) else None,
            timeout_s=timeout_s,
        )

    async def _exec(self, call: ToolCall) -> ToolResult:
        assert call.principal is not None
        principal = call.principal.name
        timeout_s = float(call.arguments.get("timeout_s") or self.options.default_timeout_s)
        spec = self._spec(call, timeout_s=timeout_s)
        slots = self._running.setdefault(principal, asyncio.Semaphore(self.options.max_concurrent))
        async with slots:
            return await run_command(
                call,
                self.target_for(principal),
                spec,
                timeout_s=timeout_s,
                outputs=self.env.outputs,
                preview_bytes=self.options.preview_bytes,
                max_output_bytes=self.options.max_output_bytes,
            )

    async def _start(self, call: ToolCall) -> ToolResult:
        assert call.principal is not None
        raw = call.arguments.get("timeout_s")
        timeout_s = float(raw) if raw else None
        spec = self._spec(call, timeout_s=timeout_s)
        bp = await self.processes.start(
            call.principal.name, self.target_for(call.principal.name), spec, timeout_s
        )
        text = (
            f"started {bp.process_id}. Read its output with shell_read "
            + orjson.dumps({"process_id": bp.process_id, "offset": 0}).decode()
            + ", stop it with shell_kill."
        )
        return ToolResult(content=(TextContent(text),), structured=bp.summary())

    async def _status(self, call: ToolCall) -> ToolResult:
        assert call.principal is not None
        principal = call.principal.name
        process_id = call.arguments.get("process_id")
        if process_id:
            summary = self.processes.get(principal, process_id).summary()
            return ToolResult(content=(TextContent(orjson.dumps(summary).decode()),), structured=summary)
        listing = {
            "sandbox": self.target_for(principal).describe(principal),
            "processes": [p.summary() for p in self.processes.list(principal)],
        }
        text = orjson.dumps(listing, option=orjson.OPT_INDENT_2).decode()
        return ToolResult(content=(TextContent(text),), structured=listing)

    async def _read(self, call: ToolCall) -> ToolResult:
        assert call.principal is not None
        a = call.arguments
        bp = self.processes.get(call.principal.name, a["process_id"])
        if bp.log_dropped:
            return self._dropped(bp)
        offset = int(a.get("offset", 0))
        wait_s = float(a.get("wait_s", 0))
        deadline = asyncio.get_running_loop().time() + wait_s
        await bp.log.wait_beyond(offset, wait_s)
        limit = int(a.get("max_bytes", _READ_DEFAULT))
        while True:
            state = bp.state
            piece = bp.log.read(offset, limit + 3)  # up to 3 bytes more: the rest of a character
            data, start, skipped = piece.data, piece.offset, 0
            if start > offset:  # the log dropped its head, maybe inside a character: start after it
                skipped = next((i for i, b in enumerate(data[:3]) if b & 0xC0 != 0x80), min(len(data), 3))
                data, start = data[skipped:], start + skipped
            # A page ends on a character: one that is cut (the page's limit, or a process still
            # writing it) is read whole with the next page.
            writing = state == "running" and start + len(data) == piece.end and only_a_cut_character(data)
            if not writing:
                data = data[
                    : text_page(data, limit, more=start + len(data) < piece.end or state == "running")
                ]
                break
            # All there is is the start of a character the process is still writing: wait for
            # the rest (within wait_s) rather than show it cut.
            left = deadline - asyncio.get_running_loop().time()
            if left > 0:
                await bp.log.wait_beyond(piece.end, left)
                if bp.log.end > piece.end or bp.state != state:
                    continue
            data = b""
            break
        next_offset = start + len(data)
        notes = []
        if start > offset:
            notes.append(
                f"bytes {offset}-{start - skipped} are no longer kept (the log keeps the latest)"
                + (
                    f"; bytes {start - skipped}-{start}, the rest of a character cut there, are skipped"
                    if skipped
                    else ""
                )
            )
        more = next_offset < piece.end and not writing
        if more:
            notes.append(f"more output: continue with offset {next_offset}")
        elif state == "running":
            notes.append(f"no more output yet; the process is running (next offset {next_offset})")
        else:
            code = bp.status.exit_code if bp.status else None
            notes.append(
                f"end of output; the process {state}"
                + (f" with exit code {code}" if code is not None else "")
            )
        try:
            text, encoding = data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            # Exact bytes, as output_read gives them: U+FFFD in their place could not be undone.
            text, encoding = base64.b64encode(data).decode("ascii"), "base64"
            notes.insert(0, "not UTF-8 text: the output is base64 (encoding: base64)")
        structured = {
            "process_id": bp.process_id,
            "state": state,
            "exit_code": bp.status.exit_code if bp.status else None,
            "offset": start,
            "next_offset": next_offset,
            "end": piece.end,
            "output": text,
            "encoding": encoding,
        }
        body = (
            "\n".join([text.rstrip("\n")] if text else []) + ("\n" if text else "") + f"[{'; '.join(notes)}]"
        )
        return ToolResult(content=(TextContent(body),), structured=structured)

    def _dropped(self, bp: BackgroundProcess) -> ToolResult:
        """shell_read of a finished process whose output is no longer kept: what became of it."""
        code = bp.status.exit_code if bp.status else None
        end = bp.log.end
        text = (
            f"[the process {bp.state}" + (f" with exit code {code}" if code is not None else "")
            + f"; of the {end} bytes of output it wrote, none are kept any longer: a finished "
            f"process's output is dropped {self.options.background_keep_s:g} s after it ends, or "
            f"sooner when your finished processes hold more than {FINISHED_LOGS} x "
            "background_log_bytes of it]"
        )  # fmt: skip
        structured = {
            "process_id": bp.process_id,
            "state": bp.state,
            "exit_code": code,
            "offset": end,
            "next_offset": end,
            "end": end,
            "output": "",
            "output_dropped": True,
        }
        return ToolResult(content=(TextContent(text),), structured=structured)

    async def _kill(self, call: ToolCall) -> ToolResult:
        assert call.principal is not None
        bp = await self.processes.kill(call.principal.name, call.arguments["process_id"])
        summary = bp.summary()
        verb = "was already" if summary["state"] == "exited" else "is"
        return ToolResult(
            content=(TextContent(f"{bp.process_id} {verb} {summary['state']}"),), structured=summary
        )

    def _make_tools(self) -> list[Tool]:
        o = self.options
        targets = list(self._by_config.values())
        open_world = any(
            t.kind == "ssh" or (isinstance(t, LocalJail) and t.options.network) or t.kind == "unjailed"
            for t in targets
        )
        act = ToolAnnotations(read_only=False, destructive=True, idempotent=False, open_world=open_world)
        look = ToolAnnotations(read_only=True, destructive=False, idempotent=True, open_world=False)
        exec_timeout = max(o.max_timeout_s, o.default_timeout_s) + 30
        return [
            Tool(
                name="shell_exec",
                title="Run a shell command",
                description=(
                    "Run a command with /bin/sh -c in your sandbox and wait for it. Returns exit code, "
                    f"stdout, stderr and duration; output streams while it runs. Default timeout "
                    f"{o.default_timeout_s:g}s; on timeout or cancellation the command and all it started "
                    "are killed. Long output: the result shows the start and gives an output_id for "
                    "output_read. Relative paths are relative to your workspace."
                ),
                input_schema=_command_schema(o.max_timeout_s, background=False),
                output_schema=EXEC_OUTPUT_SCHEMA,
                handler=self._exec,
                annotations=replace(act, title="Run a shell command"),
                timeout_s=exec_timeout,
            ),
            Tool(
                name="shell_start",
                title="Start a background process",
                description=(
                    "Start a command in the background in your sandbox (a server, a long build). Returns a "
                    "process_id for shell_status, shell_read and shell_kill."
                ),
                input_schema=_command_schema(o.max_timeout_s, background=True),
                handler=self._start,
                annotations=replace(act, title="Start a background process"),
            ),
            Tool(
                name="shell_status",
                title="Background processes",
                description=(
                    "Without process_id: your sandbox (target, limits) and your background processes. "
                    "With process_id: that process's state and exit code."
                ),
                input_schema={
                    "type": "object",
                    "properties": {"process_id": _PROCESS_ID},
                    "additionalProperties": False,
                },
                handler=self._status,
                annotations=replace(look, title="Background processes"),
            ),
            Tool(
                name="shell_read",
                title="Read a background process's output",
                description=(
                    "Output of a background process (stdout and stderr interleaved) from a byte offset; "
                    "the result gives the next offset. wait_s waits for new output first."
                ),
                input_schema={
                    "type": "object",
                    "properties": {
                        "process_id": _PROCESS_ID,
                        "offset": {"type": "integer", "minimum": 0, "default": 0},
                        "max_bytes": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 1024 * 1024,
                            "default": _READ_DEFAULT,
                        },
                        "wait_s": {"type": "number", "minimum": 0, "maximum": 60, "default": 0},
                    },
                    "required": ["process_id"],
                    "additionalProperties": False,
                },
                handler=self._read,
                annotations=replace(look, title="Read a background process's output"),
                timeout_s=90,
            ),
            Tool(
                name="shell_kill",
                title="Kill a background process",
                description="Kill a background process and everything it started (SIGKILL).",
                input_schema={
                    "type": "object",
                    "properties": {"process_id": _PROCESS_ID},
                    "required": ["process_id"],
                    "additionalProperties": False,
                },
                handler=self._kill,
                annotations=replace(act, title="Kill a background process"),
            ),
            *fs_tools(self, o.max_file_bytes),
        ]


def _may_raise_hard_limits() -> bool:
    """Whether this process has CAP_SYS_RESOURCE (which the spawner, forked from it, inherits)."""
    try:
        with open("/proc/self/status") as f:
            effective = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        return os.geteuid() == 0
    return bool(effective & (1 << _CAP_SYS_RESOURCE))


def create_pack(options: Mapping[str, Any], env: PackEnv) -> ShellPack:
    """The entry point (`mcphub.packs: shell`). The environment is read here, at the edge, for SSH
    key passphrases named by `key_passphrase_env`."""
    return ShellPack(parse_options(options), env, os.environ)

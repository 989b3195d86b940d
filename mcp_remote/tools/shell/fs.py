"""fs_read, fs_write, fs_list and fs_search: the files of the caller's sandbox workspace.

Paths are relative to the workspace or absolute under where the sandbox sees it (`/workspace` in
the jail); workspace.py has the rules. fs_search runs `grep` inside the sandbox (so a costly
pattern spends the sandbox's CPU, not the hub's) with a command line of quoted arguments only.
"""

from __future__ import annotations

import base64
import binascii
import shlex
from typing import TYPE_CHECKING, Any

from mcp_local.content import TextContent, ToolResult
from mcp_local.errors import ToolError
from mcp_local.outputs import decode_page, preview_length
from mcp_local.tools import Tool, ToolAnnotations, ToolCall

from .sandbox import ExecSpec, check_text
from .workspace import Workspace

if TYPE_CHECKING:
    from .pack import ShellPack

__all__ = ["fs_tools", "grep_command", "parse_grep"]

_SEARCH_TIMEOUT_S = 60.0
_LIST_DEFAULT = 1000


def grep_command(pattern: str, directory: str, *, regex: bool, case_sensitive: bool, glob: str | None) -> str:
    """The search's command line: each argument quoted, the pattern after -e, paths after --."""
    check_text("pattern", pattern)
    if "\n" in pattern or "\r" in pattern:
        raise ToolError(
            "pattern must be one line (grep reads a newline as a second pattern; use | in a regex)"
        )
    args = [
        "grep",
        "-r",
        "-n",
        "-I",
        "-H",
        "-Z",
        "--color=never",
        "--exclude-dir=.git",
        "-E" if regex else "-F",
    ]
    if not case_sensitive:
        args.append("-i")
    if glob:
        check_text("glob", glob)
        args.append("--include=" + glob)
    args += ["-e", pattern, "--", directory]
    return " ".join(shlex.quote(a) for a in args)


def parse_grep(data: bytes, mount: str) -> list[dict[str, Any]]:
    """`path NUL line:text` records (grep -Z) to hits with workspace-relative paths."""
    hits = []
    prefix = mount.rstrip("/") + "/"
    for record in data.split(b"\n"):
        path, sep, rest = record.partition(b"\0")
        if not sep:
            continue
        number, _, text = rest.partition(b":")
        name = path.decode("utf-8", errors="replace")
        if name.startswith(prefix):
            name = name[len(prefix) :]
        if number.isdigit():
            hits.append(
                {
                    "path": name,
                    "line": int(number),
                    "text": text[: preview_length(text, 500)].decode("utf-8", errors="replace"),
                }
            )
    return hits


def fs_tools(pack: ShellPack, max_file_bytes: int) -> list[Tool]:
    async def workspace(call: ToolCall) -> Workspace:
        assert call.principal is not None
        principal = call.principal.name
        return await pack.target_for(principal).workspace(principal)

    async def fs_read(call: ToolCall) -> ToolResult:
        a = call.arguments
        ws = await workspace(call)
        chunk = await ws.read(a["path"], int(a.get("offset", 0)), int(a.get("limit", max_file_bytes)))
        more = chunk.offset + len(chunk.data) < chunk.size
        text, encoding, used = decode_page(chunk.data, more=more)
        end = chunk.offset + used
        structured = {
            "path": chunk.path,
            "size": chunk.size,
            "offset": chunk.offset,
            "next_offset": end if end < chunk.size else None,
            "encoding": encoding,
            "content": text,
        }
        blocks = [TextContent(text)]
        if encoding == "base64":
            blocks.insert(0, TextContent(f"[{chunk.path}: binary, {chunk.size} bytes; shown as base64]"))
        if end < chunk.size:
            blocks.append(TextContent(f"[{chunk.path}: {chunk.size} bytes; continue with offset {end}]"))
        return ToolResult(content=tuple(blocks), structured=structured)

    async def fs_write(call: ToolCall) -> ToolResult:
        a = call.arguments
        content: str = a["content"]
        if a.get("encoding", "utf-8") == "base64":
            try:
                data = base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ToolError(f"content is not valid base64: {exc}") from None
        else:
            data = content.encode()
        if len(data) > max_file_bytes:
            raise ToolError(f"content is {len(data)} bytes; one fs_write takes at most {max_file_bytes}")
        ws = await workspace(call)
        done = await ws.write(
            a["path"],
            data,
            append=bool(a.get("append", False)),
            make_parents=bool(a.get("make_parents", True)),
        )
        verb = (
            "appended to"
            if a.get("append") and not done.created
            else ("created" if done.created else "wrote")
        )
        structured = {"path": done.path, "size": done.size, "created": done.created}
        return ToolResult(
            content=(TextContent(f"{verb} {done.path} ({done.size} bytes)"),), structured=structured
        )

    async def fs_list(call: ToolCall) -> ToolResult:
        a = call.arguments
        ws = await workspace(call)
        entries, complete = await ws.list(
            a.get("path", "."),
            recursive=bool(a.get("recursive", False)),
            max_entries=int(a.get("max_entries", _LIST_DEFAULT)),
        )
        lines = []
        for e in entries:
            if e.kind == "dir":
                lines.append(f"{e.path}/")
            elif e.kind == "symlink":
                lines.append(f"{e.path} -> {e.target}")
            else:
                lines.append(f"{e.path}  ({e.size} bytes)" if e.kind == "file" else f"{e.path}  ({e.kind})")
        if not complete:
            lines.append(f"[stopped at {len(entries)} entries; list a subdirectory or raise max_entries]")
        if not lines:
            lines.append("[empty directory]")
        structured = {
            "entries": [
                {
                    "path": e.path,
                    "type": e.kind,
                    "size": e.size,
                    "mtime": e.mtime,
                    **({"target": e.target} if e.target else {}),
                }
                for e in entries
            ],
            "complete": complete,
        }
        return ToolResult(content=(TextContent("\n".join(lines)),), structured=structured)

    async def fs_search(call: ToolCall) -> ToolResult:
        assert call.principal is not None
        a = call.arguments
        principal = call.principal.name
        target = pack.target_for(principal)
        ws = await target.workspace(principal)
        directory = await ws.resolve_dir(a.get("path", "."))
        max_results = int(a.get("max_results", 200))
        command = grep_command(
            a["pattern"],
            directory,
            regex=bool(a.get("regex", False)),
            case_sensitive=bool(a.get("case_sensitive", True)),
            glob=a.get("glob"),
        )
        process = await target.spawn(principal, ExecSpec(command=command, timeout_s=_SEARCH_TIMEOUT_S))
        out = bytearray()
        err = bytearray()
        complete = True
        try:
            async for chunk in process.output():
                if chunk.stream == "stderr":
                    err += chunk.data[: 4096 - len(err)]
                    continue
                out += chunk.data
                if out.count(b"\n") > max_results:
                    complete = False
                    break
        except BaseException:
            await process.kill()
            raise
        if not complete:
            await process.kill()
        status = await process.wait()
        hits = parse_grep(bytes(out), ws.mount)[:max_results]
        if status.exit_code == 2 or (status.exit_code not in (0, 1) and not hits and complete):
            raise ToolError(f"search failed: {err.decode(errors='replace').strip() or status}")
        lines = [f"{h['path']}:{h['line']}: {h['text']}" for h in hits]
        if not complete:
            lines.append(f"[stopped at {max_results} matches; narrow the path or pattern]")
        if not hits:
            lines.append("[no matches]")
        structured = {"matches": hits, "complete": complete}
        return ToolResult(content=(TextContent("\n".join(lines)),), structured=structured)

    path = {
        "type": "string",
        "minLength": 1,
        "maxLength": 4096,
        "description": "Relative to the workspace, or absolute under it.",
    }
    return [
        Tool(
            name="fs_read",
            title="Read a file",
            description=(
                "Read a file of your workspace (UTF-8 text, or base64 for binary). Large files: page with "
                "offset and limit (bytes)."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "path": path,
                    "offset": {"type": "integer", "minimum": 0, "default": 0},
                    "limit": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": max_file_bytes,
                        "default": max_file_bytes,
                    },
                },
                "required": ["path"],
                "additionalProperties": False,
            },
            handler=fs_read,
            annotations=ToolAnnotations("Read a file", True, False, True, False),
        ),
        Tool(
            name="fs_write",
            title="Write a file",
            description=(
                "Write a file in your workspace: replaces it whole (atomically) or, with append, adds to it. "
                "Missing parent directories are made unless make_parents is false."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "path": path,
                    "content": {"type": "string"},
                    "encoding": {"enum": ["utf-8", "base64"], "default": "utf-8"},
                    "append": {"type": "boolean", "default": False},
                    "make_parents": {"type": "boolean", "default": True},
                },
                "required": ["path", "content"],
                "additionalProperties": False,
            },
            handler=fs_write,
            annotations=ToolAnnotations("Write a file", False, True, False, False),
        ),
        Tool(
            name="fs_list",
            title="List a directory",
            description="List a directory of your workspace (recursive: the whole tree, skipping .git).",
            input_schema={
                "type": "object",
                "properties": {
                    "path": {**path, "default": "."},
                    "recursive": {"type": "boolean", "default": False},
                    "max_entries": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": 100_000,
                        "default": _LIST_DEFAULT,
                    },
                },
                "additionalProperties": False,
            },
            handler=fs_list,
            annotations=ToolAnnotations("List a directory", True, False, True, False),
        ),
        Tool(
            name="fs_search",
            title="Search files",
            description=(
                "Find lines matching a pattern in the files under a directory of your workspace (grep: a "
                "literal string, or an extended regular expression with regex=true). glob limits the "
                "files searched by name, e.g. *.py. Binary files and .git are skipped."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "pattern": {"type": "string", "minLength": 1, "maxLength": 4096},
                    "path": {**path, "default": "."},
                    "glob": {"type": "string", "minLength": 1, "maxLength": 256},
                    "regex": {"type": "boolean", "default": False},
                    "case_sensitive": {"type": "boolean", "default": True},
                    "max_results": {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 200},
                },
                "required": ["pattern"],
                "additionalProperties": False,
            },
            handler=fs_search,
            annotations=ToolAnnotations("Search files", True, False, True, False),
            timeout_s=_SEARCH_TIMEOUT_S + 30,
        ),
    ]

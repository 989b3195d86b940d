"""The `files` pack: read, write, list and search files under the sandbox's workspace.

Options:

    root: /workspace          # default: the manifest's `workspace`
    max_read_bytes: 262144    # most bytes one files_read returns (the call says where to go on)
    max_write_bytes: 8388608
    writable: true            # false leaves files_write out
    exclude: [.git, node_modules, __pycache__]   # directory names files_list/files_search skip

Every path is relative to the root and resolved safely (see `mcp_local.workspace`).
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import re
import stat
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson

from ..content import TextContent, ToolResult
from ..errors import ConfigError, ToolError
from ..tools import Tool, ToolAnnotations, ToolCall, ToolHandler
from ..workspace import Workspace
from . import PackEnv, StaticPack
from .options import PackOptions

__all__ = ["create_pack"]

DEFAULT_EXCLUDE = (".git", "node_modules", "__pycache__", ".venv")
MAX_LIST_ENTRIES = 2000
MAX_SEARCH_FILE_BYTES = 4 * 1024 * 1024


def _is_binary(sample: bytes) -> bool:
    return b"\x00" in sample[:8192]


class _Files:
    def __init__(self, workspace: Workspace, max_read: int, max_write: int, exclude: tuple[str, ...]) -> None:
        self.ws = workspace
        self.max_read = max_read
        self.max_write = max_write
        self.exclude = exclude

    # --- read ------------------------------------------------------------------------------

    async def read(self, call: ToolCall) -> str:
        path = self.ws.resolve(call.arguments["path"])
        offset = int(call.arguments.get("offset", 0))
        limit = min(int(call.arguments.get("length", self.max_read)), self.max_read)
        return await asyncio.to_thread(self._read, path, offset, limit)

    def _read(self, path: Path, offset: int, limit: int) -> str:
        if path.is_dir():
            raise ToolError(f"{self.ws.relative(path)} is a directory; use files_list")
        try:
            with path.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(offset)
                data = f.read(limit)
        except OSError as exc:
            raise ToolError(f"cannot read {self.ws.relative(path)}: {exc.strerror}") from exc
        if _is_binary(data):
            raise ToolError(
                f"{self.ws.relative(path)} is a binary file ({size} bytes); files_read shows text"
            )
        text = data.decode("utf-8", errors="replace")
        end = offset + len(data)
        if end < size:
            text += (
                f"\n[... {size - end} more bytes: call files_read with offset={end} to read on; "
                f"the file has {size} bytes]"
            )
        return text

    # --- write -----------------------------------------------------------------------------

    async def write(self, call: ToolCall) -> str:
        rel: str = call.arguments["path"]
        content: str = call.arguments["content"]
        append = bool(call.arguments.get("append", False))
        data = content.encode()
        if len(data) > self.max_write:
            raise ToolError(f"content is {len(data)} bytes; files_write takes at most {self.max_write}")
        path = self.ws.resolve(rel, must_exist=False)
        return await asyncio.to_thread(self._write, path, data, append)

    def _write(self, path: Path, data: bytes, append: bool) -> str:
        if path == self.ws.root or path.is_dir():
            raise ToolError(f"{self.ws.relative(path)} is a directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        flags |= os.O_APPEND if append else os.O_TRUNC
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as exc:
            raise ToolError(f"cannot write {self.ws.relative(path)}: {exc.strerror}") from exc
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        verb = "appended" if append else "wrote"
        return f"{verb} {len(data)} bytes to {self.ws.relative(path)}"

    # --- list ------------------------------------------------------------------------------

    async def list(self, call: ToolCall) -> dict[str, Any]:
        path = self.ws.resolve(call.arguments.get("path", "."))
        recursive = bool(call.arguments.get("recursive", False))
        pattern: str | None = call.arguments.get("glob")
        return await asyncio.to_thread(self._list, path, recursive, pattern)

    def _list(self, top: Path, recursive: bool, pattern: str | None) -> dict[str, Any]:
        if not top.is_dir():
            raise ToolError(f"{self.ws.relative(top)} is not a directory")
        entries: list[dict[str, Any]] = []
        truncated = False
        for path, st in self._walk(top, recursive):
            name = self.ws.relative(path)
            if pattern and not (fnmatch.fnmatch(path.name, pattern) or fnmatch.fnmatch(name, pattern)):
                continue
            if len(entries) >= MAX_LIST_ENTRIES:
                truncated = True
                break
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "link" if stat.S_ISLNK(st.st_mode) else "file"
            entry: dict[str, Any] = {"path": name, "type": kind}
            if kind == "file":
                entry["size"] = st.st_size
            entries.append(entry)
        return {"entries": entries, "truncated": truncated}

    def _walk(self, top: Path, recursive: bool) -> Iterator[tuple[Path, os.stat_result]]:
        try:
            children = sorted(os.scandir(top), key=lambda e: e.name)
        except OSError as exc:
            raise ToolError(f"cannot list {self.ws.relative(top)}: {exc.strerror}") from exc
        for entry in children:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            path = Path(entry.path)
            yield path, st
            if recursive and stat.S_ISDIR(st.st_mode) and entry.name not in self.exclude:
                yield from self._walk(path, recursive)

    # --- search ----------------------------------------------------------------------------

    async def search(self, call: ToolCall) -> dict[str, Any]:
        raw: str = call.arguments["pattern"]
        flags = 0 if call.arguments.get("case_sensitive", True) else re.IGNORECASE
        try:
            regex = re.compile(raw if call.arguments.get("regex", False) else re.escape(raw), flags)
        except re.error as exc:
            raise ToolError(f"pattern is not a valid regular expression: {exc}") from exc
        top = self.ws.resolve(call.arguments.get("path", "."))
        pattern: str | None = call.arguments.get("glob")
        limit = int(call.arguments.get("max_results", 200))
        stop = threading.Event()
        try:
            return await asyncio.to_thread(self._search, top, regex, pattern, limit, stop)
        finally:
            stop.set()  # a cancelled call leaves the thread to notice and stop

    def _search(
        self, top: Path, regex: re.Pattern[str], pattern: str | None, limit: int, stop: threading.Event
    ) -> dict[str, Any]:
        matches: list[dict[str, Any]] = []
        files = [(top, top.stat())] if top.is_file() else self._walk(top, True)
        for path, st in files:
            if stop.is_set() or len(matches) >= limit:
                break
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SEARCH_FILE_BYTES:
                continue
            if pattern and not fnmatch.fnmatch(path.name, pattern):
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if _is_binary(data):
                continue
            for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
                if regex.search(line):
                    matches.append({"path": self.ws.relative(path), "line": number, "text": line[:400]})
                    if len(matches) >= limit:
                        break
        return {"matches": matches, "truncated": len(matches) >= limit}


def _path_prop(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description, "maxLength": 4096}


_MATCHES_SCHEMA = {
    "type": "object",
    "properties": {
        "matches": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "line": {"type": "integer"},
                    "text": {"type": "string"},
                },
            },
        },
        "truncated": {"type": "boolean"},
    },
    "required": ["matches", "truncated"],
}

_ENTRIES_SCHEMA = {
    "type": "object",
    "properties": {
        "entries": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "type": {"enum": ["file", "dir", "link"]},
                    "size": {"type": "integer"},
                },
            },
        },
        "truncated": {"type": "boolean"},
    },
    "required": ["entries", "truncated"],
}


def _structured(handler: Callable[[ToolCall], Awaitable[dict[str, Any]]]) -> ToolHandler:
    """A handler returning a dict: that dict is the structured content, its JSON the text."""

    async def run(call: ToolCall) -> ToolResult:
        data = await handler(call)
        return ToolResult(content=(TextContent(orjson.dumps(data).decode()),), structured=data)

    return run


def create_pack(options: Mapping[str, Any], env: PackEnv) -> StaticPack:
    opts = PackOptions("files", options)
    root = opts.string("root", default=str(env.extra.get("workspace", ".")))
    workspace = Workspace.at(root, key="packs[files].options.root")
    max_read = opts.integer("max_read_bytes", default=256 * 1024, minimum=1, maximum=16 * 1024 * 1024)
    max_write = opts.integer("max_write_bytes", default=8 * 1024 * 1024, minimum=1, maximum=64 * 1024 * 1024)
    writable = opts.boolean("writable", default=True)
    exclude = tuple(opts.string_list("exclude", default=list(DEFAULT_EXCLUDE)))
    opts.done()
    files = _Files(workspace, max_read, max_write, exclude)
    ro = ToolAnnotations(read_only=True, destructive=False, idempotent=True, open_world=False)
    tools = [
        Tool(
            name="files_read",
            title="Read a file",
            description=(
                "Read a text file of the sandbox's workspace. Paths are relative to the "
                f"workspace. Returns at most {max_read} bytes; the text says where to continue."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "path": _path_prop("File path relative to the workspace."),
                    "offset": {"type": "integer", "minimum": 0, "description": "Byte offset to start at."},
                    "length": {"type": "integer", "minimum": 1, "description": "Most bytes to return."},
                },
                "required": ["path"],
                "additionalProperties": False,
            },
            handler=files.read,
            annotations=ro,
        ),
        Tool(
            name="files_list",
            title="List files",
            description=(
                "List a directory of the workspace (optionally recursively, skipping "
                f"{', '.join(exclude) or 'nothing'}), with an optional glob on the name."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "path": _path_prop("Directory relative to the workspace (default: the workspace)."),
                    "recursive": {"type": "boolean", "default": False},
                    "glob": {"type": "string", "description": "e.g. *.py", "maxLength": 256},
                },
                "additionalProperties": False,
            },
            output_schema=_ENTRIES_SCHEMA,
            handler=_structured(files.list),
            annotations=ro,
        ),
        Tool(
            name="files_search",
            title="Search files",
            description=(
                "Search the text files of the workspace for a string (or a regular expression with "
                "regex=true); returns matching lines with their path and line number."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "pattern": {"type": "string", "minLength": 1, "maxLength": 1000},
                    "regex": {"type": "boolean", "default": False},
                    "case_sensitive": {"type": "boolean", "default": True},
                    "path": _path_prop("Directory or file to search (default: the workspace)."),
                    "glob": {"type": "string", "description": "Only files whose name matches, e.g. *.py"},
                    "max_results": {"type": "integer", "minimum": 1, "maximum": 5000, "default": 200},
                },
                "required": ["pattern"],
                "additionalProperties": False,
            },
            output_schema=_MATCHES_SCHEMA,
            handler=_structured(files.search),
            annotations=ro,
        ),
    ]
    if writable:
        tools.append(
            Tool(
                name="files_write",
                title="Write a file",
                description=(
                    "Write text to a file of the workspace, creating it and its directories, "
                    "replacing its content (or appending with append=true)."
                ),
                input_schema={
                    "type": "object",
                    "properties": {
                        "path": _path_prop("File path relative to the workspace."),
                        "content": {"type": "string"},
                        "append": {"type": "boolean", "default": False},
                    },
                    "required": ["path", "content"],
                    "additionalProperties": False,
                },
                handler=files.write,
                annotations=ToolAnnotations(
                    read_only=False, destructive=True, idempotent=False, open_world=False
                ),
            )
        )
    if not tools:  # pragma: no cover - files_read is always there
        raise ConfigError("packs[files]: no tools")
    return StaticPack("files", tools)

"""The `files` pack: read, write, list and search files under the sandbox's workspace.

Options:

    root: /workspace          # default: the manifest's `workspace`
    max_read_bytes: 262144    # most bytes one files_read returns (the call says where to go on)
    max_write_bytes: 8388608
    writable: true            # false leaves files_write out
    exclude: [.git, node_modules, __pycache__]   # directory names files_list/files_search skip
    timeout_s: 60             # bound on one call of any files tool
    regex_timeout_s: 20       # bound on the matching of one files_search with regex=true

Every path is relative to the root and resolved safely (see `mcp_local.workspace`).
Only regular files are read or written: a FIFO, socket or device in the workspace
is refused rather than opened (opening a FIFO would block until a writer came).
files_write refuses paths inside a `.git` directory (or a `.git` file): git's
configuration can name programs for the git tools to run, and its objects are
git's to write. A regular-expression search runs in a child process that is killed
at `regex_timeout_s`: Python's `re` can take exponential time on patterns like
`(a+)+$` and cannot be interrupted, and in-process it would stall every other call.

A name that is not UTF-8 (a Linux name is any bytes) is shown quoted as git quotes it,
`"bad\\377name.txt"`: in double quotes, with `\\`, `\\"`, C escapes for control characters
and three octal digits for every other byte that is not printable ASCII. So is a name that
begins with `"`, so that a shown name beginning with `"` is always a quoted one. The tools'
text and structured results show the same; every `path` argument takes the quoted form too.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
import re
import stat
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson

from ..content import TextContent, ToolResult
from ..errors import ConfigError, ToolError
from ..outputs import text_page
from ..tools import Tool, ToolAnnotations, ToolCall, ToolHandler
from ..workspace import Workspace
from . import PackEnv, StaticPack
from .cancelling import OWN_PROCESS_GROUP, kill_process_group
from .options import PackOptions

__all__ = ["create_pack"]

DEFAULT_EXCLUDE = (".git", "node_modules", "__pycache__", ".venv")
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_REGEX_TIMEOUT_S = 20.0
MAX_LIST_ENTRIES = 2000
MAX_SEARCH_FILE_BYTES = 4 * 1024 * 1024
MAX_OFFSET = 2**53  # JSON's exact integers; no file here is larger

_SEARCH_WORKER = """
import json, re, sys
job = json.load(sys.stdin)
regex = re.compile(job["pattern"], job["flags"])
limit = job["limit"]
matches = []
for path, rel in job["files"]:
    try:
        with open(path.encode("latin-1"), "rb") as f:
            data = f.read()
    except OSError:
        continue
    if b"\\x00" in data[:8192]:
        continue
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if regex.search(line):
            matches.append({"path": rel, "line": number, "text": line[:400]})
            if len(matches) >= limit:
                break
    if len(matches) >= limit:
        break
json.dump(matches, sys.stdout)
"""
"""Matches lines in a child process (stdlib only, isolated): see the module docstring."""


_Candidates = list[tuple[str, str]]  # (path's bytes as latin-1, as shown); _Files has a method `list`
_Matches = list[dict[str, Any]]


_C_ESCAPES = {
    0x07: "a",
    0x08: "b",
    0x09: "t",
    0x0A: "n",
    0x0B: "v",
    0x0C: "f",
    0x0D: "r",
    0x22: '"',
    0x5C: "\\",
}
_C_UNESCAPES = {v: k for k, v in _C_ESCAPES.items()}


def quote_name(name: str) -> str:
    """`name` as the tools show it: as is, or quoted as git quotes names (see the module) when it
    holds bytes that are not UTF-8 (surrogate escapes, from `os.scandir`) or begins with `"`."""
    if not name.startswith('"') and not any("\udc80" <= ch <= "\udcff" for ch in name):
        return name
    out = ['"']
    for byte in os.fsencode(name):
        if byte in _C_ESCAPES:
            out.append("\\" + _C_ESCAPES[byte])
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03o}")
    out.append('"')
    return "".join(out)


def unquote_name(shown: str) -> str:
    """The name a `quote_name` result shows (a path argument may be one); anything else as is."""
    if len(shown) < 2 or not (shown.startswith('"') and shown.endswith('"')):
        return shown
    body, raw, i = shown[1:-1], bytearray(), 0
    while i < len(body):
        ch = body[i]
        if ch == '"':
            return shown  # an unescaped quote inside: not a quoted name
        if ch != "\\":
            raw += ch.encode()
            i += 1
            continue
        nxt = body[i + 1 : i + 2]
        digits = body[i + 1 : i + 4]
        if nxt in _C_UNESCAPES:
            raw.append(_C_UNESCAPES[nxt])
            i += 2
        elif len(digits) == 3 and all(d in "01234567" for d in digits) and int(digits, 8) < 256:
            raw.append(int(digits, 8))
            i += 4
        else:
            return shown
    return os.fsdecode(bytes(raw))


def _is_binary(sample: bytes) -> bool:
    return b"\x00" in sample[:8192]


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "link"
    return "other"  # a FIFO, socket or device


def _what(mode: int) -> str:
    """What a non-regular file is, for a message."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device"


def _open_regular(path: Path, flags: int, shown: str, verb: str) -> int:
    """An fd for `path` only if it is a regular file; never blocks on a FIFO."""
    with contextlib.suppress(FileNotFoundError):
        mode = os.lstat(path).st_mode
        if not stat.S_ISREG(mode):
            raise ToolError(f"cannot {verb} {shown}: it is {_what(mode)}, not a regular file")
    try:
        fd = os.open(path, flags | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise ToolError(f"cannot {verb} {shown}: {exc.strerror}") from exc
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ToolError(f"cannot {verb} {shown}: it is {_what(mode)}, not a regular file")
    os.set_blocking(fd, True)
    return fd


def _makedirs(directory: Path) -> None:
    """`mkdir -p` without recursion (pathlib's and os.makedirs recurse once per level)."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        if directory.parent == directory:
            break
        directory = directory.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()


class _Files:
    def __init__(
        self,
        workspace: Workspace,
        max_read: int,
        max_write: int,
        exclude: tuple[str, ...],
        regex_timeout: float,
    ) -> None:
        self.ws = workspace
        self.max_read = max_read
        self.max_write = max_write
        self.exclude = exclude
        self.regex_timeout = regex_timeout

    def _shown(self, path: Path) -> str:
        return quote_name(self.ws.relative(path))

    def _resolve(self, argument: str, *, must_exist: bool = True) -> Path:
        return self.ws.resolve(unquote_name(argument), must_exist=must_exist)

    # --- read ------------------------------------------------------------------------------

    async def read(self, call: ToolCall) -> str:
        path = self._resolve(call.arguments["path"])
        offset = int(call.arguments.get("offset", 0))
        limit = min(int(call.arguments.get("length", self.max_read)), self.max_read)
        return await asyncio.to_thread(self._read, path, offset, limit)

    def _read(self, path: Path, offset: int, limit: int) -> str:
        if path.is_dir():
            raise ToolError(f"{self._shown(path)} is a directory; use files_list")
        fd = _open_regular(path, os.O_RDONLY, self._shown(path), "read")
        try:
            with os.fdopen(fd, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(offset)
                data = f.read(limit + 3)  # up to 3 bytes more: the rest of a character
        except OSError as exc:
            raise ToolError(f"cannot read {self._shown(path)}: {exc.strerror}") from exc
        # The page ends on a character, so that one the limit cuts is read whole with the next.
        data = data[: text_page(data, limit, more=offset + len(data) < size)]
        if _is_binary(data):
            raise ToolError(f"{self._shown(path)} is a binary file ({size} bytes); files_read shows text")
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
        rel = unquote_name(call.arguments["path"])
        content: str = call.arguments["content"]
        append = bool(call.arguments.get("append", False))
        data = content.encode()
        if len(data) > self.max_write:
            raise ToolError(f"content is {len(data)} bytes; files_write takes at most {self.max_write}")
        path = self.ws.resolve(rel, must_exist=False)
        if ".git" in Path(rel).parts or ".git" in path.relative_to(self.ws.root).parts:
            raise ToolError(
                f"path {call.arguments['path']!r} is inside .git: files_write does not change git's own "
                "files (its configuration can name programs for git to run); use the git tools"
            )
        return await asyncio.to_thread(self._write, path, data, append)

    def _write(self, path: Path, data: bytes, append: bool) -> str:
        if path == self.ws.root or path.is_dir():
            raise ToolError(f"{self._shown(path)} is a directory")
        try:
            _makedirs(path.parent)
        except OSError as exc:
            where = self._shown(path)
            raise ToolError(f"cannot create the directories of {where}: {exc.strerror}") from exc
        # Truncation waits until the fd is known to be a regular file.
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else 0)
        fd = _open_regular(path, flags, self._shown(path), "write")
        if not append:
            os.ftruncate(fd, 0)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        verb = "appended" if append else "wrote"
        return f"{verb} {len(data)} bytes to {self._shown(path)}"

    # --- list ------------------------------------------------------------------------------

    async def list(self, call: ToolCall) -> dict[str, Any]:
        path = self._resolve(call.arguments.get("path", "."))
        recursive = bool(call.arguments.get("recursive", False))
        pattern: str | None = call.arguments.get("glob")
        return await asyncio.to_thread(self._list, path, recursive, pattern)

    def _list(self, top: Path, recursive: bool, pattern: str | None) -> dict[str, Any]:
        if not top.is_dir():
            raise ToolError(f"{self._shown(top)} is not a directory")
        entries: list[dict[str, Any]] = []
        truncated = False
        for path, st in self._walk(top, recursive):
            name = self.ws.relative(path)  # matched as it is; shown quoted when it must be
            if pattern and not (fnmatch.fnmatch(path.name, pattern) or fnmatch.fnmatch(name, pattern)):
                continue
            if len(entries) >= MAX_LIST_ENTRIES:
                truncated = True
                break
            kind = _kind(st.st_mode)
            entry: dict[str, Any] = {"path": quote_name(name), "type": kind}
            if kind == "file":
                entry["size"] = st.st_size
            entries.append(entry)
        return {"entries": entries, "truncated": truncated}

    def _walk(self, top: Path, recursive: bool) -> Iterator[tuple[Path, os.stat_result]]:
        """Entries under `top`, depth first in name order; a stack, so any depth is fine."""
        stack: list[Iterator[os.DirEntry[str]]] = [self._children(top, top)]
        while stack:
            entry = next(stack[-1], None)
            if entry is None:
                stack.pop()
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            path = Path(entry.path)
            yield path, st
            if recursive and stat.S_ISDIR(st.st_mode) and entry.name not in self.exclude:
                stack.append(self._children(path, top))

    def _children(self, directory: Path, top: Path) -> Iterator[os.DirEntry[str]]:
        try:
            with os.scandir(directory) as it:
                return iter(sorted(it, key=lambda e: e.name))
        except OSError as exc:
            if directory == top:
                raise ToolError(f"cannot list {self._shown(top)}: {exc.strerror}") from exc
            return iter(())

    # --- search ----------------------------------------------------------------------------

    async def search(self, call: ToolCall) -> dict[str, Any]:
        raw: str = call.arguments["pattern"]
        flags = 0 if call.arguments.get("case_sensitive", True) else re.IGNORECASE
        is_regex = bool(call.arguments.get("regex", False))
        try:
            regex = re.compile(raw if is_regex else re.escape(raw), flags)
        except re.error as exc:
            raise ToolError(f"pattern is not a valid regular expression: {exc}") from exc
        top = self._resolve(call.arguments.get("path", "."))
        pattern: str | None = call.arguments.get("glob")
        limit = int(call.arguments.get("max_results", 200))
        stop = threading.Event()
        try:
            if is_regex:
                files = await asyncio.to_thread(self._candidates, top, pattern, stop)
                matches = await self._match_in_child(regex, files, limit)
                return {"matches": matches, "truncated": len(matches) >= limit}
            return await asyncio.to_thread(self._search, top, regex, pattern, limit, stop)
        finally:
            stop.set()  # a cancelled call leaves the thread to notice and stop

    def _candidates(self, top: Path, pattern: str | None, stop: threading.Event) -> _Candidates:
        """The files a search reads: regular, not too large, matching the glob; (path, shown)."""
        found: _Candidates = []
        files = [(top, top.stat())] if top.is_file() else self._walk(top, True)
        for path, st in files:
            if stop.is_set():
                break
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SEARCH_FILE_BYTES:
                continue
            if pattern and not fnmatch.fnmatch(path.name, pattern):
                continue
            found.append((os.fsencode(path).decode("latin-1"), self._shown(path)))
        return found

    async def _match_in_child(self, regex: re.Pattern[str], files: _Candidates, limit: int) -> _Matches:
        job = orjson.dumps({"pattern": regex.pattern, "flags": regex.flags, "files": files, "limit": limit})
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-S",
            "-c",
            _SEARCH_WORKER,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            process_group=OWN_PROCESS_GROUP,
        )
        try:
            async with asyncio.timeout(self.regex_timeout):
                out, err = await proc.communicate(job)
        except TimeoutError:
            raise ToolError(
                f"the regular expression was still matching after {self.regex_timeout:g} s and was "
                "stopped; patterns with nested repetition such as (a+)+ can take exponential time. "
                "Simplify it, or narrow the search with path or glob"
            ) from None
        finally:
            if proc.returncode is None:
                await kill_process_group(proc)
        if proc.returncode != 0:
            raise ToolError(f"the search failed: {err.decode(errors='replace').strip()[-400:]}")
        found: _Matches = orjson.loads(out)
        return found

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
                    matches.append({"path": self._shown(path), "line": number, "text": line[:400]})
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
                    "type": {"enum": ["file", "dir", "link", "other"]},
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
    timeout = opts.number("timeout_s", default=DEFAULT_TIMEOUT_S, minimum=1, maximum=3600)
    regex_timeout = opts.number("regex_timeout_s", default=DEFAULT_REGEX_TIMEOUT_S, minimum=0.1, maximum=3600)
    opts.done()
    files = _Files(workspace, max_read, max_write, exclude, regex_timeout)
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
                    "offset": {
                        "type": "integer",
                        "minimum": 0,
                        "maximum": MAX_OFFSET,
                        "description": "Byte offset to start at.",
                    },
                    "length": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_OFFSET,
                        "description": "Most bytes to return.",
                    },
                },
                "required": ["path"],
                "additionalProperties": False,
            },
            handler=files.read,
            timeout_s=timeout,
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
            timeout_s=timeout,
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
            timeout_s=timeout,
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
                timeout_s=timeout,
                annotations=ToolAnnotations(
                    read_only=False, destructive=True, idempotent=False, open_world=False
                ),
            )
        )
    if not tools:  # pragma: no cover - files_read is always there
        raise ConfigError("packs[files]: no tools")
    return StaticPack("files", tools)

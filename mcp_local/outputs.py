"""Large outputs kept for a while, readable by id, so a result never has to be cut silently.

A tool whose output exceeds what belongs in a result stores the whole of it
here and returns a preview plus the id; `output_read` pages through it. Only
the principal that produced an output can read it. Outputs live in memory,
per hub process, for `ttl_s` seconds, within `max_bytes` in total (oldest
evicted first).
"""

from __future__ import annotations

import base64
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from .content import TextContent, ToolResult
from .errors import ToolError
from .tools import Tool, ToolAnnotations, ToolCall

__all__ = [
    "MAX_PAGE_BYTES",
    "PAGE_ANSWER_BUDGET",
    "OutputStore",
    "StoredOutput",
    "decode_page",
    "output_read_tool",
    "preview_length",
]

MAX_PAGE_BYTES = 256 * 1024
"""The largest `limit` of an `output_read` page (its schema's maximum)."""

PAGE_ANSWER_BUDGET = 1024 * 1024 - 64 * 1024
"""The most a page may weigh as JSON: its data twice (the text block and `structuredContent.data`,
each JSON-escaped: a control character is six bytes there) plus its header. The rest of 1 MiB is
left for the envelope (JSON-RPC, content blocks, `_meta`): the official SDK's Streamable HTTP
client refuses a server-sent event over 1 MiB, and a 2025-era session answers with one."""


def _token_urlsafe(nbytes: int) -> str:
    """`secrets.token_urlsafe`, written out: `secrets` imports `hashlib`, which maps OpenSSL's
    libcrypto (~0.7 MB of the sidecar's idle RSS) for nothing it needs."""
    return base64.urlsafe_b64encode(os.urandom(nbytes)).rstrip(b"=").decode("ascii")


def decode_page(chunk: bytes, *, more: bool) -> tuple[str, str, int]:
    """A page of bytes as (content, "utf-8" or "base64", bytes of `chunk` it covers).

    A page that is UTF-8 text is decoded exactly; any other page is base64, whole. Neither
    ends inside a character when bytes follow (`more`): a character the limit cuts is left
    for the next page, which starts with it, so text after binary reads as text again. A
    character that is incomplete because the data ends (a capture the hub cut) becomes a
    small base64 page of its own after the text.
    """
    try:
        return chunk.decode("utf-8"), "utf-8", len(chunk)
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data" and exc.start > 0:  # only the last character is cut
            return chunk[: exc.start].decode("utf-8"), "utf-8", exc.start
    end = _utf8_boundary(chunk, len(chunk)) if more else len(chunk)
    return base64.b64encode(chunk[:end]).decode("ascii"), "base64", end


def _utf8_boundary(data: bytes, end: int) -> int:
    """`end`, or the first byte of the UTF-8 character that ending there would cut in two
    (never 0: a piece that is one cut character keeps it)."""
    return _cut_start(data, end) or end


def _cut_start(data: bytes, end: int) -> int:
    """The first byte of the UTF-8 character that ending at `end` would cut in two, or `end`."""
    start = end
    while start > 0 and end - start < 3 and data[start - 1] & 0xC0 == 0x80:
        start -= 1
    if start > 0 and data[start - 1] >= 0xC0 and start - 1 + _character_length(data[start - 1]) > end:
        return start - 1
    return end


def only_a_cut_character(data: bytes) -> bool:
    """Is `data` the first bytes of one UTF-8 character, and nothing else?"""
    return bool(data) and _cut_start(data, len(data)) == 0


def preview_length(data: bytes, limit: int) -> int:
    """How much of `data` a preview of at most `limit` bytes shows: all of it when it fits,
    else up to `limit` without cutting a character (reading on from there starts with it)."""
    return _utf8_boundary(data, limit) if len(data) > limit else len(data)


def text_page(data: bytes, limit: int, *, more: bool) -> int:
    """How many bytes of `data` (read from a character's start, up to 3 bytes past `limit`) a
    page of text shows: at most `limit`, or the first character when it is longer; never ending
    inside a character when bytes follow (`more`, or what `data` has past the page)."""
    end = min(len(data), max(limit, _character_length(data[0]) if data else 0))
    return _utf8_boundary(data, end) if end < len(data) or more else end


def _character_length(lead: int) -> int:
    """Bytes in the UTF-8 character that starts with the byte `lead` (1 for anything else)."""
    return 4 if lead >> 3 == 0b11110 else 3 if lead >> 4 == 0b1110 else 2 if lead >> 5 == 0b110 else 1


@dataclass(frozen=True, slots=True)
class StoredOutput:
    output_id: str
    principal: str
    data: bytes
    media_type: str
    label: str
    expires_at: float
    dropped: int = 0
    """Bytes that followed `data` but were not kept (the producer's cap): the last page says so."""


ENTRY_OVERHEAD = 512
"""Bytes an output counts for beyond its data (its id, label and record), so that many small
outputs are bounded by `max_bytes` too."""


class OutputStore:
    def __init__(
        self,
        *,
        ttl_s: float = 3600.0,
        max_bytes: int = 256 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._clock = clock
        self._items: OrderedDict[str, StoredOutput] = OrderedDict()
        self._bytes = 0
        self._held: dict[str, int] = {}
        """Bytes each principal's outputs count for."""

    def put(
        self,
        principal: str,
        data: bytes,
        *,
        media_type: str = "text/plain",
        label: str = "",
        dropped: int = 0,
    ) -> str:
        """Store `data` for `principal` (`dropped`: bytes that followed it and were not kept). When
        the store is full, the oldest output of whoever holds the most goes first: one principal's
        flood of outputs evicts its own, not others'."""
        self._expire()
        output_id = "out_" + _token_urlsafe(12)
        item = StoredOutput(
            output_id, principal, data, media_type, label, self._clock() + self.ttl_s, dropped
        )
        self._items[output_id] = item
        self._count(item, +1)
        while self._bytes > self.max_bytes:
            victim = self._oldest_of_the_heaviest(keep=output_id)
            if victim is None:
                break
            del self._items[victim.output_id]
            self._count(victim, -1)
        return output_id

    def _count(self, item: StoredOutput, sign: int) -> None:
        size = sign * (len(item.data) + ENTRY_OVERHEAD)
        self._bytes += size
        held = self._held.get(item.principal, 0) + size
        if held > 0:
            self._held[item.principal] = held
        else:
            self._held.pop(item.principal, None)

    def _oldest_of_the_heaviest(self, keep: str) -> StoredOutput | None:
        for owner in sorted(self._held, key=self._held.__getitem__, reverse=True):
            found = next(
                (i for i in self._items.values() if i.principal == owner and i.output_id != keep), None
            )
            if found is not None:
                return found
        return None

    def get(self, principal: str, output_id: str) -> StoredOutput:
        self._expire()
        item = self._items.get(output_id)
        if item is None or item.principal != principal:
            # The same answer whether it never existed, expired or belongs to someone else.
            raise ToolError(
                f"no output {output_id!r} (outputs are kept for {self.ttl_s:g}s and only for their owner)"
            )
        return item

    def _expire(self) -> None:
        now = self._clock()
        while self._items:
            first = next(iter(self._items.values()))
            if first.expires_at > now:
                break
            self._items.popitem(last=False)
            self._count(first, -1)

    def preview(
        self, principal: str, data: bytes, limit: int, *, media_type: str = "text/plain", label: str = ""
    ) -> tuple[bytes, str | None]:
        """`data` when it fits in `limit`; otherwise its first `limit` bytes and the id of the whole."""
        if len(data) <= limit:
            return data, None
        return data[:limit], self.put(principal, data, media_type=media_type, label=label)


_PAGE_SCHEMA = {
    "type": "object",
    "properties": {
        "output_id": {"type": "string"},
        "offset": {"type": "integer", "description": "the page's first byte"},
        "next_offset": {
            "type": ["integer", "null"],
            "description": "the offset to continue with; null at the end of what was kept",
        },
        "size": {"type": "integer", "description": "the bytes kept"},
        "dropped": {"type": "integer", "description": "bytes after the kept ones, counted, not stored"},
        "encoding": {"enum": ["utf-8", "base64"]},
        "data": {"type": "string", "description": "the page: UTF-8 text, or base64 of bytes that are not"},
    },
    "required": ["output_id", "offset", "next_offset", "size", "dropped", "encoding", "data"],
}


def _page_header(item: StoredOutput, offset: int, end: int, encoding: str) -> str:
    size = len(item.data)
    if end < size:
        more = f"; continue with offset {end}"
    elif item.dropped:
        more = f"; end of what was kept: the {item.dropped} bytes that followed were counted, not stored"
    else:
        more = "; end of output"
    shown = "; not UTF-8 text, shown as base64" if encoding == "base64" else ""
    return f"[{item.label or item.output_id}: bytes {offset}-{end} of {size}{shown}{more}]"


def output_read_tool(store: OutputStore) -> Tool:
    async def read(call: ToolCall) -> ToolResult:
        assert call.principal is not None
        item = store.get(call.principal.name, call.arguments["output_id"])
        data = item.data
        offset = int(call.arguments.get("offset", 0))
        limit = int(call.arguments.get("limit", 65536))
        if offset > len(data):
            raise ToolError(f"offset {offset} is past the end of {item.output_id} ({len(data)} bytes)")
        # At least one whole character, however small the limit.
        first = _character_length(data[offset]) if offset < len(data) else 1
        end = min(len(data), offset + max(min(limit, MAX_PAGE_BYTES), first))
        while True:
            content, encoding, used = decode_page(data[offset:end], more=end < len(data))
            header = _page_header(item, offset, offset + used, encoding)
            weight = 2 * len(orjson.dumps(content)) + len(orjson.dumps(header))
            if weight <= PAGE_ANSWER_BUDGET or used <= first:
                break
            # Too heavy once escaped: shrink in proportion (and by a little more, so that it ends).
            end = offset + max(first, min(used - 1, used * PAGE_ANSWER_BUDGET // weight - 16))
        end = offset + used
        # The header is for a model; a program pages by `next_offset` rather than by its words.
        page = {
            "output_id": item.output_id,
            "offset": offset,
            "next_offset": end if end < len(data) else None,
            "size": len(data),
            "dropped": item.dropped,
            "encoding": encoding,
            "data": content,
        }
        return ToolResult(content=(TextContent(f"{header}\n{content}"),), structured=page)

    return Tool(
        name="output_read",
        title="Read a stored output",
        description=(
            "Read part of a large output that an earlier call stored instead of returning whole "
            "(its result names the output_id). Page with offset and limit (bytes); each page's "
            "header gives the offset to continue with (next_offset in the structured result): a page "
            "can hold fewer bytes than the limit. "
            "Text that is not UTF-8 is shown as base64."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "output_id": {"type": "string", "pattern": "^out_[A-Za-z0-9_-]{1,64}$"},
                "offset": {"type": "integer", "minimum": 0, "default": 0},
                "limit": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_PAGE_BYTES,
                    "default": 65536,
                    "description": (
                        "the most bytes the page holds; a page whose text is mostly escapes "
                        "(control characters) holds fewer, so that the whole answer stays under 1 MiB"
                    ),
                },
            },
            "required": ["output_id"],
            "additionalProperties": False,
        },
        handler=read,
        output_schema=_PAGE_SCHEMA,
        annotations=ToolAnnotations(
            title="Read a stored output", read_only=True, destructive=False, idempotent=True
        ),
    )

"""Lines of a byte stream, none held longer than a limit: bytes in, lines out, no I/O.

The stdio bridge reads JSON-RPC messages one a line. A line past the limit is not kept: only
its first bytes are (enough to find the request's `id` in), the rest is skipped as it comes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

__all__ = ["HEAD_BYTES", "LineFramer", "TooLong", "leading_id"]

HEAD_BYTES = 64 * 1024
"""How much of a line past the limit is kept to find its `id` in."""


@dataclass(frozen=True, slots=True)
class TooLong:
    """A line longer than the limit, reported as soon as it is: its first bytes, no more."""

    head: bytes


class LineFramer:
    """Cuts a byte stream at `\\n` into lines of at most `limit` bytes (None: no limit)."""

    def __init__(self, limit: int | None, head_bytes: int = HEAD_BYTES) -> None:
        self._limit = limit
        self._head_bytes = head_bytes
        self._partial = bytearray()
        self._skipping = False  # inside a line already reported as too long

    def feed(self, data: bytes) -> list[bytes | TooLong]:
        out: list[bytes | TooLong] = []
        start = 0
        while start < len(data):
            end = data.find(b"\n", start)
            stop = len(data) if end < 0 else end
            if self._skipping:
                self._skipping = end < 0
            elif not self._partial and end >= 0 and self._fits(stop - start):
                out.append(data[start:stop])  # the common case: a whole line in one chunk
            else:
                self._partial += data[start:stop]
                if not self._fits(len(self._partial)):
                    out.append(TooLong(bytes(self._partial[: self._head_bytes])))
                    self._partial.clear()
                    self._skipping = end < 0
                elif end >= 0:
                    out.append(bytes(self._partial))
                    self._partial.clear()
            if end < 0:
                break
            start = end + 1
        return out

    def end(self) -> bytes | None:
        """At the end of the stream: its last line, when it did not end with `\\n`."""
        last = bytes(self._partial) if self._partial and not self._skipping else None
        self._partial.clear()
        return last

    def _fits(self, size: int) -> bool:
        return self._limit is None or size <= self._limit


_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _skip_space(text: str, pos: int) -> int:
    match = _WHITESPACE.match(text, pos)
    return match.end() if match else pos


def leading_id(head: bytes) -> int | str | None:
    """The `id` of the JSON object that `head` begins, when that member lies wholly within
    `head` (clients put it before `params`); None when it does not, or is no request id.

    Only the object's own members are read, each value whole, so an `id` nested in
    `params` is never taken for the request's: a wrong id would answer another request."""
    text = head.decode("utf-8", "replace")
    pos = _skip_space(text, 0)
    if not text.startswith("{", pos):
        return None
    pos += 1
    while True:
        try:
            key, pos = _DECODER.raw_decode(text, _skip_space(text, pos))
            pos = _skip_space(text, pos)
            if not isinstance(key, str) or not text.startswith(":", pos):
                return None
            value, pos = _DECODER.raw_decode(text, _skip_space(text, pos + 1))
        except ValueError:  # cut off by the end of `head`, or not JSON
            return None
        pos = _skip_space(text, pos)
        if not text.startswith((",", "}"), pos):
            return None  # cut off (a number may go on past `head`), or not JSON
        if key == "id":
            return value if isinstance(value, int | str) and not isinstance(value, bool) else None
        if text.startswith("}", pos):
            return None
        pos += 1

"""Where a command's output goes while it runs: kept whole up to a bound, or as a rolling log.

`OutputCapture` is for `shell_exec`: each stream is kept from its first byte up to `limit` bytes
and counted beyond, so the result can say exactly how much was produced and how much is kept.
`OutputLog` is for background processes: stdout and stderr interleaved as they arrive, the most
recent `capacity` bytes kept, read by absolute byte offsets that stay valid as old bytes go.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

__all__ = ["LogSlice", "OutputCapture", "OutputLog"]


class OutputCapture:
    __slots__ = ("_data", "_totals", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._data = {"stdout": bytearray(), "stderr": bytearray()}
        self._totals = {"stdout": 0, "stderr": 0}

    def add(self, stream: str, data: bytes) -> None:
        self._totals[stream] += len(data)
        kept = self._data[stream]
        room = self.limit - len(kept)
        if room > 0:
            kept += data[:room]

    def kept(self, stream: str) -> bytes:
        return bytes(self._data[stream])

    def total(self, stream: str) -> int:
        return self._totals[stream]


@dataclass(frozen=True, slots=True)
class LogSlice:
    data: bytes
    offset: int
    """Where `data` starts (later than asked when the asked bytes were already dropped)."""
    end: int
    """Bytes produced so far; continue from offset + len(data)."""
    dropped: int
    """Bytes before `start` that are no longer kept."""


class OutputLog:
    """A rolling log with absolute offsets; `wait_beyond` wakes readers when bytes arrive or it closes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._buf = bytearray()
        self._start = 0  # absolute offset of _buf[0]
        self._closed = False
        self._changed = asyncio.Event()

    @property
    def end(self) -> int:
        return self._start + len(self._buf)

    @property
    def closed(self) -> bool:
        return self._closed

    def add(self, data: bytes) -> None:
        self._buf += data
        excess = len(self._buf) - self.capacity
        if excess > self.capacity // 4:  # trim in batches: deleting from the front copies the rest
            del self._buf[:excess]
            self._start += excess
        self._wake()

    @property
    def kept_bytes(self) -> int:
        return len(self._buf)

    def close(self) -> None:
        self._closed = True
        excess = len(self._buf) - self.capacity
        if excess > 0:  # a copy, so that the memory of the bytes trimmed is given back
            self._start += excess
            self._buf = self._buf[excess:]
        self._wake()

    def discard(self) -> None:
        """Give back the memory of every byte kept; reads find nothing before `end` from now on."""
        self._start = self.end
        self._buf = bytearray()
        self.close()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def read(self, offset: int, limit: int) -> LogSlice:
        # Keep the guarantee of `capacity` even between batch trims.
        first = max(self._start, self.end - self.capacity)
        begin = max(offset, first)
        lo = begin - self._start
        data = bytes(self._buf[lo : lo + limit]) if begin < self.end else b""
        return LogSlice(data, min(begin, self.end), self.end, first)

    async def wait_beyond(self, offset: int, timeout: float) -> None:
        """Return when the log has bytes past `offset`, is closed, or `timeout` passed."""
        if self.end > offset or self._closed or timeout <= 0:
            return
        event = self._changed
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return

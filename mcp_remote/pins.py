"""Rug-pull defence: the SHA-256 of each sandbox tool's definition, pinned when first announced.

A tool's definition is what a model reads and trusts: its name, title,
description, input and output schemas, annotations and `_meta`. The hash is
taken over canonical JSON of those (sorted keys, no spaces, schemas parsed so
that byte-level reformatting does not count as a change).

Pins live in `<state_dir>/sandbox-pins.json`:

    {"version": 1, "sandboxes": {"sbx-42": {"sql_query": "3f1c…", ...}}}

A sandbox's pins are in the order its tools were last announced, least recent first: a sandbox
keeps the pins of at most MAX_PINS_PER_SANDBOX tools, and the least recently announced go
first. Unbounded, one sandbox's own token could grow the file and the hub's memory without end
(a sidecar reconnecting with a thousand fresh tool names each time).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from mcp_local.errors import ConfigError
from mcphub_proto.v1 import toolhub_pb2 as pb

__all__ = ["MAX_PINS_PER_SANDBOX", "PINS_FILE", "ToolPins", "definition_hash"]

logger = logging.getLogger(__name__)

PINS_FILE = "sandbox-pins.json"
MAX_PINS_PER_SANDBOX = 2000
"""Pins kept per sandbox: twice what one announcement may carry (federation.MAX_TOOLS), so a
sandbox's current tools and those of its previous announcement are never dropped."""


def _json_or_raw(data: bytes) -> Any:
    if not data:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return {"$unparsed": data.decode(errors="replace")}


def definition_hash(tool: pb.Tool) -> str:
    """Hex SHA-256 of the canonical form of `tool`'s definition."""
    a = tool.annotations
    canonical = {
        "name": tool.name,
        "title": tool.title,
        "description": tool.description,
        "input_schema": _json_or_raw(tool.input_schema_json),
        "output_schema": _json_or_raw(tool.output_schema_json),
        "annotations": {
            "title": a.title,
            "read_only": a.read_only_hint if a.HasField("read_only_hint") else None,
            "destructive": a.destructive_hint if a.HasField("destructive_hint") else None,
            "idempotent": a.idempotent_hint if a.HasField("idempotent_hint") else None,
            "open_world": a.open_world_hint if a.HasField("open_world_hint") else None,
        },
        "meta": _json_or_raw(tool.meta_json),
    }
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()


class ToolPins:
    """The pinned hashes, kept in memory and written to the state directory.

    Writes happen in a worker thread, the latest state at a time (changes made while one is
    being written are written after it): encoding and writing the file on the event loop took
    44 ms at 18,000 pins, at each connection that pinned something. `flush()` waits for them."""

    def __init__(self, state_dir: Path, max_per_sandbox: int = MAX_PINS_PER_SANDBOX) -> None:
        self.path = state_dir / PINS_FILE
        self.max_per_sandbox = max_per_sandbox
        self._pins: dict[str, dict[str, str]] = self._load()
        self._dirty = False
        self._writer: asyncio.Task[None] | None = None
        self._failed: OSError | None = None
        """Why the last write failed, until one succeeds."""

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self.path}: cannot read the sandbox tool pins: {exc}") from exc
        sandboxes = data.get("sandboxes") if isinstance(data, dict) else None
        if not isinstance(sandboxes, dict):
            raise ConfigError(f"{self.path}: expected {{'version': 1, 'sandboxes': {{...}}}}")
        return {
            str(k): {str(t): str(h) for t, h in v.items()}
            for k, v in sandboxes.items()
            if isinstance(v, dict)
        }

    def get(self, sandbox: str, tool: str) -> str | None:
        return self._pins.get(sandbox, {}).get(tool)

    def of(self, sandbox: str) -> dict[str, str]:
        return dict(self._pins.get(sandbox, {}))

    def sandboxes(self) -> list[str]:
        return sorted(self._pins)

    def announced(self, sandbox: str, tools: Iterable[str]) -> None:
        """Count `tools` as announced just now: the last to lose their pins.

        The new order is written with the next change (a restart may forget it; the sandbox's
        next announcement puts its current tools last again before anything is dropped)."""
        pins = self._pins.get(sandbox)
        if not pins:
            return
        for tool in tools:
            digest = pins.pop(tool, None)
            if digest is not None:
                pins[tool] = digest

    def set(self, sandbox: str, hashes: dict[str, str]) -> list[str]:
        """Pin `hashes` (tool -> hash) for `sandbox` as its most recently announced, keeping its
        other pins up to `max_per_sandbox`; returns the tools whose pins that dropped."""
        if not hashes:
            return []
        pins = self._pins.setdefault(sandbox, {})
        for tool, digest in hashes.items():
            pins.pop(tool, None)
            pins[tool] = digest
        dropped = []
        while len(pins) > self.max_per_sandbox:
            oldest = next(iter(pins))
            del pins[oldest]
            dropped.append(oldest)
        self._changed()
        return dropped

    def forget(self, sandbox: str) -> int:
        """Drop every pin of `sandbox`; returns how many there were."""
        pins = self._pins.pop(sandbox, None)
        if pins is None:
            return 0
        self._changed()
        return len(pins)

    async def flush(self) -> None:
        """Wait until the file holds every change made so far; OSError when the last write failed
        (the pins hold in memory, and the next change writes them all again)."""
        while self._writer is not None:
            await asyncio.shield(self._writer)
        if self._failed is not None:
            self._changed()  # once more: the disk may have room again
            while self._writer is not None:
                await asyncio.shield(self._writer)
            if self._failed is not None:
                raise self._failed

    def _changed(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a tool, a test): write now
            self._write(self._snapshot())
            return
        self._dirty = True
        if self._writer is None:
            self._writer = loop.create_task(self._write_while_dirty(), name="mcphub-pins-writer")

    async def _write_while_dirty(self) -> None:
        try:
            while self._dirty:
                self._dirty = False
                try:
                    await asyncio.to_thread(self._write, self._snapshot())
                    self._failed = None
                except OSError as exc:
                    # The pins stay in force in memory; the next change writes them all again.
                    logger.error("cannot write the sandbox tool pins to %s: %s", self.path, exc)
                    self._failed = exc
        finally:
            self._writer = None

    def _snapshot(self) -> dict[str, dict[str, str]]:
        """A copy the writer thread can read while the event loop changes the pins."""
        return {sandbox: dict(self._pins[sandbox]) for sandbox in sorted(self._pins)}

    def _write(self, sandboxes: dict[str, dict[str, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            # Tools in their order (least recently announced first), not sorted.
            f.write(orjson.dumps({"version": 1, "sandboxes": sandboxes}, option=orjson.OPT_INDENT_2))
        tmp.replace(self.path)

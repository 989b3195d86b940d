"""Rug-pull defence: the SHA-256 of each sandbox tool's definition, pinned when first announced.

A tool's definition is what a model reads and trusts: its name, title,
description, input and output schemas, annotations and `_meta`. The hash is
taken over canonical JSON of those (sorted keys, no spaces, schemas parsed so
that byte-level reformatting does not count as a change).

Pins live in `<state_dir>/sandbox-pins.json`:

    {"version": 1, "sandboxes": {"sbx-42": {"sql_query": "3f1c…", ...}}}
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import orjson

from mcp_local.errors import ConfigError
from mcphub_proto.v1 import toolhub_pb2 as pb

__all__ = ["PINS_FILE", "ToolPins", "definition_hash"]

PINS_FILE = "sandbox-pins.json"


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
    """The pinned hashes, kept in memory and written through to the state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / PINS_FILE
        self._pins: dict[str, dict[str, str]] = self._load()

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

    def set(self, sandbox: str, hashes: dict[str, str]) -> None:
        """Pin `hashes` (tool -> hash) for `sandbox`, keeping its other pins."""
        if not hashes:
            return
        self._pins.setdefault(sandbox, {}).update(hashes)
        self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"version": 1, "sandboxes": self._pins}, f, indent=1, sort_keys=True)
        tmp.replace(self.path)

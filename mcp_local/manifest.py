"""The per-image manifest: which tool packs the sidecar loads and how they are configured.

    # /etc/mcphub/manifest.yaml
    sandbox: sbx-42          # optional: the name to register under (default: the token's principal)
    workspace: /workspace    # the root of `files` and `git` (default: the current directory)
    log_level: info
    packs:
      - files
      - git
      - name: sql
        options:
          databases:
            app: {sqlite: data/app.db}

It is checked against a JSON Schema, and every problem names its key. A valid
manifest is recognised by the same compiled checks as tool arguments (`fastschema`);
`jsonschema` is imported only to describe what is wrong with an invalid one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .fastschema import Check, compile_schema
from .plainerrors import ConfigError, read_text, yaml_problem

if TYPE_CHECKING:
    import jsonschema

__all__ = ["Manifest", "PackSpec", "load_manifest", "parse_manifest"]

SANDBOX_NAME = r"^[a-zA-Z0-9_-]{1,48}$"

_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sandbox": {"type": "string", "pattern": SANDBOX_NAME},
        "workspace": {"type": "string", "minLength": 1},
        "log_level": {"enum": ["debug", "info", "warning", "error"]},
        "packs": {
            "type": "array",
            "items": {
                "anyOf": [
                    {"type": "string", "minLength": 1},
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "options": {"type": "object"},
                        },
                    },
                ]
            },
        },
    },
    "required": ["packs"],
}
_KEYS = "sandbox, workspace, log_level, packs"


def _compiled(schema: dict[str, Any]) -> Check:
    check = compile_schema(schema)
    if check is None:  # pragma: no cover - a development error, caught by any test run
        raise RuntimeError("the manifest schema must stay within fastschema's subset")
    return check


_VALID = _compiled(_SCHEMA)


@dataclass(frozen=True, slots=True)
class PackSpec:
    name: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Manifest:
    packs: tuple[PackSpec, ...]
    workspace: Path
    sandbox: str | None = None
    log_level: str = "info"
    source: str = "manifest"


def _where(error: jsonschema.ValidationError) -> str:
    parts = []
    for p in error.absolute_path:
        parts.append(f"[{p}]" if isinstance(p, int) else f".{p}")
    return "".join(parts).lstrip(".") or "(top level)"


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        allowed = ", ".join(error.schema.get("properties", {}))
        return f"unknown key {extra[0]!r} (expected one of: {allowed})"
    if error.validator == "anyOf" and _where(error).startswith("packs["):
        return "expected a pack name or {name: NAME, options: {...}}" + (
            f" (unknown key in {sorted(error.instance)})" if isinstance(error.instance, dict) else ""
        )
    if error.validator == "pattern" and _where(error) == "sandbox":
        return f"{error.instance!r} is not a sandbox name (1-48 characters of [a-zA-Z0-9_-])"
    return str(error.message)


def _refuse(data: Any, source: str) -> None:
    import jsonschema

    errors = sorted(
        jsonschema.Draft202012Validator(_SCHEMA).iter_errors(data), key=lambda e: list(e.absolute_path)
    )
    if not errors:  # pragma: no cover - the compiled check and jsonschema agree (test_fastschema)
        return
    lines = [f"{source}: invalid manifest"] + [f"  {_where(e)}: {_describe(e)}" for e in errors]
    raise ConfigError("\n".join(lines))


def parse_manifest(data: Any, *, source: str = "manifest", base: Path | None = None) -> Manifest:
    """A validated manifest from parsed YAML; raises ConfigError naming the bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with the keys {_KEYS}, got {type(data).__name__}")
    if not _VALID(data):
        _refuse(data, source)
    packs = tuple(
        PackSpec(p) if isinstance(p, str) else PackSpec(p["name"], dict(p.get("options") or {}))
        for p in data["packs"]
    )
    names = [p.name for p in packs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{source}: packs: {dupes[0]!r} appears more than once")
    workspace = Path(data.get("workspace", ".")).expanduser()
    if not workspace.is_absolute() and base is not None:
        workspace = base / workspace
    return Manifest(
        packs=packs,
        workspace=workspace,
        sandbox=data.get("sandbox"),
        log_level=data.get("log_level", "info"),
        source=source,
    )


def load_manifest(path: Path, *, base: Path | None = None) -> Manifest:
    """Read and validate a manifest file; a relative `workspace` is taken from `base` (default: cwd)."""
    text = read_text(path, "the manifest")
    import yaml  # on use: only the command that reads a manifest needs a YAML parser

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(exc)}") from None
    return parse_manifest(data, source=str(path), base=base or Path.cwd())

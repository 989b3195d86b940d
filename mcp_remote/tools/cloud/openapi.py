"""Tools from an OpenAPI 3 document: the chosen operations, each with a JSON Schema for its input.

Pure: a parsed document in, `Operation`s out. Path, query and header
parameters become properties of the input schema; a JSON request body becomes
the `body` property. `$ref`s to the document's own components are inlined
(a recursive reference becomes an open schema), and OpenAPI 3.0 schema dialect
(`nullable`, boolean `exclusiveMinimum`) is turned into JSON Schema 2020-12,
the dialect tool input schemas are validated with.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mcp_local.errors import ConfigError
from mcp_local.plainerrors import yaml_problem

from .settings import HTTP_METHODS, Risk

__all__ = ["Operation", "Parameter", "load_document", "operations", "tool_name"]

_DROP = frozenset({"example", "examples", "xml", "externalDocs", "discriminator", "deprecated", "nullable"})
_NAME_BAD = re.compile(r"[^A-Za-z0-9_-]+")
_RISKS: tuple[Risk, ...] = ("read-only", "write", "destructive")
MAX_DESCRIPTION = 1024


@dataclass(frozen=True, slots=True)
class Parameter:
    name: str
    """The name the API knows it by."""
    location: Literal["path", "query", "header"]
    argument: str
    """The property of the tool's input that carries it."""
    required: bool


@dataclass(frozen=True, slots=True)
class Operation:
    operation_id: str
    method: str
    path: str
    """The path template, e.g. `/repos/{owner}/{repo}`."""
    summary: str
    parameters: tuple[Parameter, ...]
    body_argument: str | None
    body_required: bool
    input_schema: Mapping[str, Any]
    risk: Risk | None


def load_document(path: Path, where: str = "openapi") -> dict[str, Any]:
    """The OpenAPI document at `path`; errors start with `where` (`services.<name>.openapi`)."""
    import json

    import yaml

    key = f"{where}.document"
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from exc
    try:
        doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: {path} is not valid YAML: {yaml_problem(exc)}") from None
    except ValueError as exc:
        raise ConfigError(f"{key}: {path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not str(doc.get("openapi", "")).startswith("3."):
        raise ConfigError(f"{key}: {path} is not an OpenAPI 3 document (no `openapi: 3.x`)")
    if not isinstance(doc.get("paths"), dict):
        raise ConfigError(f"{key}: {path} has no `paths`")
    return doc


def tool_name(service: str, operation_id: str) -> str:
    """`<service>_<operationId>` made into a valid tool name (^[a-zA-Z0-9_-]{1,64}$)."""
    name = _NAME_BAD.sub("_", f"{service}_{operation_id}").strip("_")
    if len(name) > 64:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[:55]}_{digest}"
    return name


class _Resolver:
    def __init__(self, doc: Mapping[str, Any], where: str) -> None:
        self.doc = doc
        self.where = where

    def pointer(self, ref: str) -> Any:
        if not ref.startswith("#/"):
            raise ConfigError(f"{self.where}: only local $refs (#/...) are supported, got {ref!r}")
        node: Any = self.doc
        for raw in ref[2:].split("/"):
            key = raw.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, Mapping) or key not in node:
                raise ConfigError(f"{self.where}: $ref {ref!r} points nowhere")
            node = node[key]
        return node

    def deref(self, node: Any, seen: tuple[str, ...] = ()) -> Any:
        """`node` with a top-level $ref followed (for parameters, request bodies)."""
        while isinstance(node, Mapping) and "$ref" in node:
            ref = node["$ref"]
            if ref in seen:
                raise ConfigError(f"{self.where}: $ref {ref!r} refers to itself")
            seen = (*seen, ref)
            node = self.pointer(ref)
        return node

    def schema(self, node: Any, seen: tuple[str, ...] = ()) -> Any:
        """A JSON Schema 2020-12 rendering of an OpenAPI schema, $refs inlined."""
        if isinstance(node, list):
            return [self.schema(v, seen) for v in node]
        if not isinstance(node, Mapping):
            return node
        if "$ref" in node:
            ref = str(node["$ref"])
            if ref in seen:
                return {"description": f"(recursive: {ref.rsplit('/', 1)[-1]})"}
            return self.schema(self.pointer(ref), (*seen, ref))
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _DROP or key.startswith("x-"):
                continue
            if key == "properties" and isinstance(value, Mapping):
                out[key] = {k: self.schema(v, seen) for k, v in value.items()}
            elif key in ("exclusiveMinimum", "exclusiveMaximum") and isinstance(value, bool):
                continue  # OpenAPI 3.0's boolean form, rewritten below
            else:
                out[key] = self.schema(value, seen)
        for flag, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if node.get(flag) is True and bound in out:
                out[flag] = out.pop(bound)
        if node.get("nullable") is True:
            kind = out.get("type")
            if isinstance(kind, str):
                out["type"] = [kind, "null"]
            elif isinstance(kind, list) and "null" not in kind:
                out["type"] = [*kind, "null"]
            elif "enum" in out and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]
        return out


def _text(*parts: Any) -> str:
    text = "\n\n".join(str(p).strip() for p in parts if p)
    return text if len(text) <= MAX_DESCRIPTION else text[: MAX_DESCRIPTION - 1] + "…"


def _operation(
    resolver: _Resolver, method: str, path: str, path_item: Mapping[str, Any], op: Mapping[str, Any]
) -> Operation:
    op_id = str(op["operationId"])
    where = f"{resolver.where}: operation {op_id!r}"
    merged: dict[tuple[str, str], Mapping[str, Any]] = {}
    for raw in [*path_item.get("parameters", []), *op.get("parameters", [])]:
        param = resolver.deref(raw)
        if not isinstance(param, Mapping) or "name" not in param or "in" not in param:
            raise ConfigError(f"{where}: a parameter without `name` and `in`")
        merged[(str(param["name"]), str(param["in"]))] = param
    names = [n for n, _ in merged]
    properties: dict[str, Any] = {}
    required: list[str] = []
    params: list[Parameter] = []
    for (name, location), param in merged.items():
        if location == "cookie" or (location == "header" and name.lower() in ("authorization", "cookie")):
            continue  # the hub owns credentials and cookies
        if location not in ("path", "query", "header"):
            raise ConfigError(f"{where}: parameter {name!r} has unknown location {location!r}")
        argument = name if names.count(name) == 1 else f"{name}_{location}"
        schema = resolver.schema(param.get("schema", {"type": "string"}))
        if isinstance(schema, dict) and param.get("description") and "description" not in schema:
            schema = {**schema, "description": _text(param["description"])}
        properties[argument] = schema
        is_required = bool(param.get("required")) or location == "path"
        if is_required:
            required.append(argument)
        params.append(Parameter(name, location, argument, is_required))  # type: ignore[arg-type]
    body_argument = None
    body_required = False
    body = resolver.deref(op.get("requestBody")) if op.get("requestBody") else None
    if isinstance(body, Mapping):
        content = body.get("content", {})
        media = next((m for m in content if m == "application/json" or m.endswith("+json")), None)
        if media is None:
            raise ConfigError(f"{where}: only JSON request bodies are supported (found {sorted(content)})")
        body_argument = "body" if "body" not in properties else "request_body"
        body_schema = resolver.schema(content[media].get("schema", {}))
        if isinstance(body_schema, dict) and body.get("description") and "description" not in body_schema:
            body_schema = {**body_schema, "description": _text(body["description"])}
        properties[body_argument] = body_schema
        body_required = bool(body.get("required"))
        if body_required:
            required.append(body_argument)
    input_schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        input_schema["required"] = required
    risk = op.get("x-mcphub-risk")
    if risk is not None and risk not in _RISKS:
        raise ConfigError(f"{where}: x-mcphub-risk must be one of {', '.join(_RISKS)}, got {risk!r}")
    return Operation(
        operation_id=op_id,
        method=method.upper(),
        path=path,
        summary=_text(op.get("summary"), op.get("description")),
        parameters=tuple(params),
        body_argument=body_argument,
        body_required=body_required,
        input_schema=input_schema,
        risk=risk,
    )


def operations(doc: Mapping[str, Any], chosen: Sequence[str] | Literal["*"], where: str) -> list[Operation]:
    """The chosen operations of `doc` (all that have an operationId for `*`), in document order."""
    resolver = _Resolver(doc, where)
    found: dict[str, Operation] = {}
    for path, item in doc["paths"].items():
        item = resolver.deref(item)
        if not isinstance(item, Mapping):
            continue
        for method in HTTP_METHODS:
            op = item.get(method.lower())
            if not isinstance(op, Mapping) or "operationId" not in op:
                continue
            op_id = str(op["operationId"])
            if chosen == "*" or op_id in chosen:
                if op_id in found:
                    raise ConfigError(f"{where}: operationId {op_id!r} appears twice")
                found[op_id] = _operation(resolver, method, str(path), item, op)
    if chosen != "*":
        missing = [o for o in chosen if o not in found]
        if missing:
            known = ", ".join(sorted(_all_ids(doc))[:20])
            raise ConfigError(f"{where}: no operation {missing[0]!r} in the document (it has: {known})")
        return [found[o] for o in chosen]
    return list(found.values())


def _all_ids(doc: Mapping[str, Any]) -> list[str]:
    return [
        str(op["operationId"])
        for item in doc["paths"].values()
        if isinstance(item, Mapping)
        for m in HTTP_METHODS
        if isinstance(op := item.get(m.lower()), Mapping) and "operationId" in op
    ]

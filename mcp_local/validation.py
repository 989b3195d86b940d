"""Argument validation against a tool's input schema, compiled once per tool.

Most schemas compile to plain-Python checks (`fastschema`), and a valid call never
touches `jsonschema`. A call those checks reject, and every schema outside their
subset, goes to `jsonschema`, imported then: it writes the message the model sees and
has the last word, so the answers are `jsonschema`'s either way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import orjson

from .errors import ConfigError
from .fastschema import Check, compile_schema

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

__all__ = ["ArgumentValidator", "check_output_schema", "check_references"]

logger = logging.getLogger(__name__)


_REFERENCES = ("$ref", "$dynamicRef", "$recursiveRef")


def _references(schema: Any) -> Iterator[str]:
    """Every reference in `schema` (under any key: a `$ref` inside `properties` is a property's
    schema, one inside `const` or `enum` a value, which is harmless to check too)."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _REFERENCES and isinstance(value, str):
                    yield value
                else:
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)


def _anchors(schema: Any) -> set[str]:
    found: set[str] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key in ("$anchor", "$dynamicAnchor"):
                if isinstance(node.get(key), str):
                    found.add(node[key])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _pointer_target(schema: Any, pointer: str) -> bool:
    """Does the JSON pointer `pointer` (a fragment without its `#`) name a part of `schema`?"""
    node = schema
    for part in unquote(pointer).split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def check_references(tool_name: str, schema: Mapping[str, Any], which: str = "input_schema") -> None:
    """Raise ConfigError unless every reference in `schema` points inside it (`#`, `#/$defs/x`,
    `#anchor`) at something that exists. A schema is a tool's, perhaps a sandbox's: a reference to
    a URL or a file would have the hub (or the sidecar) fetch it, from its own host, on every
    call, and one to nothing fails every call."""
    anchors: set[str] | None = None
    for ref in _references(schema):
        if not ref.startswith("#"):
            raise ConfigError(
                f"tool {tool_name!r}: {which} refers to {ref[:200]!r}: only references inside the "
                "schema itself ('#/$defs/...') are allowed, nothing is fetched"
            )
        fragment = ref[1:]
        if fragment == "" or (fragment.startswith("/") and _pointer_target(schema, fragment)):
            continue
        if not fragment.startswith("/"):
            anchors = _anchors(schema) if anchors is None else anchors
            if fragment in anchors:
                continue
        raise ConfigError(f"tool {tool_name!r}: {which} refers to {ref[:200]!r}, which is not in it")


def _full_validator(
    tool_name: str, schema: Mapping[str, Any], *, check: bool, which: str = "input_schema"
) -> Validator:
    import jsonschema
    from referencing import Registry

    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    if check:
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError as exc:
            problem = f"tool {tool_name!r}: {which} is not a valid JSON Schema: {exc.message}"
            raise ConfigError(problem) from exc
        check_references(tool_name, schema, which)
    # An empty registry: without one, jsonschema fetches any URL or file a reference names
    # (urllib, no timeout, on the event loop). References were checked to point inside.
    return cls(schema, registry=Registry())


def check_output_schema(tool_name: str, schema: Mapping[str, Any]) -> None:
    """Raise ConfigError unless `schema` is a valid JSON Schema (a listing carrying an invalid
    one fails in MCP clients). Schemas of the compiled subset pass without `jsonschema`."""
    if compile_schema(schema) is None:
        _full_validator(tool_name, schema, check=True, which="output_schema")


class ArgumentValidator:
    """Checks an arguments object; `problem()` returns None or a sentence the model can act on."""

    __slots__ = ("_fast", "_full", "_schema", "_tool")

    def __init__(self, tool_name: str, schema: Mapping[str, Any]) -> None:
        self._tool = tool_name
        self._schema = schema
        self._fast: Check | None = compile_schema(schema)
        # A compiled schema passed the meta-schema's rules on the way; any other is checked here.
        self._full: Validator | None = (
            None if self._fast is not None else _full_validator(tool_name, schema, check=True)
        )

    @property
    def compiled(self) -> bool:
        """True when valid calls are decided without `jsonschema`."""
        return self._fast is not None

    def problem(self, arguments: Any) -> str | None:
        if self._fast is not None and self._fast(arguments):
            return None
        full = self._full
        if full is None:
            full = self._full = _full_validator(self._tool, self._schema, check=False)
        from jsonschema.exceptions import best_match
        from referencing.exceptions import Unresolvable

        try:
            error = best_match(full.iter_errors(arguments))
        except Unresolvable as exc:  # checked when the tool was defined; a schema it missed
            logger.error(
                "tool %r: its input_schema has a reference that cannot be resolved: %s", self._tool, exc
            )
            return (
                f"the tool's input schema cannot be used ({type(exc).__name__}); the tool's owner must fix it"
            )
        if error is None:
            if self._fast is not None:
                logger.warning(
                    "tool %r: the fast schema check rejected arguments jsonschema accepts; "
                    "jsonschema decides this tool's calls from now on (please report this)",
                    self._tool,
                )
                self._fast = None
            return None
        where = "/".join(str(p) for p in error.absolute_path)
        return f"invalid arguments: {_in_json_terms(error)}" + (f" (at {where})" if where else "")


def _json_text(value: Any, limit: int = 200) -> str:
    try:
        text = orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        return repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _in_json_terms(error: Any) -> str:
    """jsonschema's message with the values it quotes as JSON (`null`, `true`, `["a"]`), not as
    Python (`None`, `True`, `['a']`): callers write JSON, in any language."""
    message: str = error.message
    python = repr(error.instance)
    if message.startswith(python):
        message = _json_text(error.instance) + message[len(python) :]
    expected = error.validator_value
    if isinstance(expected, list | dict | bool) or expected is None:
        message = message.replace(repr(expected), _json_text(expected))
    return message

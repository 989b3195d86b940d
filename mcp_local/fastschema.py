"""Plain-Python checks for the JSON Schemas tools actually declare, so a call does not need `jsonschema`.

Tool input schemas are nearly all one shape: an object with typed properties, some
required, bounds on lengths and numbers, an enum here and there, no extra keys. For
that shape `compile_schema` builds a predicate out of closures. It answers only
valid/invalid, about ten times faster than `jsonschema`'s `is_valid`, and without
importing `jsonschema` (with `referencing`, `rpds`, `attrs` and the bundled
meta-schemas, about 5 MB a sidecar would otherwise carry from start-up).

The fast path is conservative by construction:

- A schema is compiled only when every keyword in it, at every depth, is one listed
  below and has the type the draft 2020-12 meta-schema requires (a compiled schema is
  therefore one `check_schema` accepts). Anything else (`$ref`, `not`, `if`,
  `patternProperties`, `uniqueItems`, a `$schema` other than draft 2020-12 or draft-07,
  an unknown keyword, a bad regex, a negative length) returns None, and the caller uses
  `jsonschema` for everything, exactly as before.
- The predicate reproduces `jsonschema`'s semantics for the keywords it knows: draft 6+
  integers (`1.0` is an integer, `True` is not), `numbers.Number` for numbers,
  `re.search` for `pattern`, and `jsonschema`'s own equality for `enum`/`const`
  (`True` is not `1`, `1` is `1.0`, recursively). `format` is an annotation, as it is
  for `jsonschema` without a format checker.
- Callers only trust a "valid". On "invalid" they ask `jsonschema`, which writes the
  message (so messages are unchanged) and has the last word.

`tests/mcp_local/test_fastschema.py` runs both over thousands of generated instances
and fails on any disagreement.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

__all__ = ["Check", "compile_schema", "json_equal"]

Check = Callable[[Any], bool]

DIALECTS: Final = frozenset(
    {
        # Both select a validator whose semantics agree on every keyword below.
        "https://json-schema.org/draft/2020-12/schema",
        "https://json-schema.org/draft/2020-12/schema#",
        "http://json-schema.org/draft-07/schema",
        "http://json-schema.org/draft-07/schema#",
    }
)

_ANNOTATIONS: Final[Mapping[str, type | tuple[type, ...] | None]] = {
    "title": str,
    "description": str,
    "$comment": str,
    "format": str,  # asserted only with a format checker, which no caller passes
    "default": None,  # any value
    "examples": list,
    "deprecated": bool,
    "readOnly": bool,
    "writeOnly": bool,
}


class _NotCompiled(Exception):
    """The schema uses something outside the subset: leave it to `jsonschema`."""


def _is_integer(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    return isinstance(x, int) or (isinstance(x, float) and x.is_integer())


def _is_number(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, numbers.Number)


_TYPES: Final[Mapping[str, Check]] = {
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "string": lambda x: isinstance(x, str),
    "integer": _is_integer,
    "number": _is_number,
    "boolean": lambda x: isinstance(x, bool),
    "null": lambda x: x is None,
}


def json_equal(one: Any, two: Any) -> bool:
    """Equality as JSON Schema means it (and `jsonschema` computes it): `True` is not `1`, deeply."""
    if one is two:
        return True
    if isinstance(one, str) or isinstance(two, str):
        return bool(one == two)
    if isinstance(one, Sequence) and isinstance(two, Sequence):
        return len(one) == len(two) and all(json_equal(a, b) for a, b in zip(one, two, strict=True))
    if isinstance(one, Mapping) and isinstance(two, Mapping):
        return len(one) == len(two) and all(k in two and json_equal(v, two[k]) for k, v in one.items())
    return bool(_unbool(one) == _unbool(two))


_TRUE: Final = object()
_FALSE: Final = object()


def _unbool(x: Any) -> Any:
    if x is True:
        return _TRUE
    if x is False:
        return _FALSE
    return x


def compile_schema(schema: Any) -> Check | None:
    """A predicate equivalent to `jsonschema`'s `is_valid` for `schema`, or None outside the subset."""
    if isinstance(schema, Mapping) and "$schema" in schema:
        dialect = schema["$schema"]
        if not isinstance(dialect, str) or dialect not in DIALECTS:
            return None
        schema = {k: v for k, v in schema.items() if k != "$schema"}
    try:
        return _compile(schema)
    except _NotCompiled:
        return None


def _require(ok: bool) -> None:
    if not ok:
        raise _NotCompiled


def _count(value: Any) -> int:
    _require(isinstance(value, int) and not isinstance(value, bool) and value >= 0)
    return int(value)


def _bound(value: Any) -> Any:
    _require(_is_number(value))
    return value


def _schema_list(value: Any) -> list[Check]:
    _require(isinstance(value, list) and len(value) > 0)
    return [_compile(s) for s in value]


def _compile(schema: Any) -> Check:
    if schema is True:
        return lambda x: True
    if schema is False:
        return lambda x: False
    _require(isinstance(schema, dict) and all(isinstance(k, str) for k in schema))
    checks: list[Check] = []
    for key, value in schema.items():
        if key in _ANNOTATIONS:
            expected = _ANNOTATIONS[key]
            _require(expected is None or isinstance(value, expected))
            continue
        builder = _KEYWORDS.get(key)
        _require(builder is not None)
        assert builder is not None
        checks.append(builder(value, schema))
    if not checks:
        return lambda x: True
    if len(checks) == 1:
        return checks[0]
    frozen = tuple(checks)

    def check_all(x: Any) -> bool:
        for check in frozen:  # noqa: SIM110 - a plain loop: all() over a generator costs more per call
            if not check(x):
                return False
        return True

    return check_all


def _type(value: Any, schema: Mapping[str, Any]) -> Check:
    if isinstance(value, str):
        _require(value in _TYPES)
        return _TYPES[value]
    _require(isinstance(value, list) and len(value) > 0)
    _require(all(isinstance(v, str) and v in _TYPES for v in value) and len(set(value)) == len(value))
    tests = tuple(_TYPES[v] for v in value)
    return lambda x: any(t(x) for t in tests)


def _enum(value: Any, schema: Mapping[str, Any]) -> Check:
    _require(isinstance(value, list) and len(value) > 0)
    options = tuple(value)
    return lambda x: any(json_equal(option, x) for option in options)


def _const(value: Any, schema: Mapping[str, Any]) -> Check:
    return lambda x: json_equal(x, value)


def _properties(value: Any, schema: Mapping[str, Any]) -> Check:
    _require(isinstance(value, dict))
    subs = tuple((name, _compile(sub)) for name, sub in value.items())

    def properties(x: Any) -> bool:
        if not isinstance(x, dict):
            return True
        for name, check in subs:  # noqa: SIM110 - as in check_all
            if name in x and not check(x[name]):
                return False
        return True

    return properties


def _required(value: Any, schema: Mapping[str, Any]) -> Check:
    _require(isinstance(value, list) and all(isinstance(v, str) for v in value))
    _require(len(set(value)) == len(value))
    names = tuple(value)
    return lambda x: not isinstance(x, dict) or all(name in x for name in names)


def _additional_properties(value: Any, schema: Mapping[str, Any]) -> Check:
    declared = schema.get("properties", {})
    _require(isinstance(declared, dict))
    known = frozenset(declared)
    if value is False:
        return lambda x: not isinstance(x, dict) or known.issuperset(x)
    extra = _compile(value)

    def additional(x: Any) -> bool:
        if not isinstance(x, dict):
            return True
        return all(extra(v) for k, v in x.items() if k not in known)

    return additional


def _items(value: Any, schema: Mapping[str, Any]) -> Check:
    # A list here is draft-07's tuple form (2020-12's `prefixItems`): not in the subset.
    _require(value is True or value is False or isinstance(value, dict))
    item = _compile(value)
    return lambda x: not isinstance(x, list) or all(item(v) for v in x)


def _min_items(value: Any, schema: Mapping[str, Any]) -> Check:
    n = _count(value)
    return lambda x: not isinstance(x, list) or len(x) >= n


def _max_items(value: Any, schema: Mapping[str, Any]) -> Check:
    n = _count(value)
    return lambda x: not isinstance(x, list) or len(x) <= n


def _min_properties(value: Any, schema: Mapping[str, Any]) -> Check:
    n = _count(value)
    return lambda x: not isinstance(x, dict) or len(x) >= n


def _max_properties(value: Any, schema: Mapping[str, Any]) -> Check:
    n = _count(value)
    return lambda x: not isinstance(x, dict) or len(x) <= n


def _min_length(value: Any, schema: Mapping[str, Any]) -> Check:
    n = _count(value)
    return lambda x: not isinstance(x, str) or len(x) >= n


def _max_length(value: Any, schema: Mapping[str, Any]) -> Check:
    n = _count(value)
    return lambda x: not isinstance(x, str) or len(x) <= n


def _pattern(value: Any, schema: Mapping[str, Any]) -> Check:
    _require(isinstance(value, str))
    try:
        compiled = re.compile(value)
    except re.error:
        raise _NotCompiled from None
    return lambda x: not isinstance(x, str) or compiled.search(x) is not None


def _minimum(value: Any, schema: Mapping[str, Any]) -> Check:
    bound = _bound(value)
    return lambda x: not _is_number(x) or not x < bound


def _maximum(value: Any, schema: Mapping[str, Any]) -> Check:
    bound = _bound(value)
    return lambda x: not _is_number(x) or not x > bound


def _exclusive_minimum(value: Any, schema: Mapping[str, Any]) -> Check:
    bound = _bound(value)
    return lambda x: not _is_number(x) or not x <= bound


def _exclusive_maximum(value: Any, schema: Mapping[str, Any]) -> Check:
    bound = _bound(value)
    return lambda x: not _is_number(x) or not x >= bound


def _any_of(value: Any, schema: Mapping[str, Any]) -> Check:
    subs = tuple(_schema_list(value))
    return lambda x: any(s(x) for s in subs)


def _all_of(value: Any, schema: Mapping[str, Any]) -> Check:
    subs = tuple(_schema_list(value))
    return lambda x: all(s(x) for s in subs)


def _one_of(value: Any, schema: Mapping[str, Any]) -> Check:
    subs = tuple(_schema_list(value))
    return lambda x: sum(1 for s in subs if s(x)) == 1


_KEYWORDS: Final[Mapping[str, Callable[[Any, Mapping[str, Any]], Check]]] = {
    "type": _type,
    "enum": _enum,
    "const": _const,
    "properties": _properties,
    "required": _required,
    "additionalProperties": _additional_properties,
    "items": _items,
    "minItems": _min_items,
    "maxItems": _max_items,
    "minProperties": _min_properties,
    "maxProperties": _max_properties,
    "minLength": _min_length,
    "maxLength": _max_length,
    "pattern": _pattern,
    "minimum": _minimum,
    "maximum": _maximum,
    "exclusiveMinimum": _exclusive_minimum,
    "exclusiveMaximum": _exclusive_maximum,
    "anyOf": _any_of,
    "allOf": _all_of,
    "oneOf": _one_of,
}

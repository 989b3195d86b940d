"""`fastschema` against `jsonschema`: the same verdict on every instance, and only sound schemas compiled.

The compiled checks replace `jsonschema` on the call path for valid arguments, so any
disagreement would let a call through that `jsonschema` refuses. The differential tests
run both over instances generated from each schema (boundary values, wrong types, bool
against int, 1 against 1.0, missing and extra keys) and over every schema the built-in
packs of the hub and the sidecar publish, taken from real servers.
"""

from __future__ import annotations

import copy
import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from mcp_local import manifest as manifest_module
from mcp_local.errors import ConfigError
from mcp_local.fastschema import compile_schema, json_equal
from mcp_local.validation import ArgumentValidator
from mcp_remote.config import DEFAULT_PACKS
from tests.mcp_local.test_sidecar import sandbox_manifest
from tests.support.clients import connect
from tests.support.hub import start_hub
from tests.support.sidecar import start_sidecar

SYNTHETIC: list[Any] = [
    True,
    False,
    {},
    {"type": "integer"},
    {"type": "number", "minimum": 0, "maximum": 10},
    {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1.5},
    {"type": ["string", "null"], "minLength": 2, "maxLength": 3},
    {"type": "string", "pattern": "^[a-z]+$"},
    {"type": "string", "pattern": "b", "format": "email"},
    {"enum": [1, "1", True, None, [1, 2], {"a": False}, 2.5]},
    {"enum": [0, False]},
    {"const": 1},
    {"const": [True, {"k": 0}]},
    {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3},
    {"type": "array", "items": False},
    {"type": "array", "items": True, "maxItems": 0},
    {"type": "object", "minProperties": 1, "maxProperties": 2},
    {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "boolean"}},
        "required": ["a"],
        "additionalProperties": False,
    },
    {"type": "object", "additionalProperties": {"type": "number"}},
    {"properties": {"n": {"minimum": 3}}, "required": ["n", "m"]},
    {"anyOf": [{"type": "string", "minLength": 1}, {"type": "object", "required": ["name"]}]},
    {"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 2}]},
    {"allOf": [{"type": "number"}, {"maximum": 5}], "title": "t", "description": "d", "default": 1},
    {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object", "required": ["x"]},
    {"$schema": "http://json-schema.org/draft-07/schema#", "type": "integer", "minimum": 1},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"enum": ["a", "b"]}}}},
    manifest_module._SCHEMA,
]

# Values that have tripped JSON Schema implementations: bool vs int, integral floats, big ints.
ATOMS: list[Any] = [
    None, True, False, 0, 1, -1, 2, 3, 5, 10, 11, 0.0, -0.0, 1.0, 1.5, 2.0, 2.5, 10.0,
    2**63, -(2**70), 1e300, "", "a", "1", "ab", "abc", "abcd", "Ab", "é", "🙂🙂", "\n", "name",
    [], [1], [1, 2], [True], [1, "a"], [1, 2, 3, 4], {}, {"a": "x"}, {"name": "n"},
    {"a": 1}, {"k": 0}, {"x": None},
]  # fmt: skip


BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _sample(schema: Any, rng: random.Random, depth: int = 0) -> Any:
    """A value shaped by `schema` (often valid, often just over a boundary), or a random atom."""
    if depth > 4 or not isinstance(schema, dict) or rng.random() < 0.15:
        return copy.deepcopy(rng.choice(ATOMS))
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema and rng.random() < 0.6:
            return _sample(rng.choice(schema[key]), rng, depth + 1)
    if "enum" in schema and rng.random() < 0.7:
        return copy.deepcopy(rng.choice(schema["enum"]))
    if "const" in schema and rng.random() < 0.7:
        return copy.deepcopy(schema["const"])
    kind = schema.get("type", rng.choice(["object", "array", "string", "number", "integer"]))
    if isinstance(kind, list):
        kind = rng.choice(kind)
    if kind == "object":
        props = schema.get("properties", {})
        out = {name: _sample(sub, rng, depth + 1) for name, sub in props.items() if rng.random() < 0.6}
        for name in schema.get("required", []):
            if rng.random() < 0.9:
                out.setdefault(name, _sample(props.get(name, {}), rng, depth + 1))
        if rng.random() < 0.2:
            extra = schema.get("additionalProperties", True)
            out[rng.choice(["zz", "a", "name"])] = _sample(extra, rng, depth + 1)
        return out
    if kind == "array":
        n = _length(rng, schema.get("minItems", 0), schema.get("maxItems", 4))
        return [_sample(schema.get("items", True), rng, depth + 1) for _ in range(n)]
    if kind == "string":
        n = _length(rng, schema.get("minLength", 0), schema.get("maxLength", 5))
        return "".join(rng.choice("abcXY1-🙂") for _ in range(n))
    if kind in ("number", "integer"):
        bounds = [schema[k] for k in BOUNDS if k in schema]
        base = rng.choice(bounds) if bounds else rng.randint(-3, 12)
        value = base + rng.choice([-1, -0.5, 0, 0, 0.5, 1])
        return float(value) if rng.random() < 0.3 else value
    if kind == "boolean":
        return rng.random() < 0.5
    return None


def _length(rng: random.Random, low: int, high: int) -> int:
    """A length at or just past a bound, or in between; huge bounds are probed only from below."""
    near = [low - 1, low, low + 1, rng.randint(low, max(low, min(high, low + 6)))]
    if high <= 4096:
        near += [high, high + 1]
    return max(0, rng.choice(near))


def _jsonschema_valid(schema: Any, instance: Any) -> bool:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return bool(cls(schema).is_valid(instance))


def _agree(schema: Any, instances: Iterator[Any]) -> tuple[int, int]:
    check = compile_schema(schema)
    assert check is not None, f"expected the subset to cover {json.dumps(schema)[:200]}"
    valid = invalid = 0
    for instance in instances:
        expected = _jsonschema_valid(schema, instance)
        assert check(instance) is expected, (schema, instance, expected)
        valid += expected
        invalid += not expected
    return valid, invalid


def _instances(schema: Any, seed: int, n: int) -> Iterator[Any]:
    rng = random.Random(seed)
    yield from ATOMS
    for _ in range(n):
        yield _sample(schema, rng)


@pytest.mark.parametrize("index", range(len(SYNTHETIC)))
def test_same_verdict_as_jsonschema_on_generated_instances(index: int) -> None:
    schema = SYNTHETIC[index]
    valid, invalid = _agree(schema, _instances(schema, index, 1500))
    if schema is not True and schema is not False and schema != {}:
        # Not vacuous: the generator reaches both sides of every schema that has two.
        assert valid >= 20 and invalid >= 20, (valid, invalid)


def test_json_equal_follows_json_schema() -> None:
    assert json_equal(1, 1.0) and json_equal([1, {"a": 2.0}], [1.0, {"a": 2}])
    assert not json_equal(True, 1) and not json_equal([False], [0]) and not json_equal({"a": True}, {"a": 1})
    assert not json_equal("1", 1) and not json_equal([1, 2], [1]) and not json_equal({"a": 1}, {"b": 1})


JUNK: list[Any] = ["x", "", -1, 1.5, 0, True, None, [], ["a", "a"], [1], {}, {"type": "nope"}, "(", "[a-"]


def _mutants(schema: Any) -> Iterator[Any]:
    """`schema` with one keyword's value, at any depth, replaced by a junk value."""
    if not isinstance(schema, dict):
        return
    for key, value in schema.items():
        for junk in JUNK:
            yield {**schema, key: junk}
        if isinstance(value, dict):
            if key in ("properties",):
                for name, sub in value.items():
                    for m in _mutants(sub):
                        yield {**schema, key: {**value, name: m}}
            else:
                for m in _mutants(value):
                    yield {**schema, key: m}
        elif isinstance(value, list) and key in ("anyOf", "oneOf", "allOf"):
            for i, sub in enumerate(value):
                for m in _mutants(sub):
                    yield {**schema, key: [*value[:i], m, *value[i + 1 :]]}
    yield {**schema, "unknownKeyword": 1}
    yield {**schema, "$ref": "#"}


def test_only_schemas_jsonschema_accepts_are_compiled() -> None:
    """What compiles passed the meta-schema's rules: `check_schema` agrees, and so do verdicts."""
    compiled = refused = 0
    for index, schema in enumerate(SYNTHETIC):
        for mutant in _mutants(schema):
            if compile_schema(mutant) is None:
                refused += 1
                continue
            compiled += 1
            cls = jsonschema.validators.validator_for(mutant, default=jsonschema.Draft202012Validator)
            cls.check_schema(mutant)  # raises if fastschema compiled an invalid schema
            _agree(mutant, _instances(mutant, index, 40))
    assert compiled > 100 and refused > 100, (compiled, refused)


@pytest.mark.parametrize(
    "schema",
    [
        {"$schema": "http://json-schema.org/draft-04/schema#", "type": "integer"},
        {"type": "string", "format": "email", "x-extension": True},
        {"$schema": "http://json-schema.org/draft-07/schema#", "items": [{"type": "string"}]},
        {"type": "array", "uniqueItems": True},
        {"$defs": {"a": {"type": "string"}}, "$ref": "#/$defs/a"},
        {"type": "object", "patternProperties": {"^x": {"type": "string"}}},
        {"type": "integer", "multipleOf": 0.1},
        {"not": {"type": "string"}},
    ],
)
def test_schemas_outside_the_subset_are_left_to_jsonschema(schema: dict[str, Any]) -> None:
    assert compile_schema(schema) is None
    validator = ArgumentValidator("t", schema)
    assert not validator.compiled
    for instance in _instances(schema, 7, 200):
        problem = validator.problem(instance)
        assert (problem is None) is _jsonschema_valid(schema, instance), (schema, instance, problem)


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "strin"}, "is not valid under any of the given schemas"),
        ({"type": "string", "minLength": -1}, "-1 is less than the minimum of 0"),
        ({"type": "string", "pattern": "("}, "is not a 'regex'"),
    ],
)
def test_an_invalid_schema_is_refused_with_jsonschemas_words(schema: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match="input_schema is not a valid JSON Schema") as caught:
        ArgumentValidator("bad", schema)
    assert message in str(caught.value)


def test_messages_for_invalid_arguments_are_jsonschemas() -> None:
    schema = {
        "type": "object",
        "properties": {"sql": {"type": "string"}, "max_rows": {"type": "integer", "minimum": 1}},
        "required": ["sql"],
        "additionalProperties": False,
    }
    validator = ArgumentValidator("sql_query", schema)
    assert validator.compiled
    assert validator.problem({"sql": "select 1", "max_rows": 5}) is None
    assert validator.problem({"sql": 5}) == "invalid arguments: 5 is not of type 'string' (at sql)"
    assert validator.problem({"sql": "x", "max_rows": 0}) == (
        "invalid arguments: 0 is less than the minimum of 1 (at max_rows)"
    )
    assert validator.problem({}) == "invalid arguments: 'sql' is a required property"
    assert validator.problem({"sql": "x", "extra": 1}) == (
        "invalid arguments: Additional properties are not allowed ('extra' was unexpected)"
    )


def test_a_fast_check_that_disagrees_gives_way_to_jsonschema(caplog: pytest.LogCaptureFixture) -> None:
    validator = ArgumentValidator("t", {"type": "string"})
    validator._fast = lambda x: False  # a bug in the fast path, simulated
    with caplog.at_level(logging.WARNING, logger="mcp_local.validation"):
        assert validator.problem("fine") is None
    assert "jsonschema decides this tool's calls from now on" in caplog.text
    assert not validator.compiled
    assert validator.problem(5) == "invalid arguments: 5 is not of type 'string'"


async def test_every_built_in_tool_schema_is_compiled_and_agrees(tmp_path: Path) -> None:
    """The hub's default packs and the sidecar's packs, as real servers publish them."""
    hub = start_hub(tmp_path / "hub", env={"MCPHUB_PACKS": ",".join(DEFAULT_PACKS)}, http=False)
    sidecar = start_sidecar(tmp_path / "sidecar", sandbox_manifest(tmp_path / "sidecar"))
    try:
        schemas: dict[str, Any] = {}
        for target in (hub.grpc, sidecar.grpc):
            async with connect("grpc", target, None, None) as client:
                schemas |= {t["name"]: t["inputSchema"] for t in await client.list_tools()}
    finally:
        hub.stop()
        sidecar.stop()
    assert {"shell_exec", "browser_navigate", "sql_query", "files_read", "git_status"} <= set(schemas)
    for seed, (name, schema) in enumerate(sorted(schemas.items())):
        assert compile_schema(schema) is not None, f"{name}: outside fastschema's subset"
        _agree(schema, _instances(schema, seed, 300))


async def test_an_idle_sidecar_imports_jsonschema_only_to_explain_a_refusal(tmp_path: Path) -> None:
    sidecar = start_sidecar(tmp_path, sandbox_manifest(tmp_path), env={"PYTHONPROFILEIMPORTTIME": "1"})
    try:
        async with connect("grpc", sidecar.grpc, None, None) as client:
            good = await client.call("sql_query", {"database": "app", "sql": "SELECT v FROM kv"})
            assert not good.is_error, good.text
            assert "jsonschema" not in _imported(sidecar.log())
            bad = await client.call("sql_query", {"database": "app", "sql": 5})
            assert bad.is_error and "5 is not of type 'string' (at sql)" in bad.text
        assert "jsonschema" in _imported(sidecar.log())
    finally:
        sidecar.stop()


def _imported(log: str) -> set[str]:
    return {line.split("|")[-1].strip() for line in log.splitlines() if line.startswith("import time:")}

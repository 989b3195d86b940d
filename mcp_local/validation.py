"""Argument validation against a tool's input schema, compiled once per tool."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match

from .errors import ConfigError

__all__ = ["ArgumentValidator"]


class ArgumentValidator:
    """Checks an arguments object; `problem()` returns None or a sentence the model can act on."""

    __slots__ = ("_validator",)

    def __init__(self, tool_name: str, schema: Mapping[str, Any]) -> None:
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ConfigError(
                f"tool {tool_name!r}: input_schema is not a valid JSON Schema: {exc.message}"
            ) from exc
        self._validator = cls(schema)

    def problem(self, arguments: Any) -> str | None:
        if self._validator.is_valid(arguments):
            return None
        error = best_match(self._validator.iter_errors(arguments))
        if error is None:  # pragma: no cover - is_valid said otherwise
            return "arguments do not match the input schema"
        where = "/".join(str(p) for p in error.absolute_path)
        return f"invalid arguments: {error.message}" + (f" (at {where})" if where else "")

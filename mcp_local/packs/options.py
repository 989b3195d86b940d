"""Reading a pack's `options` mapping with errors that name the key and what was expected."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError

__all__ = ["PackOptions"]


class PackOptions:
    """Typed getters over one pack's options; `done()` refuses keys nobody asked for (typos)."""

    def __init__(self, pack: str, options: Mapping[str, Any]) -> None:
        if not isinstance(options, Mapping):
            raise ConfigError(f"packs[{pack}].options: expected a mapping, got {type(options).__name__}")
        self.pack = pack
        self._options = options
        self._seen: set[str] = set()

    def where(self, key: str) -> str:
        return f"packs[{self.pack}].options.{key}"

    def _get(self, key: str) -> Any:
        self._seen.add(key)
        return self._options.get(key)

    def raw(self, key: str) -> Any:
        return self._get(key)

    def string(self, key: str, *, default: str) -> str:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self.where(key)}: expected a non-empty string, got {value!r}")
        return value

    def integer(self, key: str, *, default: int, minimum: int, maximum: int) -> int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise ConfigError(
                f"{self.where(key)}: expected a whole number from {minimum} to {maximum}, got {value!r}"
            )
        return value

    def number(self, key: str, *, default: float, minimum: float, maximum: float) -> float:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not minimum <= value <= maximum:
            raise ConfigError(
                f"{self.where(key)}: expected a number from {minimum} to {maximum}, got {value!r}"
            )
        return float(value)

    def boolean(self, key: str, *, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(f"{self.where(key)}: expected true or false, got {value!r}")
        return value

    def string_list(self, key: str, *, default: list[str]) -> list[str]:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{self.where(key)}: expected a list of strings, got {value!r}")
        return value

    def done(self) -> None:
        unknown = sorted(set(self._options) - self._seen)
        if unknown:
            known = ", ".join(sorted(self._seen))
            raise ConfigError(f"{self.where(unknown[0])}: unknown option (this pack takes: {known})")

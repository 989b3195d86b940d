"""Loading, starting and stopping packs: foreign code that fails, hangs or collides is named."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mcp_local import ConfigError, ToolRegistry
from mcp_local.packs import PackEnv, start_packs

pytestmark = pytest.mark.anyio

FAULTY = str(Path(__file__).parents[2] / "packs" / "faulty.py")


@dataclass
class Spec:
    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    ref: str = ""


def faulty(events: Path, **options: Any) -> Spec:
    return Spec(FAULTY, {"events": str(events), **options})


async def start(tmp_path: Path, *specs: Spec, registry: ToolRegistry | None = None) -> list[Any]:
    return await start_packs(
        list(specs), PackEnv(state_dir=tmp_path), registry if registry is not None else ToolRegistry()
    )


def events(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def test_two_packs_may_not_share_a_name(tmp_path: Path) -> None:
    """A file pack named like the diagnostics pack silently took over its tools (`echo`
    answered by the impostor)."""
    registry = ToolRegistry()
    impostor = faulty(tmp_path / "events", name="diagnostics")
    with pytest.raises(ConfigError) as refused:
        await start(tmp_path, Spec("diagnostics"), impostor, registry=registry)
    assert str(refused.value).startswith(
        f"packs[{FAULTY}]: pack {FAULTY!r} is named 'diagnostics', like the pack of packs[diagnostics]: "
        "two packs may not share a name"
    )
    assert events(tmp_path / "events") == []  # refused before it started

"""Loading, starting and stopping packs: foreign code that fails, hangs or collides is named."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

import mcp_local.packs as packs
from mcp_local import ConfigError, Principal, ToolCall, ToolRegistry
from mcp_local.packs import PackEnv, start_packs, stop_packs

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


@pytest.mark.parametrize(
    ("options", "step", "error"),
    [
        ({"fail": "create"}, "creating it", "RuntimeError: no config file"),
        ({"fail": "start"}, "start()", "RuntimeError: the service it needs is down"),
        ({"fail": "start-oserror"}, "start()", "OSError: svc down"),
    ],
    ids=["create", "start", "start-oserror"],
)
async def test_a_pack_that_fails_is_named_and_the_packs_before_it_stop(
    tmp_path: Path, options: dict[str, str], step: str, error: str
) -> None:
    """Anything but a ConfigError from a pack's factory or start() ended the server with a
    traceback (an OSError with "mcphub: svc down", naming no pack), and the packs started
    before it were never stopped."""
    log = tmp_path / "events"
    registry = ToolRegistry()
    with pytest.raises(ConfigError) as refused:
        first = faulty(log, name="first", tools="precheck")
        await start(tmp_path, first, faulty(log, name="second", **options), registry=registry)
    assert str(refused.value) == f"packs[{FAULTY}]: pack {FAULTY!r}: {step} failed: {error}"
    assert events(log)[-1] == "stop first"
    assert registry.sources() == set()


async def test_a_module_that_fails_to_import_or_a_broken_entry_point_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken_pack_module.py"
    broken.write_text("raise RuntimeError('import-time failure')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as refused:
        await start(tmp_path, Spec("broken_pack_module:create_pack"))
    assert str(refused.value) == (
        "packs[broken_pack_module:create_pack]: pack 'broken_pack_module:create_pack': importing it failed: "
        "RuntimeError: import-time failure"
    )
    ghost = EntryPoint(name="ghost", value="no_such_module:create_pack", group=packs.ENTRY_POINT_GROUP)
    monkeypatch.setattr(packs, "_entry_points", lambda: [ghost])
    with pytest.raises(ConfigError) as refused:
        await start(tmp_path, Spec("ghost"))
    assert str(refused.value) == (
        "packs[ghost]: pack 'ghost': loading its entry point 'no_such_module:create_pack' failed: "
        "ModuleNotFoundError: No module named 'no_such_module'"
    )


async def test_a_handler_that_is_not_async_is_refused_at_start(tmp_path: Path) -> None:
    """A plain `def` handler was accepted, then failed each call with "object str can't be
    used in 'await' expression"."""
    log = tmp_path / "events"
    with pytest.raises(ConfigError) as refused:
        await start(tmp_path, faulty(log, tools="sync"))
    message = str(refused.value)
    assert message.startswith(f"packs[{FAULTY}]: tool 'blocking_tool': its handler '_sync' is not")
    assert "make it `async def`" in message and "asyncio.to_thread" in message
    assert events(log) == ["start faulty", "stop faulty"]


async def test_a_precheck_that_raises_gives_no_verdict(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The gate asks a tool's precheck before it asks a person: one that raised broke the call
    (INTERNAL)."""
    registry = ToolRegistry()
    await start(tmp_path, faulty(tmp_path / "events", tools="precheck"), registry=registry)
    registered = registry.get("checked_tool")
    assert registered is not None and registered.tool.precheck is not None
    call = ToolCall("checked_tool", b"{}")
    call.principal = Principal("p", ("*",))
    with caplog.at_level(logging.ERROR, logger="mcp_local.packs"):
        assert registered.tool.precheck(call) is None
    assert "the precheck of tool checked_tool raised; the call goes on without it" in caplog.text
    assert "KeyError: 'path'" in caplog.text


async def test_a_slow_start_is_named_in_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A pack whose start() never returned left no ready line and no log naming it."""
    monkeypatch.setattr(packs, "SLOW_START_S", 0.05, raising=False)
    with caplog.at_level(logging.INFO, logger="mcp_local.packs"):
        task = asyncio.ensure_future(start(tmp_path, faulty(tmp_path / "events", name="slow", start="hang")))
        await asyncio.sleep(0.3)
        assert f"packs[{FAULTY}]: pack 'slow' is still starting after 0.05s" in caplog.text
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_cancelled_start_stops_the_packs_started_and_names_the_one_starting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGTERM during a start that never returns: the server cancels the start."""
    log = tmp_path / "events"
    registry = ToolRegistry()
    first = faulty(log, name="first", tools="precheck")
    specs = (first, faulty(log, name="stuck", start="hang"), faulty(log, name="never"))
    task = asyncio.ensure_future(start(tmp_path, *specs, registry=registry))
    for _ in range(500):  # until the stuck pack is starting
        if events(log) == ["start first", "start stuck"]:
            break
        await asyncio.sleep(0.01)
    with caplog.at_level(logging.WARNING, logger="mcp_local.packs"):
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert events(log) == ["start first", "start stuck", "stop first"]
    assert f"packs[{FAULTY}]: stopped while pack 'stuck' was starting" in caplog.text
    assert registry.sources() == set()


async def test_a_stop_that_never_returns_is_given_up_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A stop() that never returned kept the hub alive after SIGTERM, and the packs before it
    were never stopped."""
    log = tmp_path / "events"
    specs = (faulty(log, name="first"), faulty(log, name="stuck", stop="hang"), faulty(log, name="last"))
    started = await start(tmp_path, *specs)
    with caplog.at_level(logging.ERROR, logger="mcp_local.packs"):
        monkeypatch.setattr(packs, "STOP_LIMIT_S", 0.2, raising=False)
        await asyncio.wait_for(stop_packs(started), 5)
    assert events(log)[3:] == ["stop last", "stop stuck", "stop first"]
    assert "pack stuck did not stop within 0.2s; stopping the others without it" in caplog.text

"""Tool packs: groups of tools loaded by import path or by entry point (group `mcphub.packs`).

A pack reference is an entry-point name (`diagnostics`), an import path
(`my_image.tools`, `my_image.tools:create_pack`) or a Python file
(`tests/conformance_pack.py`). The target is a factory
`create_pack(options, env) -> ToolPack`; a reference without `:attr` uses the
module's `create_pack`.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..errors import ConfigError
from ..outputs import OutputStore
from ..redaction import Redactor
from ..tools import Tool, ToolCall

if TYPE_CHECKING:
    from ..registry import ToolRegistry

__all__ = [
    "ENTRY_POINT_GROUP",
    "PackEnv",
    "StaticPack",
    "ToolPack",
    "available_packs",
    "load_pack",
    "start_packs",
    "stop_packs",
]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "mcphub.packs"

SLOW_START_S = 3.0
"""A pack still starting after this long is named in the log (the browser's takes seconds)."""

STOP_LIMIT_S = 5.0
"""How long one pack's `stop()` may take; the others are stopped whether it returns or not."""


def _no_addresses() -> tuple[str, ...]:
    return ()


def _ignore(pack: ToolPack) -> None:
    return None


def _ignore_address(address: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class PackEnv:
    """What a pack may know about, and use of, the server that loads it."""

    state_dir: Path
    outputs: OutputStore = field(default_factory=OutputStore)
    """Where a tool keeps an output too large for its result (see `output_read`)."""
    redactor: Redactor = field(default_factory=Redactor)
    """Register every secret value the pack holds: results, audit records and logs are redacted with it."""
    listen_addresses: Callable[[], tuple[str, ...]] = _no_addresses
    """The server's own listening addresses (`host:port`), known once it has bound them, with
    those its packs listen on (`add_listen_address`)."""
    add_listen_address: Callable[[str], None] = _ignore_address
    """Call with `host:port` of every socket the pack listens on: packs that connect somewhere
    on a caller's behalf refuse all of the server's own sockets, these included."""
    tools_changed: Callable[[ToolPack], None] = _ignore
    """Call with the pack when its `tools()` changed: the server re-reads them and tells clients."""
    extra: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class ToolPack(Protocol):
    name: str

    def tools(self) -> Sequence[Tool]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass(slots=True)
class StaticPack:
    """A pack whose tools need no start-up or clean-up."""

    name: str
    tool_list: Sequence[Tool]

    def tools(self) -> Sequence[Tool]:
        return self.tool_list

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


def _entry_points() -> Any:
    # Imported on use: importlib.metadata costs a few MB that a sidecar loading only
    # import paths (its built-in packs) never needs.
    from importlib.metadata import entry_points

    return entry_points(group=ENTRY_POINT_GROUP)


def available_packs() -> dict[str, str]:
    """Entry-point pack names and what they point to."""
    return {ep.name: ep.value for ep in _entry_points()}


def _import_file(ref: str, path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"pack {ref!r}: no such file {path}")
    name = f"mcphub_pack_{path.stem}_{abs(hash(str(path.resolve())))}"
    if name in sys.modules:  # one module per file: its import side effects run once
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"pack {ref!r}: {path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a pack file is foreign code: report any failure as a config error
        del sys.modules[name]
        raise ConfigError(f"pack {ref!r}: importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


def pack_ref_problem(ref: str) -> str | None:
    """What would stop `ref` loading, found without running its code (a config reload checks
    the packs the next start will load): a name no installed pack has, a file or module that is
    not there. None when it looks loadable; importing it may still fail."""
    module_ref, _, _ = ref.partition(":")
    if module_ref.endswith(".py") or "/" in module_ref:
        return None if Path(module_ref).is_file() else f"pack {ref!r}: no such file {module_ref}"
    if ":" not in ref and "." not in ref:
        if ref in available_packs():
            return None
        known = ", ".join(sorted(available_packs())) or "none"
        return f"pack {ref!r}: no such pack (installed packs: {known}; or give an import path)"
    try:
        found = importlib.util.find_spec(module_ref)
    except (ImportError, ValueError):
        found = None
    return None if found is not None else f"pack {ref!r}: cannot import {module_ref!r}: no such module"


def _resolve(ref: str) -> Any:
    module_ref, _, attr = ref.partition(":")
    if module_ref.endswith(".py") or "/" in module_ref:
        module = _import_file(ref, Path(module_ref))
        attr = attr or "create_pack"
        if not hasattr(module, attr):
            raise ConfigError(f"pack {ref!r}: {module_ref} has no {attr!r}")
        return getattr(module, attr)
    if ":" not in ref and "." not in ref:
        found = [ep for ep in _entry_points() if ep.name == ref]
        if not found:
            known = ", ".join(sorted(available_packs())) or "none"
            raise ConfigError(
                f"pack {ref!r}: no such pack (installed packs: {known}; or give an import path)"
            )
        try:
            return found[0].load()
        except Exception as exc:  # the entry point's module is foreign code: report any failure
            what = f"loading its entry point {found[0].value!r}"
            raise ConfigError(f"pack {ref!r}: {what} failed: {type(exc).__name__}: {exc}") from exc
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"pack {ref!r}: cannot import {module_name!r}: {exc}") from exc
    attr = attr or "create_pack"
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise ConfigError(f"pack {ref!r}: module {module_name!r} has no {attr!r}") from exc


def _secret_variables(spec: Any, target: Any) -> list[str]:
    """The environment variables the pack `spec` reads secrets from: its module may define
    `secret_variables(options) -> list[str]`."""
    hook = getattr(sys.modules.get(getattr(target, "__module__", ""), None), "secret_variables", None)
    if not callable(hook):
        return []
    try:
        return [str(name) for name in hook(dict(spec.options))]
    except ConfigError as exc:
        message, prefix = str(exc), f"packs[{spec.name}]"
        raise ConfigError(message if message.startswith(prefix) else f"{prefix}: {message}") from exc


def load_pack(ref: str, options: Mapping[str, Any], env: PackEnv, target: Any = None) -> ToolPack:
    """`target`: what `ref` names, when already resolved (a pack file is imported once)."""
    target = _resolve(ref) if target is None else target
    pack = target(dict(options), env) if callable(target) else target
    if not isinstance(pack, ToolPack):
        raise ConfigError(
            f"pack {ref!r}: expected a ToolPack (name, tools(), start(), stop()), got {type(pack).__name__}"
        )
    return pack


async def start_packs(
    specs: Sequence[Any],
    env: PackEnv,
    registry: ToolRegistry,
    scrub: MutableMapping[str, str] | None = None,
) -> list[ToolPack]:
    """Load and start the packs `specs` name, and register their tools.

    A spec has `.name` (how errors name it), `.options`, and optionally `.ref` (what to
    load, when it differs from the name).

    Each pack's tools become the registry source `pack:<name>`, refreshed whenever the pack
    calls `env.tools_changed(pack)`; two packs may not share a name (the second would take
    over the first one's tools). A pack is foreign code: whatever it raises while it loads or
    starts becomes one `ConfigError` naming its entry, and the packs started before it are
    stopped. Cancelled (a SIGTERM while starting), it stops them too and logs which pack was
    starting.

    The variables packs read secrets from (see `_secret_variables`) leave `scrub` (the process
    environment) before any pack is created, so no process a pack starts inherits them,
    whatever the packs' order. Each pack finds in `env.extra["environ"]` (or in `scrub` as it
    was) the other variables and its own secret ones, not other packs'.
    """

    def refresh(pack: ToolPack) -> None:
        try:
            registry.set_source(f"pack:{pack.name}", _checked_tools(pack))
        except ConfigError as exc:
            raise ConfigError(f"pack {pack.name!r}: {exc}") from exc

    env = replace(env, tools_changed=refresh)
    resolved: list[tuple[Any, Any, list[str]]] = []
    for spec in specs:
        ref = _ref(spec)
        try:
            target = _resolve(ref)
        except Exception as exc:  # see the docstring
            raise _failed(spec, ref, "importing it", exc) from exc
        try:
            resolved.append((spec, target, _secret_variables(spec, target)))
        except Exception as exc:
            raise _failed(spec, ref, "secret_variables(options)", exc) from exc
    given = env.extra.get("environ")
    source = dict(given if isinstance(given, Mapping) else (scrub or {}))
    secret = {name for _, _, names in resolved for name in names}
    if scrub is not None:
        for name in secret:
            scrub.pop(name, None)
    shared = {k: v for k, v in source.items() if k not in secret}
    started: list[ToolPack] = []
    entries: dict[str, str] = {}
    """Pack name -> the entry that gave it."""
    try:
        for spec, target, names in resolved:
            own = {**shared, **{n: source[n] for n in names if n in source}}
            pack_env = (
                replace(env, extra={**env.extra, "environ": own}) if secret or given is not None else env
            )
            pack = await _start_one(spec, target, pack_env, entries)
            started.append(pack)
            try:
                registry.set_source(f"pack:{pack.name}", _checked_tools(pack))
            except Exception as exc:  # see the docstring
                raise _failed(spec, _ref(spec), "registering its tools", exc) from exc
    except BaseException:
        for pack in started:
            registry.set_source(f"pack:{pack.name}", [])
        await stop_packs(started)
        raise
    return started


async def _start_one(spec: Any, target: Any, env: PackEnv, entries: dict[str, str]) -> ToolPack:
    """Create the pack of `spec` and start it; its name joins `entries`."""
    ref = _ref(spec)
    try:
        pack = load_pack(ref, spec.options, env, target)
        name = pack.name
    except Exception as exc:  # see start_packs
        raise _failed(spec, ref, "creating it", exc) from exc
    entry = f"packs[{spec.name}]"
    if name in entries:
        raise _entry_error(
            spec,
            f"pack {ref!r} is named {name!r}, like the pack of {entries[name]}: two packs may not share "
            "a name (the second would take over the first one's tools); remove or rename one",
        )
    loop = asyncio.get_running_loop()
    began = loop.time()
    slow = loop.call_later(
        SLOW_START_S, logger.info, "%s: pack %r is still starting after %gs", entry, name, SLOW_START_S
    )
    try:
        await pack.start()
    except asyncio.CancelledError:
        logger.warning(
            "%s: stopped while pack %r was starting (for %.1fs); the packs after it were not started",
            entry,
            name,
            loop.time() - began,
        )
        raise
    except Exception as exc:  # see start_packs
        raise _failed(spec, ref, "start()", exc) from exc
    finally:
        slow.cancel()
    entries[name] = entry
    return pack


def _ref(spec: Any) -> str:
    """What a pack spec names to load."""
    return str(getattr(spec, "ref", None) or spec.name)


def _failed(spec: Any, ref: str, step: str, exc: Exception) -> ConfigError:
    """`exc`, raised by the pack of `spec` during `step`, as a `ConfigError` naming its entry."""
    if isinstance(exc, ConfigError):
        return _entry_error(spec, str(exc))
    return _entry_error(spec, f"pack {ref!r}: {step} failed: {type(exc).__name__}: {exc}")


def _entry_error(spec: Any, message: str) -> ConfigError:
    """`message` as a `ConfigError` naming the entry of `spec` (once)."""
    prefix = f"packs[{spec.name}]"
    return ConfigError(message if message.startswith(prefix) else f"{prefix}: {message}")


def _checked_tools(pack: ToolPack) -> list[Tool]:
    """`pack.tools()`, each a `Tool` with an async handler, and a precheck that cannot break a call."""
    try:
        tools = list(pack.tools())
    except Exception as exc:  # see start_packs
        raise ConfigError(f"tools() failed: {type(exc).__name__}: {exc}") from exc
    checked = []
    for tool in tools:
        if not isinstance(tool, Tool):
            raise ConfigError(f"tools() gave a {type(tool).__name__}, expected a mcp_local.tools.Tool")
        handler = tool.handler
        if not (inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(type(handler).__call__)):
            # Awaiting what it returns would fail each call; a blocking handler would stall them all.
            raise ConfigError(
                f"tool {tool.name!r}: its handler {getattr(handler, '__qualname__', handler)!r} is not a "
                "coroutine function: make it `async def` (and run blocking work in it with "
                "`await asyncio.to_thread(...)`)"
            )
        checked.append(tool if tool.precheck is None else replace(tool, precheck=_guarded(tool)))
    return checked


def _guarded(tool: Tool) -> Callable[[ToolCall], str | None]:
    """`tool.precheck`, which only spares an approver a call the tool refuses anyway: one that
    raises gives no verdict (logged) rather than breaking the call it checks."""
    precheck = tool.precheck
    assert precheck is not None

    def guarded(call: ToolCall) -> str | None:
        try:
            return precheck(call)
        except Exception:  # foreign code: the call goes on as if the tool had no precheck
            logger.exception("the precheck of tool %s raised; the call goes on without it", tool.name)
            return None

    return guarded


async def stop_packs(packs: Sequence[ToolPack]) -> None:
    """Stop `packs` in reverse order, each within `STOP_LIMIT_S`; one failing to stop, or not
    stopping in time, does not keep the others running."""
    limit = STOP_LIMIT_S
    for pack in reversed(packs):
        try:
            # A task of its own: a stop that ignores its cancellation cannot hold the others up.
            stopping = asyncio.ensure_future(pack.stop())
        except Exception:  # foreign code at shutdown: log it and go on with the rest
            logger.exception("pack %s did not stop cleanly", pack.name)
            continue
        try:
            done, _ = await asyncio.wait((stopping,), timeout=limit)
        except BaseException:
            stopping.cancel()
            raise
        if not done:
            stopping.cancel()
            stopping.add_done_callback(_drop_outcome)
            logger.error("pack %s did not stop within %gs; stopping the others without it", pack.name, limit)
        elif not stopping.cancelled() and stopping.exception() is not None:
            logger.error("pack %s did not stop cleanly", pack.name, exc_info=stopping.exception())


def _drop_outcome(task: asyncio.Future[Any]) -> None:
    """Collect what a stop abandoned by `stop_packs` ended with: logged there already."""
    if not task.cancelled():
        task.exception()

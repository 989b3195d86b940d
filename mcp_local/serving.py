"""The process that serves `mcphub local serve` (see `mcp_local.handover` for how it starts)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pickle
import sys
from pathlib import Path
from typing import IO, Any

from .settings import SidecarSettings
from .stopping import StopSignals
from .undumpable import make_undumpable

__all__ = ["resume", "serve"]

EXIT_OK, EXIT_USAGE = 0, 2


def serve(settings: SidecarSettings, *, ready_file: str | None, json_line: bool) -> int:
    """Serve until SIGTERM or SIGINT (or, with stdio, the end of standard input)."""
    make_undumpable()  # again: exec reset it (a no-op when it is still set)
    logging.basicConfig(
        level=settings.manifest.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return asyncio.run(_serve(settings, ready_file=ready_file, json_line=json_line))
    except KeyboardInterrupt:
        return 130


def resume(handed_over: IO[bytes]) -> int:
    """The new interpreter's side of `exec_server`: read the settings, close the memfd, serve."""
    make_undumpable()  # before reading the memfd: it holds the hub token, and exec reset the flag
    with handed_over:
        # Our own command's objects, through a memfd only this process holds.
        settings, ready_file, json_line, name = pickle.load(handed_over)  # noqa: S301
    if name:
        # exec named the process after the interpreter; `pgrep mcphub` should still find it.
        with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
            comm.write(name)
    return serve(settings, ready_file=ready_file, json_line=json_line)


async def _serve(settings: SidecarSettings, *, ready_file: str | None, json_line: bool) -> int:
    from .errors import ConfigError
    from .redaction import RedactingFilter
    from .sidecar import Sidecar
    from .version import VERSION

    sidecar = Sidecar(settings, version=VERSION)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter(sidecar.redactor))
    if settings.token:
        sidecar.redactor.add(settings.token)
    signals = StopSignals()
    stop = signals.event
    starting = await signals.unless_stopped(sidecar.start())  # the pack that was starting is logged
    if starting is None:
        assert signals.first is not None
        await sidecar.stop(0)
        print(
            f"mcphub local: {signals.first.name} while starting: stopped before it was ready",
            file=sys.stderr,
        )
        return 128 + signals.first
    try:
        addresses = starting.result()
    except (ConfigError, OSError) as exc:
        await sidecar.stop(0)
        print(f"mcphub local: {exc}", file=sys.stderr)
        return EXIT_USAGE
    ready = {
        "event": "ready",
        "grpc": addresses.grpc,
        "mcp": addresses.mcp_url,
        "hub": settings.hub,
        "tools": len(sidecar.registry),
        "pid": os.getpid(),
    }
    _announce(ready, ready_file=ready_file, json_line=json_line, stdio=settings.stdio)
    from .memory import settle_memory

    settle_memory()
    stdio: asyncio.Task[None] | None = None
    if settings.stdio:
        stdio = asyncio.create_task(sidecar.serve_stdio())
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait((stdio, waiter), return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
    else:
        await stop.wait()
    logging.getLogger("mcphub.sidecar").info("shutting down")
    await sidecar.stop()  # answers the calls still running, the stdio client's included
    if stdio is not None:
        stdio.cancel()
    return EXIT_OK


def _announce(ready: dict[str, Any], *, ready_file: str | None, json_line: bool, stdio: bool) -> None:
    if ready_file:
        path = Path(ready_file)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(ready) + "\n")
        tmp.replace(path)
    if json_line:
        line = json.dumps(ready)
    else:
        line = (
            f"mcphub sidecar ready: grpc {ready['grpc']}, {ready['tools']} tools"
            + (f"  mcp {ready['mcp']}" if ready["mcp"] else "")
            + (f"  registering with {ready['hub']}" if ready["hub"] else "")
        )
    # In stdio mode stdout is the MCP channel: the ready line goes to stderr.
    print(line, file=sys.stderr if stdio else sys.stdout, flush=True)

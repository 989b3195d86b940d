"""What a pack does when its call is cancelled: stop what the call started, to the end.

A call's task may be cancelled more than once: at its deadline the sidecar's timer and the hub's
cancel arrive a few milliseconds apart, and a sidecar that stops cancels what is left. A second
cancel must not interrupt the stopping of the first: a statement left running in PostgreSQL, a
child process left unreaped (its pipes then outlive the event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable

__all__ = ["OWN_PROCESS_GROUP", "kill_process_group", "uninterrupted"]

OWN_PROCESS_GROUP = 0
"""`process_group=` for a child started by a pack: a group of its own (its PID), so that
`kill_process_group` ends it and whatever it started, and never the sidecar."""

EXIT_WAIT_S = 2.0
"""How long `kill_process_group` waits for a killed process to exit before it closes its pipes
and returns (SIGKILL ends a process at once unless it is stuck in the kernel)."""


async def uninterrupted(work: Awaitable[object]) -> None:
    """Await `work` to its end even when the task is cancelled again meanwhile (a second cancel is
    taken as said once `work` is done: the caller re-raises the first). `work` bounds itself.

    Under anyio (the MCP SDK's request tasks) a cancelled scope cancels its task again at every
    turn of the event loop: the loop below would spin, most of a core for as long as `work`
    runs (0.65 s of CPU for a 1 s stop). A shielded anyio scope stops that; it is only entered
    where anyio is loaded already (a sidecar serving gRPC never loads it)."""
    task = asyncio.ensure_future(work)
    anyio = sys.modules.get("anyio")
    with anyio.CancelScope(shield=True) if anyio is not None else contextlib.nullcontext():
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)


async def kill_process_group(proc: asyncio.subprocess.Process) -> None:
    """Kill `proc`, started with `process_group=OWN_PROCESS_GROUP`, and what it started (a
    program git runs: a filter, a credential helper), wait a bounded time for it to exit, then
    close its pipes, whatever cancels arrive.

    The group is signalled only while `proc` has not been reported to exit: asyncio's child
    watcher reaps it as soon as it exits, after which the group's id, its PID, may be reused
    (between the reap and the report, only by a wrap of the PID space).
    A process that left the group (`setsid`) is not killed, and may hold `proc`'s pipes open
    as long as it runs: `proc.wait()` would wait for it (it returns only once the pipes close),
    so the pipes are closed rather than waited for."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    await uninterrupted(_end(proc))


async def _end(proc: asyncio.subprocess.Process) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + EXIT_WAIT_S
    # A killed process exits at once, unless it is stuck in the kernel (a hung NFS mount); then
    # it is left to the child watcher.
    while proc.returncode is None and loop.time() < deadline:  # noqa: ASYNC110 - no event for the exit alone
        await asyncio.sleep(0.01)
    # No public way: the transport owns the pipes. Closing an exited process's transport ends
    # its pipes and wakes `wait()`; closing it earlier also sends SIGKILL to `proc` again.
    proc._transport.close()  # type: ignore[attr-defined]
    if proc.returncode is not None:
        await proc.wait()  # returns as the pipes' closing is processed

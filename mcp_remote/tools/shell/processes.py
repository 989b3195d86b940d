"""Background processes: started by shell_start, watched by shell_status / shell_read, ended by
shell_kill, a time limit, or the hub stopping.

Each principal sees only its own processes; ids are random (`proc_` + 128 bits), and an id of
someone else's process gets the same answer as an id that never existed. Output (stdout and stderr
interleaved as they arrive) is kept as a rolling log of the most recent bytes, read by offset.

A finished process's log is memory nobody may ever read again: it is dropped `keep_finished_s`
after the process ended, and sooner when the principal's finished processes hold more than
FINISHED_LOGS logs' worth together (the oldest first). Its state and exit code stay, for the last
_KEEP_FINISHED finished processes of each principal, so that shell_status and shell_read can say
what became of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from mcp_local.errors import ToolError

from .capture import OutputLog
from .sandbox import ExecSpec, ExitStatus, SandboxProcess, SandboxTarget, reap

__all__ = ["PROCESS_ID_PATTERN", "BackgroundProcess", "ProcessTable"]

logger = logging.getLogger(__name__)

PROCESS_ID_PATTERN = "^proc_[A-Za-z0-9_-]{16,64}$"
_KEEP_FINISHED = 32
"""Finished processes whose state and exit code one principal keeps (the oldest are forgotten)."""
FINISHED_LOGS = 4
"""A principal's finished processes keep at most this many times `background_log_bytes` of output
together; past it the oldest logs are dropped."""


@dataclass(eq=False)
class BackgroundProcess:
    process_id: str
    principal: str
    command: str
    process: SandboxProcess
    log: OutputLog
    started_at: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    status: ExitStatus | None = None
    timed_out: bool = False
    task: asyncio.Task[None] | None = None
    log_dropped: bool = False
    """Its output is no longer kept (it ended over `keep_finished_s` ago, or newer ones took the room)."""
    _drop_timer: asyncio.TimerHandle | None = None

    def drop_log(self) -> None:
        if self._drop_timer is not None:
            self._drop_timer.cancel()
            self._drop_timer = None
        if not self.log_dropped:
            self.log_dropped = True
            self.log.discard()

    @property
    def state(self) -> str:
        if self.status is None:
            return "running"
        if self.status.lost:
            return "lost"
        if self.timed_out:
            return "timed_out"
        if self.status.killed:
            return "killed"
        return "exited"

    def summary(self) -> dict[str, Any]:
        end = self.ended if self.ended is not None else time.monotonic()
        return {
            "process_id": self.process_id,
            "state": self.state,
            "command": self.command[:200],
            "exit_code": self.status.exit_code if self.status else None,
            "signal": self.status.signal if self.status else None,
            "started_at": round(self.started_at, 3),
            "duration_ms": round((end - self.started) * 1000),
            "output_bytes": self.log.end,
            **({"lost": self.status.lost} if self.status and self.status.lost else {}),
            **({"output_dropped": True} if self.log_dropped else {}),
        }


class ProcessTable:
    def __init__(self, *, max_running: int, log_bytes: int, keep_finished_s: float) -> None:
        self.max_running = max_running
        self.log_bytes = log_bytes
        self.keep_finished_s = keep_finished_s
        self._by_principal: dict[str, dict[str, BackgroundProcess]] = {}

    def _mine(self, principal: str) -> dict[str, BackgroundProcess]:
        return self._by_principal.setdefault(principal, {})

    async def start(
        self, principal: str, target: SandboxTarget, spec: ExecSpec, timeout_s: float | None
    ) -> BackgroundProcess:
        mine = self._mine(principal)
        running = sum(1 for p in mine.values() if p.status is None)
        if running >= self.max_running:
            raise ToolError(
                f"{running} background processes are already running (the limit is {self.max_running}); "
                "stop one with shell_kill first"
            )
        process = await target.spawn(principal, spec)
        bp = BackgroundProcess("proc_" + secrets.token_urlsafe(16), principal, spec.command, process,
                               OutputLog(self.log_bytes))  # fmt: skip
        mine[bp.process_id] = bp
        bp.task = asyncio.create_task(self._pump(bp, timeout_s), name=f"mcphub-{bp.process_id}")
        self._forget_old(mine)
        return bp

    async def _pump(self, bp: BackgroundProcess, timeout_s: float | None) -> None:
        try:
            try:
                async with asyncio.timeout(timeout_s):
                    async for chunk in bp.process.output():
                        bp.log.add(chunk.data)
                    bp.status = await bp.process.wait()
            except TimeoutError:
                bp.timed_out = True
                await bp.process.kill()
                bp.status = await bp.process.wait()
        except asyncio.CancelledError:
            await bp.process.kill()
            reap(bp.process)
            bp.status = ExitStatus(None, None, killed=True)
            raise
        except Exception:  # a broken stream must not leave the process unwatched
            logger.exception("background process %s failed", bp.process_id)
            await bp.process.kill()
            reap(bp.process)
            bp.status = ExitStatus(None, None, killed=True)
        finally:
            bp.ended = time.monotonic()
            bp.log.close()
            bp._drop_timer = asyncio.get_running_loop().call_later(self.keep_finished_s, bp.drop_log)
            self._drop_over_room(self._mine(bp.principal))

    def _drop_over_room(self, mine: dict[str, BackgroundProcess]) -> None:
        """Drop the oldest finished logs until those left fit FINISHED_LOGS logs' worth."""
        kept = sorted(
            (p for p in mine.values() if p.status is not None and not p.log_dropped),
            key=lambda p: p.ended or 0,
            reverse=True,
        )
        room = FINISHED_LOGS * self.log_bytes
        for p in kept:
            room -= p.log.kept_bytes
            if room < 0:
                p.drop_log()

    def _forget_old(self, mine: dict[str, BackgroundProcess]) -> None:
        finished = sorted((p for p in mine.values() if p.status is not None), key=lambda p: p.ended or 0)
        for old in finished[: max(0, len(finished) - _KEEP_FINISHED)]:
            old.drop_log()
            del mine[old.process_id]

    def get(self, principal: str, process_id: str) -> BackgroundProcess:
        found = self._mine(principal).get(process_id)
        if found is None:
            raise ToolError(f"no process {process_id[:80]!r} (shell_status lists yours)")
        return found

    def list(self, principal: str) -> list[BackgroundProcess]:
        return sorted(self._mine(principal).values(), key=lambda p: p.started)

    async def kill(self, principal: str, process_id: str) -> BackgroundProcess:
        bp = self.get(principal, process_id)
        if bp.status is None:
            await bp.process.kill()
            if bp.task is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(10):
                        await asyncio.shield(bp.task)
        return bp

    async def close(self) -> None:
        tasks = [p.task for mine in self._by_principal.values() for p in mine.values() if p.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for mine in self._by_principal.values():
            for p in mine.values():
                p.drop_log()
        self._by_principal.clear()

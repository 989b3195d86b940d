"""The `process` pack: list and stop the sandbox's own processes (Linux, from /proc).

Options:

    all_users: false    # true lists processes of every user (stopping still needs permission)

Only processes of the sidecar's own user are listed and may be stopped; the
sidecar itself and PID 1 are never stopped. A stop goes through a pidfd, so a
PID that was reused between listing and stopping is not hit by mistake: the
process's start time must match the one the caller names (as listed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..content import TextContent, ToolResult
from ..errors import ToolError
from ..tools import Tool, ToolAnnotations, ToolCall
from . import PackEnv, StaticPack
from .options import PackOptions

__all__ = ["ProcessInfo", "create_pack", "read_process"]

PROC = Path("/proc")
PID_MAX_LIMIT = 4_194_304  # Linux's ceiling for pid_max (2**22): no pid is larger
_SIGNALS = {"TERM": signal.SIGTERM, "INT": signal.SIGINT, "KILL": signal.SIGKILL, "HUP": signal.SIGHUP}
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    pid: int
    ppid: int
    uid: int
    state: str
    start_ticks: int
    rss_kb: int
    name: str
    cmdline: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "ppid": self.ppid,
            "uid": self.uid,
            "state": self.state,
            "start": self.start_ticks,
            "rss_kb": self.rss_kb,
            "name": self.name,
            "cmdline": self.cmdline,
        }


def read_process(pid: int) -> ProcessInfo | None:
    """One process from /proc, or None when it is gone (or not readable)."""
    base = PROC / str(pid)
    try:
        stat = (base / "stat").read_text()
        # The real uid from `status`, not the owner of /proc/PID: a non-dumpable process's
        # /proc entries belong to root (the sidecar's own among them, see mcp_local/undumpable.py).
        uid = _real_uid((base / "status").read_text())
        cmdline = (base / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The name is in parentheses and may itself contain spaces or parentheses.
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    return ProcessInfo(
        pid=pid,
        ppid=int(fields[1]),
        uid=uid,
        state=fields[0],
        start_ticks=int(fields[19]),
        rss_kb=int(fields[21]) * _PAGE_KB,
        name=name,
        cmdline=cmdline.replace(b"\x00", b" ").decode(errors="replace").strip()[:1000],
    )


def _real_uid(status: str) -> int:
    for line in status.splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise PermissionError("no Uid line in /proc/PID/status")


class _Processes:
    def __init__(self, all_users: bool) -> None:
        self.all_users = all_users
        self.uid = os.getuid()
        self.own_pid = os.getpid()

    def _list(self) -> list[ProcessInfo]:
        found = []
        for entry in PROC.iterdir():
            if not entry.name.isdigit():
                continue
            info = read_process(int(entry.name))
            if info is None or (info.state == "Z" and info.cmdline == ""):
                continue
            if self.all_users or info.uid == self.uid:
                found.append(info)
        return sorted(found, key=lambda p: p.pid)

    async def list(self, call: ToolCall) -> ToolResult:
        needle: str | None = call.arguments.get("match")
        processes = [
            p
            for p in await asyncio.to_thread(self._list)
            if not needle or needle in p.cmdline or needle in p.name
        ]
        data = {"processes": [p.as_dict() for p in processes], "sidecar_pid": self.own_pid}
        return ToolResult(content=(TextContent(orjson.dumps(data).decode()),), structured=data)

    async def stop(self, call: ToolCall) -> str:
        pid = int(call.arguments["pid"])
        sig = _SIGNALS[call.arguments.get("signal", "TERM")]
        wait_s = float(call.arguments.get("wait_s", 5))
        if pid <= 1 or pid == self.own_pid:
            raise ToolError(
                f"process {pid} is {'init' if pid <= 1 else 'the sidecar itself'}; it is not stopped"
            )
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise ToolError(f"no process {pid}") from None
        except OSError as exc:  # EINVAL or ENOENT: a thread's id, not a process's
            raise ToolError(
                f"no process {pid} to stop ({exc.strerror}); a thread's id is not a process id: "
                "take the pid from process_list"
            ) from None
        try:
            info = read_process(pid)
            if info is None:
                raise ToolError(f"no process {pid}")
            if info.uid != self.uid:
                raise ToolError(
                    f"process {pid} belongs to another user (uid {info.uid}); "
                    "only the sandbox's own are stopped"
                )
            start = call.arguments.get("start")
            if start is not None and int(start) != info.start_ticks:
                raise ToolError(
                    f"process {pid} is not the one listed (it started at another time); list again"
                )
            try:
                signal.pidfd_send_signal(pidfd, sig)
            except ProcessLookupError:
                return f"process {pid} had already exited"
            except PermissionError as exc:
                raise ToolError(f"may not signal process {pid}: {exc.strerror}") from exc
            exited = await _wait_exit(pidfd, wait_s)
        finally:
            os.close(pidfd)
        name = f"{pid} ({info.name})"
        if exited:
            return f"process {name} exited after SIG{sig.name.removeprefix('SIG')}"
        return (
            f"sent SIG{sig.name.removeprefix('SIG')} to process {name}; it is still running after {wait_s:g}s"
        )


async def _wait_exit(pidfd: int, wait_s: float) -> bool:
    """Whether the process exits within `wait_s` (a pidfd becomes readable when it does)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        async with asyncio.timeout(wait_s):
            await done
        return True
    except TimeoutError:
        return False
    finally:
        with contextlib.suppress(Exception):
            loop.remove_reader(pidfd)


def create_pack(options: Mapping[str, Any], env: PackEnv) -> StaticPack:
    opts = PackOptions("process", options)
    all_users = opts.boolean("all_users", default=False)
    opts.done()
    p = _Processes(all_users)
    return StaticPack(
        "process",
        [
            Tool(
                name="process_list",
                title="List processes",
                description=(
                    "List the sandbox's processes (pid, parent, state, start, memory, command line), "
                    "optionally only those whose command line contains `match`."
                ),
                input_schema={
                    "type": "object",
                    "properties": {"match": {"type": "string", "maxLength": 200}},
                    "additionalProperties": False,
                },
                handler=p.list,
                annotations=ToolAnnotations(
                    read_only=True, destructive=False, idempotent=True, open_world=False
                ),
            ),
            Tool(
                name="process_stop",
                title="Stop a process",
                description=(
                    "Send a signal (TERM by default) to one of the sandbox's processes and wait up to "
                    "wait_s seconds for it to exit. Pass `start` from process_list to be sure the PID "
                    "still names the same process."
                ),
                input_schema={
                    "type": "object",
                    "properties": {
                        "pid": {"type": "integer", "minimum": 2, "maximum": PID_MAX_LIMIT},
                        "signal": {"enum": sorted(_SIGNALS), "default": "TERM"},
                        "start": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                        "wait_s": {"type": "number", "minimum": 0, "maximum": 60, "default": 5},
                    },
                    "required": ["pid"],
                    "additionalProperties": False,
                },
                handler=p.stop,
                annotations=ToolAnnotations(
                    read_only=False, destructive=True, idempotent=False, open_world=False
                ),
            ),
        ],
    )

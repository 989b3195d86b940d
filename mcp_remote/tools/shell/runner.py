"""Running one command to completion for shell_exec: stream its output to the caller, keep it,
enforce the time limit, kill it when the caller goes, and shape the result.

Output goes to the caller as output events (gRPC) and, twice a second at most, as a progress
event naming the latest line (all an MCP client shows while a tool runs). The result carries at
most `preview_bytes` of stdout and of stderr; a stream longer than that is
stored whole (up to `max_output_bytes`) in the hub's output store, and the result names the
output id and the `output_read` call that pages through it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from mcp_local.content import TextContent, ToolResult
from mcp_local.outputs import OutputStore, preview_length
from mcp_local.tools import ToolCall

from .capture import OutputCapture
from .sandbox import ExecSpec, ExitStatus, SandboxTarget, reap

__all__ = ["EXEC_OUTPUT_SCHEMA", "run_command"]

_DEADLINE_MARGIN_S = 0.25
_PROGRESS_EVERY_S = 0.5

EXEC_OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "exit_code": {"type": ["integer", "null"], "description": "null when killed by a signal"},
        "signal": {"type": ["integer", "null"]},
        "timed_out": {"type": "boolean"},
        "duration_ms": {"type": "integer"},
        "stdout": {"type": "string", "description": "the first preview_bytes of stdout"},
        "stderr": {"type": "string", "description": "the first preview_bytes of stderr"},
        "truncated": {"type": "boolean", "description": "stdout or stderr is longer than shown"},
        "stdout_bytes": {"type": "integer"},
        "stderr_bytes": {"type": "integer"},
        "stdout_output_id": {
            "type": ["string", "null"],
            "description": "read all of stdout with output_read (when longer than shown, or not UTF-8)",
        },
        "stderr_output_id": {"type": ["string", "null"]},
        "lost": {
            "type": ["string", "null"],
            "description": "set when the connection to the sandbox was lost: the command's fate is unknown",
        },
    },
    "required": ["exit_code", "timed_out", "duration_ms", "stdout", "stderr", "truncated"],
}


def _last_line(data: bytes) -> str:
    lines = [line for line in data.decode("utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def _effective_timeout(call: ToolCall, requested: float) -> float:
    """The command's own limit, cut short so the result still reaches a caller with a deadline."""
    if call.deadline is None:
        return requested
    left = call.deadline - asyncio.get_running_loop().time() - _DEADLINE_MARGIN_S
    return max(0.05, min(requested, left))


async def run_command(
    call: ToolCall,
    target: SandboxTarget,
    spec: ExecSpec,
    *,
    timeout_s: float,
    outputs: OutputStore,
    preview_bytes: int,
    max_output_bytes: int,
) -> ToolResult:
    assert call.principal is not None
    principal = call.principal.name
    capture = OutputCapture(max_output_bytes)
    limit = _effective_timeout(call, timeout_s)
    started = time.monotonic()
    process = await target.spawn(principal, spec)
    timed_out = False
    loop = asyncio.get_running_loop()
    next_progress = 0.0
    try:
        try:
            async with asyncio.timeout(limit):
                async for chunk in process.output():
                    capture.add(chunk.stream, chunk.data)
                    await call.output(chunk.data, chunk.stream)
                    if loop.time() >= next_progress:
                        # MCP clients see progress, not output events: the latest line, twice a second.
                        next_progress = loop.time() + _PROGRESS_EVERY_S
                        await call.progress(
                            capture.total("stdout") + capture.total("stderr"), None, _last_line(chunk.data)
                        )
                status = await process.wait()
        except TimeoutError:
            timed_out = True
            await process.kill()
            status = await process.wait()
    except BaseException:  # cancelled (the caller went away) or failed: the command must not outlive the call
        await process.kill()
        reap(process)
        raise
    duration_ms = round((time.monotonic() - started) * 1000)
    killed = (
        "the command and everything it started were killed"
        if target.kind == "jail"  # its sandbox's pid namespace ends with it
        else "the command's process group was killed"  # a process that left it (setsid) lives on
    )
    return _result(principal, status, timed_out, limit, duration_ms, capture, outputs, preview_bytes, killed)


def _stream(
    principal: str, name: str, capture: OutputCapture, outputs: OutputStore, preview_bytes: int
) -> tuple[str, int, str | None, str | None]:
    """(preview text, total bytes, output id, note for the model)."""
    kept = capture.kept(name)
    total = capture.total(name)
    if total <= preview_bytes:
        try:
            return kept.decode("utf-8"), total, None, None
        except UnicodeDecodeError:
            # Shown whole, but not as it is: kept so that output_read gives its bytes (base64).
            output_id = outputs.put(principal, kept, label=name)
            note = (
                f"{name} is not UTF-8 text ({total} bytes; U+FFFD marks what is not); its exact bytes: "
                + _read_on(output_id, 0)
            )
            return kept.decode("utf-8", errors="replace"), total, output_id, note
    output_id = outputs.put(principal, kept, label=name, dropped=total - len(kept))
    # The preview is a glimpse (bytes that are not UTF-8 show as U+FFFD); output_read is exact.
    shown = preview_length(kept, preview_bytes)
    text = kept[:shown].decode("utf-8", errors="replace")
    note = f"{name} has {total} bytes; shown: the first {shown}. Read on with " + _read_on(output_id, shown)
    if total > len(kept):
        note += f" (only the first {len(kept)} bytes were kept; the rest was counted, not stored)"
    return text, total, output_id, note


def _read_on(output_id: str, offset: int) -> str:
    """The output_read call that reads a stored output from `offset`."""
    return "output_read " + orjson.dumps({"output_id": output_id, "offset": offset}).decode()


def _result(
    principal: str,
    status: ExitStatus,
    timed_out: bool,
    limit: float,
    duration_ms: int,
    capture: OutputCapture,
    outputs: OutputStore,
    preview_bytes: int,
    killed: str,
) -> ToolResult:
    stdout, out_bytes, out_id, out_note = _stream(principal, "stdout", capture, outputs, preview_bytes)
    stderr, err_bytes, err_id, err_note = _stream(principal, "stderr", capture, outputs, preview_bytes)
    if timed_out and status.lost:
        head = f"timed out after {limit:g}s, and {status.lost}"
    elif timed_out:
        head = f"timed out after {limit:g}s; {killed}"
    elif status.lost:
        head = status.lost
    elif status.exit_code is not None:
        head = f"exit code {status.exit_code}"
    else:
        head = f"killed by signal {status.signal}"
    lines = [f"[{head}; {duration_ms} ms]"]
    if stdout:
        lines.append(stdout.rstrip("\n"))
    if stderr:
        lines += ["[stderr]", stderr.rstrip("\n")]
    lines += [f"[{note}]" for note in (out_note, err_note) if note]
    structured = {
        "exit_code": status.exit_code,
        "signal": status.signal,
        "timed_out": timed_out,
        "duration_ms": duration_ms,
        "stdout": stdout,
        "stderr": stderr,
        "truncated": out_bytes > preview_bytes or err_bytes > preview_bytes,
        "stdout_bytes": out_bytes,
        "stderr_bytes": err_bytes,
        "stdout_output_id": out_id,
        "stderr_output_id": err_id,
        "lost": status.lost,
    }
    return ToolResult(
        content=(TextContent("\n".join(lines)),),
        structured=structured,
        is_error=timed_out or bool(status.lost),
    )

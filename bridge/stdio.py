"""The bridge over stdio, for clients that can only start a command.

The SDK's server (`Server.run`) serves the session; the transport is ours. The SDK's stdio
transport reads stdin a whole line at a time in a worker thread, so a line had no size limit
(a 60 MB line was held, parsed, and only then refused by gRPC), and its read could not be
given up: when the session ended with stdin still open, the reader waited for the next line
for ever and the process with it. Here stdin is read in chunks when it is readable, without a
thread, and cut into lines of at most the HTTP bridge's body limit (`lines.py`); reading stops
when the session ends. As in the SDK, fds 0 and 1 point at the null device and stderr while
serving, so that nothing else in the process (a pack, a child process) reads or writes the wire.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import mcp_types as types
import pydantic_core
from mcp.shared._context_streams import create_context_streams
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from .door import BATCH_REFUSED
from .errors import not_a_message
from .hubclient import HubClient, ToolHubClient
from .lines import LineFramer, TooLong, leading_id
from .server import BridgeOptions, build_mcp_server

__all__ = ["serve_stdio"]

logger = logging.getLogger(__name__)

_CHUNK = 64 * 1024


def _error_for(exc: Exception) -> types.JSONRPCError | None:
    """The JSON-RPC answer to a line that is not a message (None for a blank line)."""
    errors = exc.errors() if isinstance(exc, ValidationError) else []
    first = errors[0] if errors else None
    if first is not None and first["type"] == "json_invalid":
        if isinstance(first.get("input"), str | bytes) and not first["input"].strip():
            return None
        code, message = types.PARSE_ERROR, f"Parse error: the line is not JSON ({first['msg']})"
    elif first is not None and isinstance(first.get("input"), list):
        code, message = types.INVALID_REQUEST, BATCH_REFUSED
    elif isinstance(exc, ValidationError):
        code, message = types.INVALID_REQUEST, not_a_message(exc)
    else:
        code, message = types.INVALID_REQUEST, f"Invalid Request: not a JSON-RPC 2.0 message: {exc}"
    return types.JSONRPCError(jsonrpc="2.0", id=None, error=types.ErrorData(code=code, message=message))


def _too_long(line: TooLong, limit: int) -> types.JSONRPCError:
    message = (
        f"Invalid Request: the line is longer than the bridge's limit of {limit} bytes "
        "(the HTTP bridge's body limit); it was skipped unread"
    )
    return types.JSONRPCError(
        jsonrpc="2.0",
        id=leading_id(line.head),
        error=types.ErrorData(code=types.INVALID_REQUEST, message=message),
    )


def _message_or_error(line: bytes) -> SessionMessage | types.JSONRPCError | None:
    """The message on `line`, or the error that answers it (None: a blank line, no answer)."""
    try:
        message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
    except ValidationError as exc:
        return _error_for(exc)
    if isinstance(message, types.JSONRPCNotification) and b'"id"' in line and _has_id(line):
        # The SDK's parser takes a request whose id is no id (null, an object) for a
        # notification and drops the id: the client would wait for ever for its answer.
        error = types.ErrorData(
            code=types.INVALID_REQUEST,
            message='Invalid Request: "id" must be a string or an integer (a notification has no "id")',
        )
        return types.JSONRPCError(jsonrpc="2.0", id=None, error=error)
    return SessionMessage(message)


def _has_id(line: bytes) -> bool:
    parsed = pydantic_core.from_json(line)  # parsed by the SDK already: it is JSON
    return isinstance(parsed, dict) and "id" in parsed


async def _chunks(fd: int) -> AsyncIterator[bytes]:
    """What `fd` delivers, as it comes, until its end. A pipe, socket or terminal is waited on
    (no thread, so giving up is always possible); a regular file never blocks; a device the
    event loop cannot watch (`/dev/null`: epoll refuses it) is read in a thread."""
    waits = not stat.S_ISREG(os.fstat(fd).st_mode)
    threaded = False
    while True:
        if waits:
            try:
                await anyio.wait_readable(fd)
            except PermissionError:
                waits, threaded = False, True
        try:
            if threaded:
                data = await anyio.to_thread.run_sync(os.read, fd, _CHUNK, abandon_on_cancel=True)
            else:
                data = os.read(fd, _CHUNK)
        except BlockingIOError:  # readable, then taken by someone else sharing the pipe
            continue
        if not data:
            return
        yield data


async def _read_lines(fd: int, limit: int | None, messages: Any, replies: Any) -> None:
    """Pass the messages on `fd` to `messages`; answer each line that is not one (the SDK
    would drop it without a word) on `replies`."""
    framer = LineFramer(limit)
    async with messages, replies:
        try:
            async for data in _chunks(fd):
                for line in framer.feed(data):
                    await _take(line, limit, messages, replies)
            last = framer.end()
            if last is not None:
                await _take(last, limit, messages, replies)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return  # the session ended


async def _take(line: bytes | TooLong, limit: int | None, messages: Any, replies: Any) -> None:
    if isinstance(line, TooLong):
        assert limit is not None
        answer: SessionMessage | types.JSONRPCError | None = _too_long(line, limit)
    else:
        answer = _message_or_error(line)
    if isinstance(answer, SessionMessage):
        await messages.send(answer)
    elif answer is not None:
        logger.warning("answered a line on stdin that is not a JSON-RPC message: %s", answer.error.message)
        await replies.send(SessionMessage(answer))


async def _write_lines(fd: int, messages: Any) -> bool:
    """Write each message to `fd` as one line (as the SDK's stdio transport does), until the
    messages end (False) or `fd`'s reader has closed it (True: the client has gone)."""
    async with messages:
        async for message in messages:
            line = message.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n"
            try:
                await anyio.to_thread.run_sync(_write_all, fd, line)
            except BrokenPipeError:
                return True
    return False


async def _reader_gone(fd: int) -> None:
    """Return when the pipe `fd` writes to has no reader left; never, for anything but a pipe.

    The write end of a pipe is never readable: the event loop reports it when the pipe breaks
    (EPOLLERR), so a client that closes its end is seen with no answer to write."""
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        await anyio.sleep_forever()
    while True:
        try:
            await anyio.wait_readable(fd)
        except PermissionError:  # not a descriptor the event loop can watch
            await anyio.sleep_forever()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        if any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0)):
            return
        await anyio.sleep(0.1)


def _write_all(fd: int, data: bytes) -> None:
    """Write all of `data` (in a worker thread). The client may have made its pipe non-blocking
    (the flag is shared with it): a full pipe then refuses the write, and it waits for room."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            select.select([], [fd], [fd])


@contextlib.contextmanager
def _wire(fd: int, open_stand_in: Callable[[], int]) -> Iterator[int]:
    """A private duplicate of standard descriptor `fd` for the wire, with `fd` itself pointed
    at a stand-in meanwhile."""
    private = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    stand_in = open_stand_in()
    try:
        os.dup2(stand_in, fd)
    finally:
        os.close(stand_in)
    try:
        yield private
    finally:
        os.dup2(private, fd)
        os.close(private)


def _null_input() -> int:
    return os.open(os.devnull, os.O_RDONLY)


def _stderr() -> int:
    return os.dup(2)


async def serve_stdio(hub: str | ToolHubClient, options: BridgeOptions) -> None:
    """MCP on stdin/stdout for the hub at `hub` (a gRPC address, or a client to use), until
    stdin ends or the session does."""
    if isinstance(hub, str):
        hub = HubClient(hub)
    server = build_mcp_server(hub, options)
    try:
        with _wire(0, _null_input) as wire_in, _wire(1, _stderr) as wire_out:
            to_server, from_client = create_context_streams[SessionMessage | Exception](0)
            to_client, from_server = create_context_streams[SessionMessage](0)
            async with anyio.create_task_group() as writing:

                async def stop_when_stdout_closes() -> None:
                    # Answers would go nowhere: stop as at the end of stdin (in-flight calls are
                    # cancelled). Waiting for the next write to fail would let calls run unanswered.
                    broken = False
                    async with anyio.create_task_group() as either:

                        async def write() -> None:
                            nonlocal broken
                            broken = await _write_lines(wire_out, from_server)
                            either.cancel_scope.cancel()

                        async def watch() -> None:
                            nonlocal broken
                            await _reader_gone(wire_out)
                            broken = True
                            either.cancel_scope.cancel()

                        either.start_soon(write)
                        either.start_soon(watch)
                    if broken:
                        logger.warning("stdout was closed: the client has gone; the bridge stops")
                        writing.cancel_scope.cancel()

                writing.start_soon(stop_when_stdout_closes)
                async with anyio.create_task_group() as reading:
                    reading.start_soon(
                        _read_lines, wire_in, options.max_body_bytes, to_server, to_client.clone()
                    )
                    await server.run(from_client, to_client, server.create_initialization_options())
                    # Ended before stdin did: reading on would wait for a line nobody serves.
                    reading.cancel_scope.cancel()
    finally:
        await hub.close()

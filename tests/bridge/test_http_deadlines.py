"""Slow clients get deadlines: a connection that never sends a request, headers sent a byte at a
time, a body that stops coming. uvicorn held each of them open for ever (a file descriptor, and
once the headers were in a task), so a few thousand such connections could starve a hub."""

from __future__ import annotations

import asyncio
import contextlib
import re
import select
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from bridge.http import HttpServer

pytestmark = pytest.mark.anyio


async def _echo_length(request: Request) -> JSONResponse:
    return JSONResponse({"received": len(await request.body())})


async def _slow(request: Request) -> JSONResponse:
    # Longer than the body deadline below (3 s unless ?s= says): a tool call taking its time.
    seconds = int(request.query_params.get("s", "3"))
    await asyncio.sleep(seconds)
    return JSONResponse({"slept": seconds})


async def _late(request: Request) -> JSONResponse:
    """Asks for its body only after 2 s, longer than the body deadline below."""
    await asyncio.sleep(2)
    return JSONResponse({"received": len(await request.body())})


async def _read_then_sleep(request: Request) -> JSONResponse:
    """As the bridge does a tool call: the body first, then the call's time (5 s)."""
    received = len(await request.body())
    await asyncio.sleep(5)
    return JSONResponse({"received": received})


async def _hello_later(scope: Scope, receive: Receive, send: Send) -> None:
    """A streamed answer whose last write, 1 s after the rest, is empty."""
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"hello", "more_body": True})
    await asyncio.sleep(1)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _headers(request: Request) -> JSONResponse:
    return JSONResponse({"n": len(request.headers), "evil": request.headers.getlist("x-evil")})


STREAM_OUTCOMES: list[str] = []
STREAM_DONE: list[asyncio.Event] = []


async def _stream(scope: Scope, receive: Receive, send: Send) -> None:
    """Writes a chunk every 0.1 s for 10 s, watching (as the bridge's express lane does) for the
    client to leave; appends what happened to STREAM_OUTCOMES."""
    await receive()  # the (empty) body
    gone = asyncio.Event()

    async def watch() -> None:
        if (await receive())["type"] == "http.disconnect":
            gone.set()

    watcher = asyncio.create_task(watch())
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for _ in range(100):
        if gone.is_set():
            STREAM_OUTCOMES.append("saw the client leave")
            STREAM_DONE[0].set()
            return
        await send({"type": "http.response.body", "body": b".", "more_body": True})
        await asyncio.sleep(0.1)
    watcher.cancel()
    STREAM_OUTCOMES.append("ran to the end")
    STREAM_DONE[0].set()
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _big(scope: Scope, receive: Receive, send: Send) -> None:
    """`?kb=N`: N KiB of answer, in writes of at most 64 KiB (`&whole`: in one, as JSONResponse)."""
    await receive()
    query = scope["query_string"].decode()
    left = int(query.partition("kb=")[2].partition("&")[0] or "1") << 10
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % left)]})
    while left:
        chunk = left if "whole" in query else min(left, 64 << 10)
        left -= chunk
        await send({"type": "http.response.body", "body": b"x" * chunk, "more_body": bool(left)})


def _app() -> Starlette:
    return Starlette(
        routes=[
            Mount("/stream", app=_stream),
            Mount("/big", app=_big),
            Mount("/hello-later", app=_hello_later),
            Route("/mcp", _echo_length, methods=["POST"]),
            Route("/slow", _slow, methods=["POST"]),
            Route("/late", _late, methods=["POST"]),
            Route("/call", _read_then_sleep, methods=["POST"]),
            Route("/h", _headers, methods=["GET"]),
        ]
    )


@pytest.fixture
async def port() -> AsyncIterator[int]:
    app = _app()
    # 64 KiB: a body's deadline is at most 1 s + 64 KiB at 64 KiB/s.
    server = HttpServer(
        app,
        "127.0.0.1",
        0,
        header_timeout_s=1.0,
        body_grace_s=1.0,
        write_stall_s=1.0,
        max_body_bytes=64 * 1024,
    )
    yield await server.start()
    await server.stop()


@contextlib.asynccontextmanager
async def _own_server(*, sndbuf: int = 0, **limits: float) -> AsyncIterator[int]:
    """A server of its own with these limits; `sndbuf`: the send buffer of its accepted sockets
    (they inherit the listening socket's), so that an answer waits in our buffer."""
    server = HttpServer(_app(), "127.0.0.1", 0, **limits)  # type: ignore[arg-type]
    server.bind()
    if sndbuf:
        assert server._socket is not None
        server._socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    port = await server.start()
    try:
        yield port
    finally:
        await server.stop()


def _post(length: int) -> bytes:
    return f"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {length}\r\n\r\n".encode()


async def _until_closed(reader: asyncio.StreamReader, limit: float) -> tuple[bytes, float]:
    started = time.monotonic()
    answer = await asyncio.wait_for(reader.read(), limit)
    return answer, time.monotonic() - started


async def _read_until(reader: asyncio.StreamReader, done: Callable[[bytes], bool], limit: float) -> bytes:
    """What the server sends until `done` holds for it, the server closes, or a read waits `limit` s."""
    got = b""
    with contextlib.suppress(asyncio.TimeoutError):
        while not done(got):
            chunk = await asyncio.wait_for(reader.read(4096), limit)
            if not chunk:
                break
            got += chunk
    return got


async def test_a_connection_that_sends_nothing_is_closed(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer, waited = await _until_closed(reader, 20)
    assert answer == b"" and 3 < waited < 10, waited  # uvicorn's keep-alive timeout, 5 s
    writer.close()


async def test_headers_dribbled_a_byte_at_a_time_get_408(port: int) -> None:
    answer, waited = await asyncio.to_thread(_dribble, port)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert waited < 5.5, waited  # its deadline is 1 s; the whole head takes 6 s (room for a busy machine)


def _dribble(port: int) -> tuple[bytes, float]:
    """Send a request's head a byte every 0.1 s (6 s in all) until the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        started = time.monotonic()
        for byte in _post(0):
            if select.select([sock], [], [], 0.1)[0]:
                break  # the server has answered (and closed)
            sock.sendall(bytes([byte]))
        answer = sock.recv(4096)
        return answer, time.monotonic() - started


async def test_a_body_that_stops_coming_is_cut_off(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_post(100) + b"{")
    await writer.drain()
    answer, waited = await _until_closed(reader, 20)
    # 1 s grace + 100 bytes at 64 KiB/s; held for ever before (the bound has room for a busy machine)
    assert answer == b"" and waited < 12, waited
    writer.close()


async def test_a_bare_crlf_does_not_stop_the_clock(port: int) -> None:
    # httptools skips a CRLF before a request without starting one; uvicorn's keep-alive timer
    # stopped at the first byte, so this connection was held for ever.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\r\n")
    await writer.drain()
    answer, waited = await _until_closed(reader, 20)
    assert answer.startswith(b"HTTP/1.1 408 ") and waited < 12, (answer, waited)  # 1 s; was for ever
    writer.close()


async def test_a_claimed_length_buys_no_more_time_than_the_largest_body(port: int) -> None:
    # 10^12 bytes at 64 KiB/s was a deadline of six months; the largest body allowed sets it.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_post(10**12))
    started = time.monotonic()
    # Its deadline is 2 s; the bound is loose for a busy machine (5.6 s seen at load 8), and
    # the deadline the claimed length would have bought is months.
    while not reader.at_eof() and time.monotonic() - started < 30:
        writer.write(b"x")  # a byte now and then, never the whole
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(reader.read(), 0.5)
    assert reader.at_eof() and time.monotonic() - started < 20, time.monotonic() - started
    writer.close()


async def test_a_pipelined_request_waits_its_turn_without_cutting_the_first(port: int) -> None:
    # The second request's body cannot come while the first is answered (reading is paused):
    # its deadline starts with its turn, not with its headers.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /slow HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 0\r\n\r\n" + _post(10) + b"01234"
    )
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.write(b"56789")
    await writer.drain()
    answers = await _read_until(reader, lambda got: got.count(b"HTTP/1.1 200 ") >= 2, 10)
    assert b'{"slept":3}' in answers and b'{"received":10}' in answers, answers
    writer.close()


@pytest.mark.parametrize("order", ["call", "call, quick", "quick, call"])
async def test_bad_bytes_after_pipelined_requests_get_400_after_their_answers(port: int, order: str) -> None:
    """uvicorn answered unparsable bytes with 400 at once and closed: requests read in full
    before them and not yet answered were cancelled, their answers lost."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # As a tool call: its body read (which resumes reading), then answered after 5 s, longer
    # than the header deadline (1 s) that the bad bytes start.
    call = b"POST /call HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 2\r\n\r\nhi"
    requests = [call if name == "call" else _post(2) + b"ok" for name in order.split(", ")]
    writer.write(b"".join(requests) + b"GET / HTTP/1.1\r\nBad Header Name: x\r\n\r\n")
    await writer.drain()
    answers, _ = await _until_closed(reader, 15)
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answers) == [b"200"] * len(requests) + [b"400"], answers
    assert answers.rindex(b'{"received":2}') < answers.index(b"Invalid HTTP")
    writer.close()


async def test_bad_bytes_in_a_requests_own_body_still_end_it_at_once(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ntransfer-encoding: chunked\r\n\r\nZZ\r\nbad\r\n")
    await writer.drain()
    answers, took = await _until_closed(reader, 10)
    assert answers.startswith(b"HTTP/1.1 400 ") and took < 1, answers
    writer.close()


async def test_a_connection_answered_before_its_body_still_times_out(port: int) -> None:
    """Found in review: answered early (here 405), then sent its body, the connection had no
    timer left (the body's bytes stopped the keep-alive one) and stayed open for good."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /nowhere HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 2\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 404 ") or head.startswith(b"HTTP/1.1 405 "), head
    writer.write(b"{}")
    await writer.drain()
    _, waited = await _until_closed(reader, 15)
    assert waited < 10, waited  # uvicorn's keep-alive, 5 s
    writer.close()


async def test_the_request_after_an_early_answer_is_not_cut_by_its_timer(port: int) -> None:
    """Found in review: the keep-alive timer restarted after an early answer kept running under
    the next request on the connection, and closed it at 5 s in the middle of its call."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /nowhere HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 10\r\n\r\n01234")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith((b"HTTP/1.1 404 ", b"HTTP/1.1 405 ")), head
    # The rest of the body, and a 6 s call: it ends after uvicorn's 5 s keep-alive would have.
    writer.write(b"56789" + b"POST /slow?s=6 HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 0\r\n\r\n")
    await writer.drain()
    answers = await _read_until(reader, lambda got: b'{"slept":6}' in got, 15)
    assert b'{"slept":6}' in answers, answers
    writer.close()


async def test_a_request_begun_behind_a_queued_one_does_not_cut_the_first(port: int) -> None:
    """Found in review: with B queued (reading paused), the first bytes of C armed its header
    deadline, which could not be met until A and B were answered: A's response was cut."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    slow = b"POST /slow HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 0\r\n\r\n"
    writer.write(slow + _post(2) + b"{}" + b"POST /mcp")
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.write(b" HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 2\r\n\r\n{}")
    await writer.drain()
    answers = await _read_until(reader, lambda got: got.count(b"HTTP/1.1 200 ") >= 3, 10)
    assert answers.count(b"HTTP/1.1 200 ") == 3 and b'{"slept":3}' in answers, answers
    writer.close()


def _not_reading(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


def _drain(sock: socket.socket, limit_s: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True) or `limit_s` passes (False)."""
    got = bytearray()
    deadline = time.monotonic() + limit_s
    sock.settimeout(1)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return bytes(got), True
        if not chunk:
            return bytes(got), True
        got += chunk
    return bytes(got), False


async def test_pipelining_is_bounded(port: int) -> None:
    """Found in review: 300,000 pipelined requests from a client reading nothing were all
    parsed and queued (10 MB sent, 680 MB held). Now 64 may wait behind the one answered; the
    last of them is answered with `connection: close`, and the rest are not served."""
    with _not_reading(port) as sock:
        sock.sendall(_post(0) * 200)
        answers, closed = await asyncio.to_thread(_drain, sock, 10)
    assert closed and answers.count(b"HTTP/1.1 200 ") == 65, answers.count(b"HTTP/1.1 200 ")
    assert answers.count(b"connection: close") == 1


async def test_what_comes_after_the_pipelining_cap_reaches_no_request(port: int) -> None:
    """Found in review: past the cap, the ignored requests' URL and header bytes were still
    parsed into the last request served (its scope gained their headers), and read without
    end (3.6 GB from a client streaming header lines)."""
    evil = b"GET /h HTTP/1.1\r\nhost: 127.0.0.1\r\nx-evil: 1\r\n\r\n"
    with _not_reading(port) as sock:
        sock.sendall(b"GET /h HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n" * 65 + evil * 5)
        answers, closed = await asyncio.to_thread(_drain, sock, 10)
    assert closed and answers.count(b"HTTP/1.1 200 ") == 65, answers.count(b"HTTP/1.1 200 ")
    assert b"x-evil" not in answers.lower() and b'"evil":["1"]' not in answers
    assert answers.count(b'{"n":1,"evil":[]}') == 65, answers[-300:]


async def test_a_client_over_the_cap_that_reads_late_still_gets_its_answers(port: int) -> None:
    """Found in review: with more than the 1 MiB read past the cap left unread, closing made the
    kernel reset the connection, which threw away the answers the client had not read yet (it
    got 9 of 65). Now the answers end with a half-close, and the rest is drained."""
    with _not_reading(port) as sock:
        sender = threading.Thread(target=_send_quietly, args=(sock, _post(0) * 20_000))  # 1.16 MB
        sender.start()
        await asyncio.sleep(0.5)
        answers, closed = await asyncio.to_thread(_drain, sock, 10)
        sender.join(10)
    assert closed and answers.count(b"HTTP/1.1 200 ") == 65, answers.count(b"HTTP/1.1 200 ")
    assert answers.count(b"connection: close") == 1


@pytest.mark.parametrize("break_s", [0.0, 1.5], ids=["steady", "with-a-break"])
async def test_the_linger_lasts_while_the_client_reads_its_answers(break_s: float) -> None:
    """Found in review: the linger counted from the half-close, so a client still reading its
    answers (and still sending) when it ran out was reset, which threw away what the kernel
    still held for it; then, counted from its last progress, a break in reading longer than the
    linger (shorter than the write-stall limit) did the same."""
    async with _own_server(linger_s=0.5, write_stall_s=5.0) as port:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)  # the rest waits on our side
            sock.connect(("127.0.0.1", port))
            small = b"GET /big/?kb=1 HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
            last = b"GET /big/?kb=4096&whole HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
            # 65 answered, the last (4 MiB, written at once) with connection: close.
            sock.sendall(small * 64 + last + small)
            sender = threading.Thread(target=_keep_sending, args=(sock, 2.5))
            sender.start()
            answer, closed = await asyncio.to_thread(
                _read_slowly, sock, 32 << 10, 0.01, break_at=1 << 20, break_s=break_s
            )  # about 1.5 s, and the break
            sender.join(10)
    assert answer.count(b"HTTP/1.1 200 ") == 65, answer.count(b"HTTP/1.1 200 ")
    last_body = answer.rpartition(b"HTTP/1.1 200 ")[2].partition(b"\r\n\r\n")[2]
    assert closed and len(last_body) == 4 << 20, (closed, len(last_body))


def _keep_sending(sock: socket.socket, seconds: float) -> None:
    """Requests (past the cap: read and dropped), one every 10 ms."""
    deadline = time.monotonic() + seconds
    with contextlib.suppress(OSError):
        while time.monotonic() < deadline:
            sock.sendall(_post(0))
            time.sleep(0.01)


async def test_a_client_that_resets_before_the_half_close_is_no_error(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Found in review: reading was paused (past the cap), so nothing noticed the reset, and
    the half-close after an answer whose last write is empty raised into the app (an ERROR)."""
    hello = b"GET /hello-later/ HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
    sock = socket.create_connection(("127.0.0.1", port))
    sender = threading.Thread(target=_send_quietly, args=(sock, _post(0) * 64 + hello + _post(0) * 35_000))
    sender.start()
    await asyncio.sleep(0.3)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # a reset
    sender.join(10)
    await asyncio.sleep(1.5)  # the answer's last write, then the half-close
    assert not [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


async def test_a_stopping_server_does_not_linger(caplog: pytest.LogCaptureFixture) -> None:
    """Found in review: a server stopped while the last answer over the cap was running began
    the 5 s linger when that answer was done, and uvicorn's 2 s graceful stop timed out (an
    ERROR, and the connection outlived `stop`)."""
    server = HttpServer(_app(), "127.0.0.1", 0)
    port = await server.start()
    slow = b"POST /slow?s=1 HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_post(0) * 64 + slow + _post(0) * 10)
        await asyncio.sleep(0.3)
        assert server._server is not None
        state = server._server.server_state
        await server.stop()
        assert not state.connections
    assert not [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


async def test_a_stopping_server_drops_a_client_that_is_not_taking_its_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Found in review: the stop waited for the client to take the rest of its answer, and
    uvicorn gave up after 2 s with an ERROR, leaving the connection open until the write-stall
    limit (30 s) dropped it."""
    server = HttpServer(_app(), "127.0.0.1", 0)
    port = await server.start()
    with _not_reading(port) as sock:
        sock.sendall(b"GET /big/?kb=8192&whole HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        await asyncio.sleep(0.3)
        assert server._server is not None
        state = server._server.server_state
        await server.stop()
        assert not state.connections
    assert not [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(data)


async def test_what_comes_after_the_pipelining_cap_is_read_only_so_far(port: int) -> None:
    """Found in review: past the cap, everything the client sent was read and dropped while the
    last request queued ran (a tool call may run an hour), at whatever rate the client sent it."""
    slow_last = b"POST /call HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 0\r\n\r\n"
    with _not_reading(port) as sock:
        sock.sendall(_post(0) * 64 + slow_last + _post(0))
        await asyncio.sleep(0.5)  # or the first bytes after would be parsed with the last request (400)
        sent = await asyncio.to_thread(_send_for, sock, 2.5)
    # Before: 6.7 GB in 2.5 s on the test VM. Now 1 MiB, plus what the sockets' buffers hold.
    assert sent < 32 << 20, sent


def _send_for(sock: socket.socket, seconds: float) -> int:
    """Bytes the peer accepts from us in `seconds`."""
    junk, sent = b"x" * (1 << 20), 0
    sock.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            sent += sock.send(junk)
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            break
    return sent


async def test_the_request_being_answered_learns_that_the_client_left_with_one_queued(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Found in review: with a request queued behind it, the one being answered never heard
    that the client had gone (uvicorn tells the last request parsed), so a tool call ran on for
    nobody and then wrote to the closed transport (an ERROR and a traceback on uvloop)."""
    STREAM_OUTCOMES.clear()
    STREAM_DONE[:] = [asyncio.Event()]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /stream/ HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 0\r\n\r\n" + _post(0))
    assert b"200" in await reader.read(100)
    writer.transport.abort()  # reading is paused behind the queued request: the writes find out
    started = time.monotonic()
    await asyncio.wait_for(STREAM_DONE[0].wait(), 15)
    assert STREAM_OUTCOMES == ["saw the client leave"]
    assert time.monotonic() - started < 9  # at its next write; running to its end takes 10 s
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_a_body_the_app_has_not_asked_for_yet_does_not_run_out_of_time(port: int) -> None:
    """Found in review: past 64 KiB uvicorn stops reading until the app asks for the body, but
    the body deadline kept counting, and closed the connection under the call."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = b"x" * 200_000
    writer.write(
        f"POST /slow HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200 "), head
    writer.close()


async def test_clients_that_keep_up_are_served_and_kept_alive(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(2):  # the same connection twice
        writer.write(_post(10) + b"01234")
        await writer.drain()
        await asyncio.sleep(0.5)  # half the body now, the rest within the deadline
        writer.write(b"56789")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 "), head
        length = int(
            next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))[15:]
        )
        assert await reader.readexactly(length) == b'{"received":10}'
    writer.close()


async def test_a_body_sent_after_100_continue_has_its_time_from_then(port: int) -> None:
    """The client waits for `100 Continue`, sent when the app asks for the body. The body's
    deadline (1 s here) counted from the headers, so an app that asked after 2 s found the
    connection closed; now it counts from the `100 Continue`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /late HTTP/1.1\r\nhost: 127.0.0.1\r\nexpect: 100-continue\r\ncontent-length: 10\r\n\r\n"
    )
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim
    writer.write(b"0123456789")
    await writer.drain()
    answer = await _read_until(reader, lambda got: got.endswith(b"}"), 10)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"received":10}'), answer
    writer.close()


async def test_a_body_that_stops_coming_after_100_continue_is_still_cut_off(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /late HTTP/1.1\r\nhost: 127.0.0.1\r\nexpect: 100-continue\r\ncontent-length: 10\r\n\r\n"
    )
    await writer.drain()
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"01234")
    await writer.drain()
    answer, waited = await _until_closed(reader, 20)
    assert answer == b"" and waited < 12, (answer, waited)  # 1 s grace + 10 bytes at 64 KiB/s
    writer.close()


async def test_a_client_that_reads_none_of_its_answer_is_dropped(port: int) -> None:
    """Found in review: a client that stopped reading held its connection, the app's task and
    our write buffer for ever (the app waits to drain, and asyncio's close waits for the buffer
    to empty). Now writing that stands still for `write_stall_s` (1 s here) drops it."""
    with _not_reading(port) as sock:
        sock.sendall(b"GET /big/?kb=65536 HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        await asyncio.sleep(4)  # the kernel's buffers fill within milliseconds; then 1 s of stall
        answer, closed = await asyncio.to_thread(_drain, sock, 10)
    # Before, reading now let the server go on: all 64 MiB came, and the connection stayed open.
    assert closed and len(answer) < 64 << 20, (closed, len(answer))


async def test_a_client_that_reads_slowly_but_steadily_gets_everything() -> None:
    """Found in review: the stall clock ran from the pause until our buffer was nearly empty, so
    an answer written at once (JSONResponse, up to 16 MiB) that took the client longer than the
    limit to read was cut, however steadily it read. Now only a client taking nothing is."""
    async with _own_server(write_stall_s=1.0, sndbuf=4096) as port:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /big/?kb=2048&whole HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
            answer, closed = await asyncio.to_thread(_read_slowly, sock, 16 << 10, 0.025)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert closed and head.startswith(b"HTTP/1.1 200 ") and len(body) == 2 << 20, (head, len(body))


def _read_slowly(
    sock: socket.socket, size: int, pause_s: float, *, break_at: int = 0, break_s: float = 0.0
) -> tuple[bytes, bool]:
    """Reads of at most `size` bytes, `pause_s` apart (16 KiB every 25 ms: 3.2 s for 2 MiB),
    with one break of `break_s` once `break_at` bytes are in, until the server closes (True)
    or resets (False)."""
    got = bytearray()
    sock.settimeout(10)
    while True:
        time.sleep(pause_s)
        if break_at and len(got) >= break_at:
            time.sleep(break_s)
            break_at = 0
        try:
            chunk = sock.recv(size)
        except ConnectionResetError:
            return bytes(got), False
        if not chunk:
            return bytes(got), True
        got += chunk


async def test_a_client_that_pauses_reading_for_less_than_the_limit_gets_everything() -> None:
    async with _own_server(write_stall_s=5.0) as port:
        with _not_reading(port) as sock:
            sock.sendall(b"GET /big/?kb=16384 HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
            await asyncio.sleep(0.5)
            answer, closed = await asyncio.to_thread(_drain, sock, 30)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert closed and head.startswith(b"HTTP/1.1 200 ") and len(body) == 16 << 20, (head, len(body))


async def test_a_connection_closed_with_bytes_its_client_never_reads_is_dropped() -> None:
    """asyncio's `close` waits for the write buffer to empty: an answer that ends with
    `connection: close` and sits, under the high-water mark, behind a full socket buffer held
    the socket for as long as the client read nothing."""
    async with _own_server(write_stall_s=1.0, sndbuf=4096) as port:
        with _not_reading(port) as sock:
            # 48 KiB: a few KiB fit the two sockets' buffers, the rest waits in ours (under 64 KiB).
            sock.sendall(b"GET /big/?kb=48 HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
            await asyncio.sleep(4)
            answer, closed = await asyncio.to_thread(_drain, sock, 10)
    # Before, reading now let the close finish: all 48 KiB came.
    assert closed and len(answer) < 48 << 10, (closed, len(answer))


def test_a_hub_applies_the_deadlines(open_hub: object) -> None:
    """The hub's bridge serves through the same protocol (a connection that sends a partial
    request line is answered 408 within the default 10 s)."""
    from urllib.parse import urlsplit

    url = urlsplit(open_hub.mcp_url)  # type: ignore[attr-defined]
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(b"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\n")
        started = time.monotonic()
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert 8 < time.monotonic() - started < 20

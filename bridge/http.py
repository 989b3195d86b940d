"""Serving an ASGI app (the bridge) with uvicorn on a socket we bind ourselves, so port 0 works,
with deadlines for slow clients that uvicorn does not have."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import resource
import socket
import struct
import termios
from asyncio import TimerHandle
from collections.abc import Callable
from typing import Any, ClassVar

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .options import MAX_BODY_BYTES

__all__ = ["HttpServer"]

logger = logging.getLogger(__name__)

HEADER_TIMEOUT_S = 10.0
"""A request's line and headers must arrive within this long of its first byte."""
BODY_GRACE_S = 30.0
MIN_BODY_RATE = 64 * 1024
"""A body must arrive within BODY_GRACE_S plus its length at this many bytes per second."""
WRITE_STALL_S = 30.0
"""Writing may stand still this long (the client takes none of the bytes waiting for it while
our buffer is full, or while the connection closes with bytes left); then it is dropped."""
STOP_GRACE_S = 1.5
"""When the server stops, a connection whose client has not taken all of its answer by then is
dropped (uvicorn gives its connections 2 s)."""
MAX_PIPELINED = 64
"""Requests one connection may have queued behind the one being answered; the last of them is
answered with `connection: close`, and what the client sent after it is not served."""
MAX_DROPPED_BYTES = 1 << 20
"""What is read and dropped after MAX_PIPELINED (so that a client that leaves is noticed) before
reading stops until the answers are out."""
LINGER_S = 5.0
LINGER_BYTES = 16 << 20
"""Closing a connection with input left unread makes the kernel reset it, which throws away
answers the client has not read yet. Past MAX_PIPELINED the answers end with a half-close, and
the connection is closed when the client closes its side, once it has taken all of them and
LINGER_S have passed since the half-close, once LINGER_BYTES more have been read and dropped, or
when the server stops; a client that stops taking its answers is dropped after WRITE_STALL_S."""
MAX_CONNECTIONS = 1024
"""Open connections at most, and at most a quarter of the process's open-file limit (see
`default_max_connections`): past it a new connection gets 503 and is closed at once, so that
clients that hold connections cannot take the file descriptors the hub needs (commands' pipes,
gRPC, the audit log) nor the room for a load balancer's health check."""
_BUSY_BODY = b"the server has too many open connections; try again later"
_BUSY_503 = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nretry-after: 1\r\nconnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)
_TIMEOUT_BODY = b"the request's headers did not arrive in time"
_TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


def default_max_connections() -> int:
    """MAX_CONNECTIONS, or a quarter of the open-file limit when that is lower: the rest is for
    everything else the process opens."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, soft // 4))


class _PipelineFlow(FlowControl):
    """uvicorn's flow control, except that reading stays paused while a request is queued:
    uvicorn resumes it whenever an answer completes or the app asks for its body, so a client
    that pipelines without reading its answers had every byte it sent parsed and queued."""

    def __init__(self, transport: asyncio.Transport, protocol: _DeadlineProtocol) -> None:
        super().__init__(transport)
        self._protocol = protocol

    def resume_reading(self) -> None:
        self._protocol._asked_for_body()  # uvicorn resumes reading when the app asks for the body
        if not self._protocol.pipeline and self._protocol._dropped_bytes <= MAX_DROPPED_BYTES:
            super().resume_reading()


class _CloseWatch:
    """The connection's transport as uvicorn sees it, telling the protocol when it is closed:
    asyncio's `close` waits for the write buffer to empty, and a client that reads nothing never
    lets it, so a closed connection could hold its socket for ever."""

    def __init__(self, transport: asyncio.Transport, protocol: _DeadlineProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self.write = transport.write  # the hot ones without __getattr__
        self.is_closing: Callable[[], bool] = transport.is_closing

    def close(self) -> None:
        if self._protocol._linger():
            self.is_closing = lambda: True  # to uvicorn, as good as closed
            return
        self._transport.close()
        self._protocol._closed()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _DeadlineProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol, with deadlines on the client's side of a request.

    uvicorn closes a connection idle between requests, but not one that never sends a request,
    nor one that sends its headers or its body a byte at a time (slowloris): each such
    connection held a file descriptor, and a task once its headers were in, for ever. Now a
    connection that sends nothing is closed after uvicorn's keep-alive timeout; headers get
    `header_timeout_s` from the first byte after the last request (then 408); a body gets
    `body_grace_s` plus its length, counted up to `max_body_bytes`, at `MIN_BODY_RATE` from
    the end of its headers (after `Expect: 100-continue`, from our `100 Continue`), or for a
    pipelined request from the start of its turn (then the connection is closed, which the app
    sees as a client that left). The clocks stop counting while the server itself has stopped
    reading. A connection may queue `MAX_PIPELINED` requests behind the one being answered
    (reading stays paused while any is queued).

    On the way out, a client that stops reading its answers stops the app at its next write, and
    the connection (a task, a socket, our buffer) would wait for it for ever; one closed with
    bytes it has not read keeps its socket. While writing waits on the client (paused at the
    buffer's high-water mark, or closing with bytes left), the bytes not yet taken (our buffer
    and the kernel's send queue) are counted every `write_stall_s`: when they have not gone
    down, the connection is aborted and the app sees a client that left. A client that reads,
    however slowly, keeps its connection (as nginx's `send_timeout`).
    """

    header_timeout_s: ClassVar[float] = HEADER_TIMEOUT_S
    body_grace_s: ClassVar[float] = BODY_GRACE_S
    write_stall_s: ClassVar[float] = WRITE_STALL_S
    linger_s: ClassVar[float] = LINGER_S
    max_body_bytes: ClassVar[int] = MAX_BODY_BYTES
    max_connections: ClassVar[int] = MAX_CONNECTIONS
    refused_logged_at: ClassVar[float] = -1e9
    """When a refusal for too many connections was last logged (one line a minute at most)."""

    _deadline: TimerHandle | None = None
    _awaiting = "headers"
    """What the armed deadline waits for: "headers" or "body"."""
    _headers_pending = False
    """A request has begun and its headers are not all in."""
    _queued_body_s: dict[int, float] | None = None
    """Body deadlines of pipelined requests waiting their turn (by id of their cycle)."""

    _dropped = False
    """MAX_PIPELINED requests are queued: what the client sent after them is not served."""
    _dropped_bytes = 0
    _lingering = False
    _linger_timer: TimerHandle | None = None
    _linger_from = 0
    """`_dropped_bytes` when the linger began."""
    _bad_request: str | None = None
    """Unparsable bytes came after requests still to be answered: the 400 that follows them."""
    _stopping = False
    _lost = False
    _running: Any = None
    """The request whose app task was started last (uvicorn's `cycle` is the last one parsed)."""
    _after_continue: tuple[Any, float] | None = None
    """A body deadline that starts when its request's `100 Continue` is sent (_arm_body)."""
    _stall: TimerHandle | None = None
    """Armed while writing waits on the client (see the class's docstring)."""
    _untaken = 0
    """Bytes the client had not taken when `_stall` was armed."""
    _raw: asyncio.Transport | None = None
    _refused = False
    """Over `max_connections`: answered 503 and closed, never served."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            self._refuse(transport)
            return
        super().connection_made(transport)
        self._raw = transport
        self.transport = _CloseWatch(transport, self)  # type: ignore[assignment]
        self.flow = _PipelineFlow(transport, self)
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def _refuse(self, transport: asyncio.Transport) -> None:
        """503 and close, before anything is read: the answer fits the socket's empty send buffer,
        so the descriptor is given back at once."""
        self._refused = True
        transport.write(_BUSY_503)
        transport.close()
        now = self.loop.time()
        if now - self.refused_logged_at >= 60:
            type(self).refused_logged_at = now
            logger.warning(
                "HTTP: %d connections are open, the most allowed; new ones get 503 until some close "
                "(this is logged once a minute)",
                len(self.connections),
            )

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._disarm()
        # uvicorn tells only the last request parsed that the client left. With one queued that
        # is not the request being answered, which ran on for nobody (a tool call not cancelled)
        # and then wrote to the closed transport (an ERROR with a traceback, on uvloop).
        for cycle in (self._running, *(queued for queued, _ in self.pipeline)):
            if cycle is not None and cycle is not self.cycle and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        super().connection_lost(exc)
        self._lost = True
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        if self._stall is not None:  # after uvicorn's own close of the transport, which calls _closed
            self._stall.cancel()
            self._stall = None

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "?"

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._dropped:  # past MAX_PIPELINED: nothing more is parsed on this connection
            self._dropped_bytes += len(data)
            if self._lingering:
                if self._dropped_bytes - self._linger_from > LINGER_BYTES and self._raw is not None:
                    self._raw.abort()
            elif self._dropped_bytes > MAX_DROPPED_BYTES:
                # The last request queued may take an hour: the client must not stream into
                # it for as long. A client that leaves now goes unnoticed until it is answered.
                self.flow.pause_reading()
            return
        # Bytes between requests (httptools skips a bare CRLF without starting a message)
        # stop uvicorn's keep-alive timer: the header deadline takes over, or a connection
        # fed "\r\n" once would be held for ever.
        if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
            self._arm(self.header_timeout_s, "headers")
        super().data_received(data)

    def on_url(self, url: bytes) -> None:
        if not self._dropped:  # or the URL would be added to the last request still served
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._dropped:  # or the headers would be added to the last request still served
            super().on_header(name, value)

    def on_message_begin(self) -> None:
        if self._dropped:
            return
        if len(self.pipeline) >= MAX_PIPELINED:
            # The last one queued is answered with `connection: close`; the client may send the
            # rest again on a new connection. Until then, what arrives is read (so that a client
            # that leaves is noticed) and dropped unparsed (data_received); only what came in
            # the same read as this request is parsed, and at most refused (400).
            logger.debug(
                "connection from %s: over %d requests queued; closing after them", self._peer(), MAX_PIPELINED
            )
            self.pipeline[0][0].keep_alive = False
            self._dropped = True
            return
        super().on_message_begin()
        # A keep-alive timer left from the request before (restarted in on_message_complete) must
        # not fire under this one: its own deadlines take over.
        self._unset_keepalive_if_required()
        self._headers_pending = True
        if self.pipeline:
            # A request is queued, so reading is paused: the rest of these headers cannot come
            # until it has its turn, and their deadline starts then (_start_asgi_task). Armed
            # now, it would close the connection under the response in progress.
            self._disarm()
        else:
            self._arm(self.header_timeout_s, "headers")

    def on_headers_complete(self) -> None:
        if self._dropped:
            return
        self._headers_pending = False
        super().on_headers_complete()
        seconds = self._body_deadline_s()
        if any(cycle is self.cycle for cycle, _ in self.pipeline):
            # Queued behind a request still being answered, with reading paused: its body
            # cannot come until its turn, so its deadline starts then (_start_asgi_task).
            self._disarm()
            if seconds:
                self._queued_body_s = self._queued_body_s or {}
                self._queued_body_s[id(self.cycle)] = seconds
        elif seconds:
            self._arm_body(self.cycle, seconds)
        else:
            self._disarm()

    def _arm_body(self, cycle: Any, seconds: float) -> None:
        if cycle.waiting_for_100_continue:
            # The client waits for our `100 Continue`, which uvicorn sends when the app first
            # asks for the body: the body's clock starts then (_asked_for_body), or an app that
            # took its time before reading would find the connection closed under it.
            self._disarm()
            self._after_continue = (cycle, seconds)
        else:
            self._arm(seconds, "body")

    def _asked_for_body(self) -> None:
        if self._after_continue is not None:
            cycle, seconds = self._after_continue
            if not cycle.waiting_for_100_continue:  # sent (or answered without asking)
                self._after_continue = None
                if cycle is self._running and cycle.more_body and not cycle.response_complete:
                    self._arm(seconds, "body")

    def _body_deadline_s(self) -> float:
        """`body_grace_s` plus the body's length at MIN_BODY_RATE; the length counts up to
        `max_body_bytes` only (a longer body is refused, and a claimed one must not buy time)."""
        length = next((v for k, v in self.headers if k == b"content-length"), None)
        chunked = any(k == b"transfer-encoding" for k, _ in self.headers)
        if length is not None and length.strip().isdigit() and not chunked:
            size = min(int(length), self.max_body_bytes)
        elif chunked:
            size = self.max_body_bytes
        else:
            size = 0
        return self.body_grace_s + size / MIN_BODY_RATE if size else 0.0

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        seconds = self._queued_body_s.pop(id(cycle), None) if self._queued_body_s else None
        if seconds is not None and cycle.more_body:
            self._arm_body(cycle, seconds)
        elif self._headers_pending:
            self._arm(self.header_timeout_s, "headers")  # a later request's, deferred above
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        cycle = self.cycle
        if (
            cycle is not None
            and cycle.more_body
            and cycle.response_complete
            and not self.transport.is_closing()
        ):
            self._answered_early()
        # uvicorn resumes reading before it takes the next queued request; _PipelineFlow holds
        # that while one is queued, so reading resumes here once none is.
        if not self.pipeline and not self._dropped and not self.transport.is_closing():
            self.flow.resume_reading()
        answered = not self.pipeline and (self._running is None or self._running.response_complete)
        if self._bad_request is not None and answered and not self.transport.is_closing():
            message, self._bad_request = self._bad_request, None
            super().send_400_response(message)

    def _answered_early(self) -> None:
        """Answered before its body came (401, 413, ...): the rest of the body gets `linger_s` at
        most, or a client that claimed a large body and sends none of it would hold the connection
        for as long as the body's own deadline."""
        self._after_continue = None  # a client never sent `100 Continue` sends no body either
        left = self._deadline.when() - self.loop.time() if self._deadline is not None else self.linger_s
        self._arm(max(0.0, min(left, self.linger_s)), "body")

    def send_400_response(self, msg: str) -> None:
        """uvicorn answers bytes it cannot parse with 400 and closes at once. When they follow
        requests read in full and not yet answered (pipelined), closing would cancel those and
        lose their answers: they are answered first, in order, and the 400 after them."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete or cycle.more_body:
            super().send_400_response(msg)  # nothing waits, or the bad bytes are its own body's
            return
        self._dropped = True  # nothing after the bad bytes is parsed (see data_received)
        self._bad_request = msg
        self._headers_pending = False  # or the next queued request's turn would re-arm it
        # The bad bytes began a request whose headers' deadline is running: that request is
        # answered (400) already, and the deadline must not close the connection under the
        # ones still being answered.
        self._disarm()
        self.flow.pause_reading()

    def on_body(self, body: bytes) -> None:
        if not self._dropped:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._dropped:
            return
        super().on_message_complete()
        self._disarm()
        if self.cycle.response_complete and not self.pipeline and self.timeout_keep_alive_task is None:
            # Answered before its body came (401, 405, 413): the body's bytes stopped uvicorn's
            # keep-alive timer, and nothing else would close the idle connection.
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def pause_writing(self) -> None:
        super().pause_writing()
        self._watch_writes()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stall is not None and not self.transport.is_closing():
            self._stall.cancel()
            self._stall = None

    def _linger(self) -> bool:
        """Instead of closing, half-close and drain (see LINGER_S), if input may be left unread."""
        raw = self._raw
        if not self._dropped or self._lingering or self._stopping or raw is None or raw.is_closing():
            return False
        if not raw.can_write_eof():
            return False
        if self.pipeline or (self.cycle is not None and not self.cycle.response_complete):
            return False  # not the end of the last answer (a 400 for what followed it): answers may follow
        self._lingering = True
        self._linger_from = self._dropped_bytes
        try:
            raw.write_eof()  # once what is buffered is sent
        except OSError:  # the client reset the connection while nothing was reading
            raw.abort()
            return True
        self.flow.read_paused = False
        raw.resume_reading()
        self._linger_timer = self.loop.call_later(self.linger_s, self._linger_over)
        if self._bytes_not_taken():
            self._watch_writes()  # a client that stops taking its answers is dropped as ever
        return True

    def _linger_over(self) -> None:
        """`linger_s` since the half-close: the end, once the client has taken every byte (until
        then it may read as slowly as `write_stall_s` allows)."""
        self._linger_timer = None
        if self._bytes_not_taken():
            # Armed at the half-close only if bytes were waiting then; uvloop sends the FIN
            # later, and a FIN held back by a closed window counts too.
            self._watch_writes()
            self._linger_timer = self.loop.call_later(self.linger_s, self._linger_over)
            return
        assert self._raw is not None
        self._raw.close()

    def shutdown(self) -> None:
        self._stopping = True  # the server is stopping: no lingering from now on
        super().shutdown()
        # uvicorn waits 2 s for its connections, then logs an ERROR and leaves them open: one
        # whose client is not taking its answer would hold the stop for up to `write_stall_s`.
        self.loop.call_later(STOP_GRACE_S, self._stop_now)

    def _stop_now(self) -> None:
        if self._raw is not None and not self._lost and self._bytes_not_taken():
            logger.debug("dropped a connection from %s: the server is stopping", self._peer())
            self._raw.abort()

    def _closed(self) -> None:
        if self._raw is not None and self._raw.get_write_buffer_size():
            self._watch_writes()

    def _watch_writes(self) -> None:
        if self._stall is None:
            self._untaken = self._bytes_not_taken()
            self._stall = self.loop.call_later(self.write_stall_s, self._stalled)

    def _bytes_not_taken(self) -> int:
        """Our buffer, plus the kernel's send queue (sent and not acknowledged, or not sent)."""
        assert self._raw is not None
        queued = 0
        sock = self._raw.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, ValueError):
                queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        return self._raw.get_write_buffer_size() + queued

    def _stalled(self) -> None:
        self._stall = None
        left = self._bytes_not_taken()
        if left == 0:
            return  # all taken (a closing transport is about to report it lost)
        if left < self._untaken:  # the client took some: it is reading, however slowly
            self._watch_writes()
            return
        logger.debug(  # one line per connection, as for slow requests
            "dropped a connection from %s: it took none of its answer for %.0f s",
            self._peer(),
            self.write_stall_s,
        )
        assert self._raw is not None
        self._raw.abort()

    def _arm(self, seconds: float, awaiting: str) -> None:
        self._disarm()
        self._awaiting = awaiting
        self._deadline = self.loop.call_later(seconds, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:
            # The server stopped reading (the app has not asked for the body yet, or a request
            # is queued): what did not come could not. The clock starts again.
            self._arm(
                self.header_timeout_s if self._awaiting == "headers" else self.body_grace_s, self._awaiting
            )
            return
        logger.debug(  # one line per connection: a slowloris flood must not become a log flood
            "closed a connection from %s: its request's %s did not arrive in time",
            self._peer(),
            self._awaiting,
        )
        answering = self.cycle is not None and not self.cycle.response_complete
        if self._awaiting == "headers" and not answering:  # no task has the request: answering is ours
            self.transport.write(_TIMEOUT_408)
        self.transport.close()


class HttpServer:
    """One uvicorn server on `host:port` (port 0: any free port), started and stopped by the caller."""

    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        *,
        max_body_bytes: int = MAX_BODY_BYTES,
        header_timeout_s: float = HEADER_TIMEOUT_S,
        body_grace_s: float = BODY_GRACE_S,
        write_stall_s: float = WRITE_STALL_S,
        linger_s: float = LINGER_S,
        max_connections: int | None = None,
    ) -> None:
        """`max_connections`: open connections at most; default `default_max_connections()`."""
        self._app = app
        limits: dict[str, Any] = {
            "max_body_bytes": max_body_bytes,
            "header_timeout_s": header_timeout_s,
            "body_grace_s": body_grace_s,
            "write_stall_s": write_stall_s,
            "linger_s": linger_s,
            "max_connections": max_connections or default_max_connections(),
        }
        self._protocol = type("DeadlineProtocol", (_DeadlineProtocol,), limits)
        self._host = host
        self._port = port
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None
        self.port = 0

    def bind(self) -> int:
        """Take the port now (a busy one fails here, before anything slow has started)."""
        if self._socket is not None:
            return self.port
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
        except OSError as exc:
            sock.close()
            raise OSError(f"cannot listen for HTTP on {self._host}:{self._port}: {exc.strerror}") from exc
        sock.listen(1024)
        sock.setblocking(False)
        self._socket = sock
        self.port = sock.getsockname()[1]
        return self.port

    async def start(self) -> int:
        self.bind()
        sock = self._socket
        assert sock is not None
        config = uvicorn.Config(
            self._app,
            lifespan="on",
            http=self._protocol,
            log_config=None,
            access_log=False,
            ws="none",
            timeout_graceful_shutdown=2,
            server_header=False,
        )
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self._server = server
        self._task = asyncio.create_task(server.main_loop(), name="mcphub-http")
        return self.port

    async def stop(self) -> None:
        """Stop accepting, let the app end what it holds open (`BridgeApp.aclose`: the MCP sessions
        and their GET streams), then wait up to 2 s for the connections left and stop."""
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        await self._task
        aclose = getattr(self._app, "aclose", None)
        if aclose is not None:
            await aclose()
        await self._server.shutdown(sockets=[self._socket] if self._socket else None)
        self._server = None

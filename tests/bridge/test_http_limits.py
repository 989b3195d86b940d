"""What clients can hold of the hub's HTTP and gRPC servers, and a client that leaves.

Found by a tester hunting resource exhaustion: unauthenticated clients could open as many
connections as they liked, each held for a body's deadline (about 90 s) after its request was
answered 401, until the hub ran out of file descriptors."""

from __future__ import annotations

import asyncio
import contextlib
import re
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import orjson
import pytest
from grpc_health.v1 import health_pb2
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import Receive, Scope, Send

from bridge.http import HttpServer
from tests.bridge.test_http_deadlines import _app, _own_server, _post
from tests.support.hub import RunningHub, hub_command, start_hub

pytestmark = pytest.mark.anyio

OUTCOMES: list[str] = []


async def _patient(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers after 3 s unless told first that the client left (as the bridge's express lane
    watches for it); appends which to OUTCOMES."""
    await receive()  # the (empty) body
    try:
        async with asyncio.timeout(3):
            message = await receive()
        OUTCOMES.append("saw the client leave" if message["type"] == "http.disconnect" else "other")
        return
    except TimeoutError:
        OUTCOMES.append("ran to the end")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
    await send({"type": "http.response.body", "body": b"done"})


@contextlib.asynccontextmanager
async def _patient_server() -> Any:
    server = HttpServer(Starlette(routes=[Mount("/patient", app=_patient), *_app().routes]), "127.0.0.1", 0)
    try:
        yield await server.start()
    finally:
        await server.stop()


def _read_all(sock: socket.socket, limit: float) -> bytes:
    """What the server sends until it closes (a read waiting over `limit` s fails the test)."""
    sock.settimeout(limit)
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


def _statuses(answers: bytes) -> list[bytes]:
    return re.findall(rb"HTTP/1\.1 (\d{3}) ", answers)


async def test_connections_over_the_limit_get_503_and_are_closed() -> None:
    async with _own_server(max_connections=3) as port:
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        try:
            for sock in held:  # a request begun, so that each is surely counted before the next
                sock.sendall(b"POST /mcp HTTP/1.1\r\n")
            await asyncio.sleep(0.2)
            with socket.create_connection(("127.0.0.1", port)) as extra:
                answer = await asyncio.to_thread(_read_all, extra, 10)
            assert answer.startswith(b"HTTP/1.1 503 ") and b"too many open connections" in answer, answer
            held.pop().close()

            def served() -> bytes:
                with socket.create_connection(("127.0.0.1", port)) as sock:
                    sock.sendall(_post(2) + b"{}")
                    sock.settimeout(10)
                    return sock.recv(4096)

            deadline = time.monotonic() + 10
            while not (answer := await asyncio.to_thread(served)).startswith(b"HTTP/1.1 200 "):
                assert time.monotonic() < deadline, answer  # a freed place is given again
                await asyncio.sleep(0.1)
        finally:
            for sock in held:
                sock.close()


async def test_a_request_answered_before_its_body_came_does_not_hold_the_connection() -> None:
    """Answered early (404 here, 401 or 413 in the hub), a request whose client sends a byte of
    its claimed body now and then held the connection for the body's whole deadline (30 s plus
    the body at 64 KiB/s); now the rest of the body gets `linger_s` (1 s here)."""
    async with _own_server(body_grace_s=30.0, linger_s=1.0) as port:

        def early() -> tuple[bytes, float]:
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(b"POST /nowhere HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 60000\r\n\r\nx")
                sock.settimeout(10)
                head = sock.recv(4096)
                sock.sendall(b"x")  # more of the body: it stopped the keep-alive timer
                started = time.monotonic()
                return head + _read_all(sock, 20), time.monotonic() - started

        answer, waited = await asyncio.to_thread(early)
    assert _statuses(answer) in ([b"404"], [b"405"]), answer
    assert waited < 15, waited  # the body's own deadline: 30 s and more


@pytest.mark.parametrize("how", ["close", "half-close"])
async def test_a_client_that_leaves_has_its_request_cancelled_at_once(how: str) -> None:
    """The end of the client's side is the client leaving: a relay (docker-proxy, `ssh -L`,
    `kubectl port-forward`) half-closes the hub's side when its own client closes, and a hub that
    waited to answer a half-closed client ran such calls to the end for nobody."""
    async with _patient_server() as port:
        OUTCOMES.clear()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /patient/ HTTP/1.1\r\nhost: x\r\n\r\n")
            await asyncio.sleep(0.2)
            if how == "half-close":
                sock.shutdown(socket.SHUT_WR)
                await asyncio.sleep(0.5)  # well before the 3 s the request takes
                assert OUTCOMES == ["saw the client leave"], OUTCOMES
        deadline = time.monotonic() + 10
        while not OUTCOMES:
            assert time.monotonic() < deadline, "the request never ended"
            await asyncio.sleep(0.05)
        assert OUTCOMES == ["saw the client leave"]


def _hub_socket(hub: RunningHub) -> socket.socket:
    url = urlsplit(hub.mcp_url)  # type: ignore[arg-type]
    assert url.hostname is not None and url.port is not None
    return socket.create_connection((url.hostname, url.port), timeout=30)


def _mcp_post(body: dict[str, Any], headers: dict[str, str]) -> bytes:
    raw = orjson.dumps(body)
    head = "".join(f"{k}: {v}\r\n" for k, v in {**headers, "host": "127.0.0.1"}.items())
    return f"POST /mcp HTTP/1.1\r\n{head}content-length: {len(raw)}\r\n\r\n".encode() + raw


@pytest.fixture(scope="module")
def low_fd_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    """A hub with 512 open files at most: 128 HTTP connections (a quarter)."""
    hub = start_hub(
        tmp_path_factory.mktemp("low-fd-hub"),
        config={"packs": [{"name": "diagnostics"}]},
        module="tests.mcp_remote.tools.lowfiles_hub",
    )
    yield hub
    hub.stop()


def test_a_hub_bounds_its_connections_below_its_file_limit(low_fd_hub: RunningHub, tmp_path: Path) -> None:
    """The tester's case: 395 connections, each a request that never finishes, took a hub limited
    to 400 open files down (its health check and shell commands failed for want of descriptors)."""
    held: list[socket.socket] = []
    try:
        for _ in range(140):
            sock = _hub_socket(low_fd_hub)
            held.append(sock)
            sock.sendall(b"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 4000000\r\n\r\n{")
        time.sleep(1)  # for the answers (a refused connection is answered as it is accepted)
        readable = select.select(held, [], [], 0)[0]
        refused = [sock for sock in readable if sock.recv(4096).startswith(b"HTTP/1.1 503 ")]
        assert 8 <= len(refused) <= 140 - 120, len(refused)  # 128 at most were kept (a few close early)
        assert "new ones get 503" in low_fd_hub.log()
    finally:
        for sock in held:
            sock.close()
    with _hub_socket(low_fd_hub) as sock:  # what was held is given back
        deadline = time.monotonic() + 15
        while True:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            answer = sock.recv(4096)
            if answer.startswith(b"HTTP/1.1 200 "):
                break
            assert time.monotonic() < deadline, answer
            time.sleep(0.2)
            sock.close()
            sock = _hub_socket(low_fd_hub)


def test_a_hub_bounds_its_grpc_connections_below_its_file_limit(low_fd_hub: RunningHub) -> None:
    """The gRPC server has the same bound (a quarter of the open-file limit): past it a connection
    is closed as it is accepted, and a place is given again when one closes."""
    host, _, port = low_fd_hub.grpc.rpartition(":")
    held = [socket.create_connection((host, int(port)), timeout=10) for _ in range(140)]
    try:
        time.sleep(1)  # each is greeted (HTTP/2 settings) or closed as it is accepted
        readable = select.select(held, [], [], 0)[0]
        closed = [sock for sock in readable if sock.recv(4096) == b""]
        assert 8 <= len(closed) <= 140 - 120, len(closed)
        # The CLI does not tell its user to start a hub that is running, only full.
        said = subprocess.run(
            hub_command(
                "call", "echo", "--hub", low_fd_hub.grpc, "--args", '{"text": "x"}', "--timeout", "5"
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert said.returncode == 3, said.stderr
        assert "closed the connection before answering" in said.stderr and "start one" not in said.stderr
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 15
    with grpc.insecure_channel(low_fd_hub.grpc) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        while True:
            try:
                assert (
                    check(health_pb2.HealthCheckRequest(), timeout=5).status
                    == health_pb2.HealthCheckResponse.SERVING
                )
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline
                time.sleep(0.2)

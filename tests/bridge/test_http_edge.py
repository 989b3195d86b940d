"""Bad input at the bridge's HTTP edge gets a precise error, never a 5xx, and the hub keeps serving."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx2
import orjson
import pytest

from tests.bridge.test_session_door import open_session, works
from tests.bridge.test_stdio import INITIALIZE
from tests.conftest import TOKENS
from tests.support.hub import RunningHub

MODERN = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "edge-test", "version": "1"},
}


@pytest.fixture
def http(open_hub: RunningHub) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=open_hub.http_base, timeout=30) as client:
        yield client


def modern_headers(method: str, name: str | None = None) -> dict[str, str]:
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": MODERN,
        "mcp-method": method,
    }
    if name is not None:
        headers["mcp-name"] = name
    return headers


def call_body(name: str, arguments: Any, rpc_id: int = 1) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": rpc_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments, "_meta": META},
    }


def echo_still_works(http: httpx2.Client) -> None:
    response = http.post(
        "/mcp", json=call_body("echo", {"text": "alive"}), headers=modern_headers("tools/call", "echo")
    )
    assert response.status_code == 200, response.text
    assert response.json()["result"]["content"] == [{"type": "text", "text": "alive"}]


def test_a_well_formed_stateless_call_works(http: httpx2.Client) -> None:
    echo_still_works(http)


def test_malformed_json_is_a_parse_error(http: httpx2.Client) -> None:
    response = http.post(
        "/mcp", content=b'{"jsonrpc": "2.0", "id": 1, "method": ', headers=modern_headers("tools/list")
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == -32700
    echo_still_works(http)


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b"42",
        b'"text"',
        b'{"id": 1, "method": "tools/list"}',
        b'{"jsonrpc": "1.0", "id": 1, "method": "x"}',
    ],
)
def test_json_that_is_not_a_request_is_refused(http: httpx2.Client, body: bytes) -> None:
    response = http.post("/mcp", content=body, headers=modern_headers("tools/list"))
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["code"] in (-32600, -32700, -32602)


def test_an_invalid_cursor_is_invalid_params_naming_mcps_nextcursor(http: httpx2.Client) -> None:
    """The error named only gRPC's `next_cursor`, a field an MCP client never sees."""
    body = {"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {"cursor": "bad", "_meta": META}}
    response = http.post("/mcp", json=body, headers=modern_headers("tools/list"))
    error = response.json()["error"]
    assert error["code"] == -32602, response.text
    assert (
        "invalid cursor 'bad': pass the cursor the previous page gave (nextCursor of an MCP"
        in error["message"]
    )


def test_unknown_method(http: httpx2.Client) -> None:
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/destroy", "params": {"_meta": META}}
    response = http.post("/mcp", json=body, headers=modern_headers("tools/destroy"))
    assert response.status_code == 404
    assert response.json() == {"jsonrpc": "2.0", "id": 7, "error": response.json()["error"]}
    assert response.json()["error"]["code"] == -32601


@pytest.mark.parametrize("arguments", ["a string", 5, ["list"]])
def test_arguments_of_the_wrong_type_are_invalid_params(http: httpx2.Client, arguments: Any) -> None:
    response = http.post(
        "/mcp", json=call_body("echo", arguments), headers=modern_headers("tools/call", "echo")
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == -32602


def test_a_wrongly_typed_argument_is_a_tool_error(http: httpx2.Client) -> None:
    response = http.post(
        "/mcp", json=call_body("echo", {"text": ["x"]}), headers=modern_headers("tools/call", "echo")
    )
    assert response.status_code == 200
    result = response.json()["result"]
    assert result["isError"] is True
    assert "[\"x\"] is not of type 'string'" in result["content"][0]["text"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (b'{"text": "\\ud800"}', "surrogates not allowed"),
        (b'{"text": "x", "n": NaN}', "NaN, Infinity"),
        (b'{"text": 1e999}', "NaN, Infinity"),
        (b'{"text": "x", "d": ' + b"[" * 70 + b"]" * 70 + b"}", "nested more than 64 levels"),
        (b'{"text": "x", "d": ' + b"[" * 300 + b"]" * 300 + b"}", "nested more than 64 levels"),
        (b'{"text": "x", "d": ' + b"[" * 900 + b"]" * 900 + b"}", "nested more than 64 levels"),
        (b'{"text": "x", "n": 18446744073709551616}', "64-bit range"),
        (b'{"text": "x", "n": [-123456789012345678901234567890]}', "64-bit range"),
    ],
    ids=["surrogate", "nan", "inf", "depth-70", "depth-300", "depth-900", "2**64", "big-negative"],
)
def test_arguments_json_cannot_carry_on_are_invalid_params(
    http: httpx2.Client, arguments: bytes, message: str
) -> None:
    """Python's JSON parser, which the SDK uses, reads a lone surrogate, NaN and 1e999 (as inf).
    Sending them on failed with an internal error and a traceback (the surrogate), or turned
    them into null (NaN, inf)."""
    body = orjson.dumps(call_body("echo", None)).replace(b'"arguments":null', b'"arguments":' + arguments)
    response = http.post("/mcp", content=body, headers=modern_headers("tools/call", "echo"))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == -32602 and message in error["message"], error
    echo_still_works(http)


@pytest.mark.parametrize(
    ("meta", "names"),
    [
        (b'"dev.mcphub/approvalId": "\\ud800"', "approval id"),
        (
            b'"io.modelcontextprotocol/clientInfo": {"name": "c", "version": "1"}, "x": '
            + b"[" * 980
            + b"]" * 980,
            None,
        ),
    ],
    ids=["surrogate-in-approval-id", "deep-meta"],
)
def test_the_same_answer_on_both_paths_and_the_field_at_fault_named(
    http: httpx2.Client, meta: bytes, names: str | None
) -> None:
    """Deep `_meta` got a result through the express lane and -32700 from the SDK; a surrogate
    outside the arguments was blamed on the arguments."""
    body = orjson.dumps(call_body("echo", {"text": "x"}))
    body = body.replace(b'"_meta":{', b'"_meta":{' + meta + b",", 1)
    answers = []
    for chunked in (False, True):
        content = iter([body]) if chunked else body
        response = http.post("/mcp", content=content, headers=modern_headers("tools/call", "echo"))
        answers.append((response.status_code, response.json().get("error", {}).get("code")))
        if names is not None:
            assert f"cannot pass the {names} on" in response.json()["error"]["message"], response.text
    assert answers[0] == answers[1], answers


def test_unknown_tool_is_invalid_params(http: httpx2.Client) -> None:
    response = http.post("/mcp", json=call_body("nope", {}), headers=modern_headers("tools/call", "nope"))
    assert response.json()["error"] == {
        "code": -32602,
        "message": "unknown tool 'nope'; list the tools to see what exists",
    }
    assert response.status_code in (200, 400)


def test_oversized_bodies_are_refused_before_parsing(http: httpx2.Client) -> None:
    big = {"text": "x" * (5 * 1024 * 1024)}
    response = http.post("/mcp", json=call_body("echo", big), headers=modern_headers("tools/call", "echo"))
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == -32600 and "larger than the bridge's limit of" in error["message"], error
    echo_still_works(http)


def test_a_foreign_host_is_refused(http: httpx2.Client) -> None:
    headers = modern_headers("tools/list") | {"host": "evil.example.com"}
    response = http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=headers)
    assert response.status_code == 421
    assert "Host header 'evil.example.com' is not allowed" in response.json()["error"]["message"]


def test_a_foreign_origin_is_refused_everywhere(http: httpx2.Client) -> None:
    for path in ("/mcp", "/healthz", "/anything"):
        response = http.get(path, headers={"origin": "https://evil.example.com"})
        assert response.status_code == 403, path


def test_a_local_origin_is_accepted(http: httpx2.Client) -> None:
    headers = modern_headers("tools/call", "echo") | {"origin": "http://localhost:6274"}
    response = http.post("/mcp", json=call_body("echo", {"text": "ok"}), headers=headers)
    assert response.status_code == 200


def test_wrong_content_type_is_refused(http: httpx2.Client) -> None:
    headers = modern_headers("tools/list") | {"content-type": "text/plain"}
    response = http.post("/mcp", content=b"{}", headers=headers)
    assert 400 <= response.status_code < 500


def test_legacy_session_with_garbage_and_unknown_session(http: httpx2.Client) -> None:
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    response = http.post("/mcp", json=INITIALIZE, headers=headers)
    assert response.status_code == 200
    session = response.headers["mcp-session-id"]
    garbage = http.post(
        "/mcp",
        content=b"{not json",
        headers=headers | {"mcp-session-id": session, "mcp-protocol-version": "2025-11-25"},
    )
    assert garbage.status_code == 400 and garbage.json()["error"]["code"] == -32700
    unknown = http.post(
        "/mcp",
        json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        headers=headers | {"mcp-session-id": "0" * 32, "mcp-protocol-version": "2025-11-25"},
    )
    assert unknown.status_code == 404


def test_health_endpoint(http: httpx2.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize("era", ["modern", "modern-chunked", "handshake"])
def test_a_client_hanging_up_mid_body_is_not_an_error(open_hub: RunningHub, era: str) -> None:
    """A body shorter than its Content-Length (or an unfinished chunked one), then a close: the
    lane replayed the disconnect to the SDK, which raised ClientDisconnect (an ERROR and a
    traceback from uvicorn, or from the SDK's handshake-era transport)."""
    url = urlsplit(open_hub.http_base)
    head = (
        f"POST /mcp HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
        "Accept: application/json, text/event-stream\r\n"
    )
    if era != "handshake":
        head += f"MCP-Protocol-Version: {MODERN}\r\nMcp-Method: tools/call\r\nMcp-Name: echo\r\n"
    if era == "modern-chunked":
        head += 'Transfer-Encoding: chunked\r\n\r\n5\r\n{"jso\r\n'
    else:
        head += 'Content-Length: 100\r\n\r\n{"jsonrpc"'
    before = open_hub.log().count("\n")
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(head.encode())
        time.sleep(0.3)
    time.sleep(0.5)
    after = "\n".join(open_hub.log().splitlines()[before:])
    assert "ERROR" not in after and "Traceback" not in after, after


def _exchange(hub: RunningHub, request: bytes) -> bytes:
    """Send raw bytes to the bridge and read its answer until it closes the connection."""
    url = urlsplit(hub.http_base)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize(
    "extra",
    [
        "Host: evil.example\r\nHost: {netloc}\r\n",
        "Host: {netloc}\r\nHost: evil.example\r\n",
        "Host: {netloc}\r\nOrigin: https://evil.example\r\nOrigin: http://{netloc}\r\n",
    ],
)
def test_a_repeated_host_or_origin_is_refused(open_hub: RunningHub, extra: str) -> None:
    """The guard kept the last copy and the SDK reads the first: a foreign value could pass."""
    url = urlsplit(open_hub.http_base)
    body = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
    head = (
        "POST /mcp HTTP/1.1\r\n"
        + extra.format(netloc=url.netloc)
        + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    answer = _exchange(open_hub, head.encode() + body)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"more than one Host or Origin header" in answer


@pytest.mark.parametrize("version", ["1.1", "1.0"])
def test_a_request_without_a_host_is_a_bad_request(open_hub: RunningHub, version: str) -> None:
    """RFC 9112 3.2 answers 400; it used to be 421 naming the host `None`."""
    body = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
    head = (
        f"POST /mcp HTTP/{version}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    answer = _exchange(open_hub, head.encode() + body)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"the request has no Host header" in answer and b"None" not in answer


def test_no_bad_input_made_the_hub_log_an_internal_error(http: httpx2.Client, open_hub: RunningHub) -> None:
    echo_still_works(http)
    assert open_hub.alive()
    log = open_hub.log()
    for crash in ("Exception in ASGI application", "internal error in", "ERROR mcp.server", "ERROR uvicorn"):
        assert crash not in log


@pytest.mark.parametrize(
    ("token", "progress", "presented"),
    [(None, False, False), ("not-a-known-token-0123", False, True), ("not-a-known-token-0123", True, True)],
)
def test_a_stateless_call_without_a_principal_is_401_and_audited(
    secured_hub: RunningHub, token: str | None, progress: bool, presented: bool
) -> None:
    """MCP's authorization asks for 401 and a challenge (it is what makes a client send its
    credentials); the hub still records the refused call. With a progress token the call takes
    the SDK's path, without one the express lane: both answer alike."""
    body = call_body("whoami", {}, rpc_id=7)
    if progress:
        body["params"]["_meta"] = {**META, "progressToken": "p1"}
    headers = modern_headers("tools/call", "whoami") | ({"authorization": f"Bearer {token}"} if token else {})
    refused_before = refused_calls(secured_hub)
    with httpx2.Client(base_url=secured_hub.http_base, timeout=30) as client:
        response = client.post("/mcp", json=body, headers=headers)
        listing = client.post(
            "/mcp",
            json={"jsonrpc": "2.0", "id": 8, "method": "tools/list", "params": {"_meta": META}},
            headers=modern_headers("tools/list"),
        )
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="mcphub"')
    assert ('error="invalid_token"' in challenge) is presented
    message = (
        response.json()
        if "json" in response.headers["content-type"]
        else orjson.loads(response.text.split("data: ", 1)[1])
    )
    assert message["id"] == 7 and message["error"]["code"] == -32030, message
    assert listing.status_code == 401 and listing.headers["www-authenticate"] == 'Bearer realm="mcphub"'
    assert refused_calls(secured_hub) == refused_before + 1, "the refused call is on the audit record"


def refused_calls(hub: RunningHub) -> int:
    """Calls of whoami the hub refused as unauthenticated, by its audit log."""
    import subprocess

    from tests.support.hub import hub_command

    query = ("audit", "query", "--json", "--tool", "whoami", "--principal", "-", "--limit", "100000")
    out = subprocess.run(
        hub_command(*query, "--state-dir", str(hub.state_dir)), capture_output=True, text=True, timeout=60
    )
    records = [orjson.loads(line) for line in out.stdout.splitlines()]
    return sum(r["kind"] == "finished" and r["body"]["status"] == "unauthenticated" for r in records)


@pytest.mark.parametrize("progress", [False, True])
def test_a_bearer_without_a_token_is_refused_on_both_paths(open_hub: RunningHub, progress: bool) -> None:
    """The door read `Bearer` with no token as the hub's gRPC side does (refused), the SDK's path
    as no token at all (which an open hub serves): the call ran and was answered 401."""
    body = call_body("echo", {"text": "ran"})
    if progress:
        body["params"]["_meta"] = {**META, "progressToken": "p1"}
    with httpx2.Client(base_url=open_hub.http_base, timeout=30) as client:
        headers = modern_headers("tools/call", "echo") | {"authorization": "Bearer"}
        response = client.post("/mcp", json=body, headers=headers)
    assert response.status_code == 401, response.text
    assert "ran" not in response.text and "-32030" in response.text, response.text


@pytest.mark.parametrize("scheme", ["", "Basic ", "Token "])
def test_an_authorization_that_is_not_bearer_is_refused(secured_hub: RunningHub, scheme: str) -> None:
    """`Authorization: <token>` without the scheme used to be accepted: the bridge passed it on
    and `Bearer ` was put in front of it. gRPC refused the same value."""
    with httpx2.Client(base_url=secured_hub.http_base, timeout=30) as client:
        headers = modern_headers("tools/call", "whoami") | {"authorization": scheme + TOKENS["agent-a"]}
        response = client.post("/mcp", json=call_body("whoami", {}), headers=headers)
    assert response.status_code < 500, response.text
    error = response.json()["error"]
    assert error["code"] == -32030 and "must be 'Bearer <token>'" in error["message"], error


@pytest.mark.parametrize("version", ["2099-01-01", "garbage"])
@pytest.mark.parametrize("method", ["POST", "GET", "DELETE"])
def test_an_unsupported_version_header_in_a_session_is_named(
    http: httpx2.Client, version: str, method: str
) -> None:
    """2025-06-18 "Protocol Version Header": 400, saying which versions are served. It was a 400
    about `_meta` envelope keys (POST) or an empty 405 (GET, DELETE): the request was taken for
    the stateless wire."""
    session = open_session(http, None)
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream" if method == "POST" else "text/event-stream",
        "mcp-session-id": session,
        "mcp-protocol-version": version,
    }
    body = orjson.dumps(call_body("echo", {"text": "x"})) if method == "POST" else None
    refused = http.request(method, "/mcp", content=body, headers=headers)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == -32022, error
    assert error["message"] == (
        f"Unsupported protocol version {version!r} in the MCP-Protocol-Version header; "
        "supported: 2024-11-05, 2025-03-26, 2025-06-18, 2025-11-25, 2026-07-28"
    )
    assert error["data"] == {
        "supported": ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28"],
        "requested": version,
    }
    assert works(http, None, session)  # refused, not ended
    echo_still_works(http)


def test_stateless_refusals_that_had_no_body_say_why(http: httpx2.Client) -> None:
    """The SDK's stateless wire answered these with an empty body; the handshake era's say why."""
    json_only = modern_headers("tools/call", "echo") | {"accept": "application/json"}
    refused = http.post("/mcp", json=call_body("echo", {"text": "x"}), headers=json_only)
    assert refused.status_code == 406, refused.text
    assert refused.headers["content-type"] == "application/json"
    assert refused.json() == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {
            "code": -32600,
            "message": "Not Acceptable: Client must accept both application/json and text/event-stream",
        },
    }
    for method in ("GET", "DELETE"):
        refused = http.request(method, "/mcp", headers=modern_headers("tools/list"))
        assert refused.status_code == 405, (method, refused.text)
        assert refused.headers["allow"] == "POST"
        error = refused.json()["error"]
        assert error["code"] == -32600 and "takes POST only" in error["message"], error
    echo_still_works(http)


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def _error_of(answer: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC error of an answer, sent as JSON (400) or as one SSE event (a session's)."""
    if answer.headers.get("content-type", "").startswith("text/event-stream"):
        data = next(line for line in answer.text.splitlines() if line.startswith("data:"))
        error: dict[str, Any] = orjson.loads(data[5:])["error"]
        return error
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    return error


@pytest.mark.parametrize("levels", [100, 1000, 100_000])
def test_deeply_nested_json_gets_a_precise_error_in_either_era(http: httpx2.Client, levels: int) -> None:
    """A security review: valid JSON nested 1,000 levels or more got a bare "Parse error" (the
    SDK's parser stops at about 200 levels); at 100 it was named. Deep arguments are named at
    any depth now, and a message deep elsewhere says how deep a message may be."""
    in_arguments = call_body("echo", {"text": "x", "n": "@"})
    elsewhere = call_body("echo", {"text": "x"}) | {"params": {"name": "echo", "_meta": META | {"x": "@"}}}
    legacy = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    session = http.post("/mcp", json=INITIALIZE, headers=legacy).headers["mcp-session-id"]
    in_session = legacy | {"mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
    for headers in (modern_headers("tools/call", "echo"), in_session):
        body = orjson.dumps(in_arguments).decode().replace('"@"', _deep(levels))
        error = _error_of(http.post("/mcp", content=body.encode(), headers=headers))
        if levels < 1000 or error["code"] != -32700:
            assert (
                error["code"] == -32602
                and "arguments are nested more than 64 levels deep" in error["message"]
            )
        else:  # too deep for any parser here to tell where (orjson stops at 1,024 levels)
            assert "nested too deeply" in error["message"], error
        if levels > 200:
            body = orjson.dumps(elsewhere).decode().replace('"@"', _deep(levels))
            error = _error_of(http.post("/mcp", content=body.encode(), headers=headers))
            assert error["code"] == -32700 and "nested too deeply" in error["message"], error
    echo_still_works(http)

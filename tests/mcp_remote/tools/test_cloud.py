"""The cloud pack through a real hub, against a real local HTTP server standing in for a cloud API.

The canary keys are random per run; every test ends by checking that none of
their wire forms appears in what the caller saw, the hub's log, the usage file
or the environment of a process the hub starts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.clients import TRANSPORTS, Outcome, ProtocolFailure, connect
from tests.support.hub import RunningHub, serve_refused, start_hub

from .cloud_standin import StandIn, start_standin

pytestmark = pytest.mark.anyio

ENVPROBE = str(Path(__file__).with_name("envprobe_pack.py"))
TOKENS = {
    "agent-a": "cloud-test-token-agent-a-" + secrets.token_hex(8),
    "agent-b": "cloud-test-token-agent-b-" + secrets.token_hex(8),
    "ops": "cloud-test-token-operator-" + secrets.token_hex(8),
}

OPENAPI = """
openapi: 3.0.3
info: {title: stand-in, version: "1"}
paths:
  /things/{id}:
    parameters: [{name: id, in: path, required: true, schema: {type: integer}}]
    get:
      operationId: getThing
      summary: Read one thing.
      parameters:
        - {name: verbose, in: query, schema: {type: boolean}}
        - {name: X-Trace, in: header, schema: {type: string}}
    delete:
      operationId: deleteThing
      summary: Delete one thing.
  /things:
    post:
      operationId: createThing
      summary: Make a thing.
      requestBody:
        required: true
        content:
          application/json:
            schema: {type: object, required: [name], properties: {name: {type: string}}}
"""


@dataclass
class CloudHub:
    hub: RunningHub
    standin: StandIn
    other: StandIn
    canaries: dict[str, str]
    secret_file: Path
    seen: list[str] = field(default_factory=list)
    """Every text the callers were shown (results and errors)."""

    def client(self, principal: str = "agent-a", transport: str = "grpc") -> Any:
        return connect(transport, self.hub.grpc, self.hub.mcp_url, TOKENS[principal])

    async def call(self, name: str, arguments: dict[str, Any], principal: str = "agent-a") -> Outcome:
        async with self.client(principal) as client:
            return self.record(await client.call(name, arguments))

    def record(self, outcome: Outcome) -> Outcome:
        self.seen.append(json.dumps(outcome.result))
        return outcome

    def forms(self) -> list[str]:
        """Every form in which a canary could leak."""
        out = []
        for value in self.canaries.values():
            out += [value, urllib.parse.quote(value, safe=""), base64.b64encode(value.encode()).decode()]
        out.append(base64.b64encode(f"svc:{self.canaries['basic']}".encode()).decode())
        return out

    def assert_no_canary(self, *texts: str) -> None:
        everything = "\n".join([*self.seen, *texts, self.hub.log()])
        usage = self.hub.state_dir / "cloud" / "usage.json"
        if usage.exists():
            everything += usage.read_text()
        for form in self.forms():
            assert form not in everything, "a canary key leaked"


def _config(standin: StandIn, other: StandIn, secret_file: Path, openapi: Path) -> dict[str, Any]:
    local = {"allow_private_network": ["127.0.0.1/32"]}
    port = standin.port
    deny = {"auth": {"type": "none"}, "allow": [{"methods": ["GET"], "paths": ["/**"]}]}
    return {
        "log_level": "debug",
        # These tests are about the cloud pack; the gate has its own (tests/mcp_remote/test_gate.py).
        "policy": {"rules": [{"name": "everything, for these tests", "decision": "allow"}]},
        "principals": [
            {"name": "agent-a", "token_env": "TOKEN_A"},
            {"name": "agent-b", "token_env": "TOKEN_B"},
            {"name": "ops", "token_env": "TOKEN_OPS", "roles": ["operator"]},
        ],
        "packs": [
            {
                "name": "cloud",
                "options": {
                    "usage_flush_s": 0.2,
                    "examples": "all",
                    "services": {
                        "stand": {
                            **local,
                            "description": "the stand-in",
                            "base_url": f"{standin.base}/api",
                            "auth": {"type": "bearer", "secret": {"env": "CANARY_BEARER"}},
                            "allow": [
                                {"methods": ["GET", "HEAD"], "paths": ["/**"]},
                                {"methods": ["POST", "PUT"], "paths": ["/echo/**", "/status/*"]},
                            ],
                            "headers": {"X-Fixed": "fixed-header"},
                            "principals": ["agent-a", "ops"],
                            "inline_bytes": 1024,
                            "max_response_bytes": 300_000,
                            "openapi": {"document": str(openapi), "operations": "*"},
                        },
                        "filekey": {
                            **local,
                            "base_url": f"{standin.base}/files",
                            "auth": {
                                "type": "header",
                                "name": "X-Api-Key",
                                "secret": {"file": str(secret_file)},
                            },
                        },
                        "querykey": {
                            **local,
                            "base_url": f"{standin.base}/q",
                            "auth": {"type": "query", "name": "api_key", "secret": {"env": "CANARY_QUERY"}},
                        },
                        "basic": {
                            **local,
                            "base_url": f"{standin.base}/b",
                            "auth": {"type": "basic", "username": "svc", "secret": {"env": "CANARY_BASIC"}},
                        },
                        "limited": {
                            **local,
                            "base_url": f"{standin.base}/limited",
                            "auth": {"type": "bearer", "secret": {"env": "CANARY_BEARER"}},
                            "rate_limit": {"per_minute": 0.01, "burst": 2},
                        },
                        "missing": {
                            "base_url": "https://api.example.com",
                            "auth": {"type": "bearer", "secret": {"env": "CLOUD_TEST_NEVER_SET"}},
                        },
                        "deny-loopback": {**deny, "base_url": f"https://127.0.0.1:{port}/deny-loopback"},
                        "deny-decimal": {**deny, "base_url": f"https://2130706433:{port}/deny-decimal"},
                        "deny-hex": {**deny, "base_url": f"https://0x7f000001:{port}/deny-hex"},
                        "deny-ipv6": {**deny, "base_url": f"https://[::1]:{port}/deny-ipv6"},
                        "deny-mapped": {**deny, "base_url": f"https://[::ffff:127.0.0.1]:{port}/deny-mapped"},
                        "deny-localhost": {**deny, "base_url": f"https://localhost:{port}/deny-localhost"},
                    },
                },
            },
            {"name": ENVPROBE},
        ],
    }


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudHub]:
    workdir = tmp_path_factory.mktemp("cloud-hub")
    standin, other = start_standin(), start_standin()
    canaries = {
        "bearer": "canary-bearer-" + secrets.token_hex(16),
        "file": "canary-file-" + secrets.token_hex(16),
        "query": "canary+query/" + secrets.token_hex(16),
        "basic": "canary-basic-" + secrets.token_hex(16),
    }
    secret_file = workdir / "filekey.secret"
    secret_file.write_text(canaries["file"] + "\n")
    openapi = workdir / "stand.openapi.yaml"
    openapi.write_text(OPENAPI)
    env = {
        "TOKEN_A": TOKENS["agent-a"],
        "TOKEN_B": TOKENS["agent-b"],
        "TOKEN_OPS": TOKENS["ops"],
        "CANARY_BEARER": canaries["bearer"],
        "CANARY_QUERY": canaries["query"],
        "CANARY_BASIC": canaries["basic"],
        "GITHUB_TOKEN": "canary-github-" + secrets.token_hex(16),
    }
    for name in ("RENDER_API_KEY", "SENTRY_AUTH_TOKEN"):
        os.environ.pop(name, None)
    canaries["github"] = env["GITHUB_TOKEN"]
    hub = start_hub(workdir, config=_config(standin, other, secret_file, openapi), env=env)
    try:
        yield CloudHub(hub, standin, other, canaries, secret_file)
    finally:
        hub.stop()
        standin.stop()
        other.stop()


def _echo(outcome: Outcome) -> dict[str, Any]:
    assert not outcome.is_error, outcome.text
    data = outcome.structured["json"]
    assert isinstance(data, dict)
    return data


# --- the credential arrives, and only there --------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_key_arrives_at_the_service_and_never_comes_back(cloud: CloudHub, transport: str) -> None:
    marker = f"/api/echo/{transport}"
    async with cloud.client("agent-a", transport) as client:
        outcome = cloud.record(
            await client.call(
                "http_request",
                {
                    "service": "stand",
                    "method": "POST",
                    "path": f"/echo/{transport}",
                    "query": {"q": "x y", "n": 3, "flag": True, "many": ["a", "b"]},
                    "headers": {
                        "Authorization": "Bearer sandbox-made-this-up",
                        "X-Custom": "kept",
                        "Cookie": "c=1",
                        "X-HTTP-Method-Override": "DELETE",
                        "X-Original-URL": "/admin",
                        "X-Rewrite-URL": "/admin",
                        "X_Original_URL": "/admin",
                        "X_HTTP_Method_Override": "DELETE",
                        "X-Envoy-Original-Path": "/admin",
                    },
                    "json": {"hello": "cloud"},
                },
            )
        )
    received = cloud.standin.wait_for(marker)
    # The hub's credential arrived; the caller's Authorization, cookie and own hub token did not.
    assert received.headers["Authorization"] == f"Bearer {cloud.canaries['bearer']}"
    assert received.headers["X-Custom"] == "kept" and received.headers["X-Fixed"] == "fixed-header"
    assert "Cookie" not in received.headers and "X-HTTP-Method-Override" not in received.headers
    assert "X-Original-URL" not in received.headers and "X-Rewrite-URL" not in received.headers
    assert json.loads(received.body) == {"hello": "cloud"}
    assert received.path == f"{marker}?q=x+y&n=3&flag=true&many=a&many=b"
    wire = cloud.standin.everything_received()
    assert "sandbox-made-this-up" not in wire
    for token in TOKENS.values():
        assert token not in wire
    # The service echoed the key back; the caller sees it redacted.
    echoed = _echo(outcome)
    assert echoed["headers"]["Authorization"] == "Bearer [REDACTED]"
    assert outcome.structured["dropped_headers"] == [
        "Authorization",
        "Cookie",
        "X-HTTP-Method-Override",
        "X-Original-URL",
        "X-Rewrite-URL",
        "X_Original_URL",
        "X_HTTP_Method_Override",
        "X-Envoy-Original-Path",
    ]
    assert "set-cookie" not in outcome.structured["headers"]
    cloud.assert_no_canary()


async def test_header_query_and_basic_credentials_are_injected_and_redacted(cloud: CloudHub) -> None:
    out = await cloud.call(
        "http_request",
        {"service": "filekey", "method": "GET", "path": "/h", "headers": {"x-api-key": "caller-key"}},
    )
    assert cloud.standin.wait_for("/files/h").headers["X-Api-Key"] == cloud.canaries["file"]
    assert out.structured["dropped_headers"] == ["x-api-key"]
    out = await cloud.call(
        "http_request", {"service": "querykey", "method": "GET", "path": "/q", "query": {"api_key": "mine"}}
    )
    got = urllib.parse.parse_qs(urllib.parse.urlsplit(cloud.standin.wait_for("/q/q").path).query)
    assert got == {"api_key": [cloud.canaries["query"]]}
    assert "[REDACTED]" in out.structured["url"] and out.structured["dropped_headers"] == ["?api_key"]
    await cloud.call("http_request", {"service": "basic", "method": "GET", "path": "/who"})
    expected = base64.b64encode(f"svc:{cloud.canaries['basic']}".encode()).decode()
    assert cloud.standin.wait_for("/b/who").headers["Authorization"] == f"Basic {expected}"
    cloud.assert_no_canary()


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ({"X-Name": "caf\u00e9"}, "header 'X-Name': the value must be ASCII"),
        ({"X-Mark": "\u2713"}, "header 'X-Mark': the value must be ASCII"),
        ({"X-\u00c9": "v"}, "'X-\u00c9' is not a valid header name"),
        ({"X(a)": "v"}, "'X(a)' is not a valid header name"),
        ({"X-Line": "a\r\nX-Evil: 1"}, "header 'X-Line': the value has a line break"),
        ({"X-Vt": "a\x0bb"}, "header 'X-Vt': the value has a control character"),
        ({"X-Del": "a\x7f"}, "header 'X-Del': the value has a control character"),
    ],
)
async def test_header_values_http_cannot_carry_are_refused_precisely(
    cloud: CloudHub, headers: dict[str, str], says: str
) -> None:
    """A non-ASCII value used to come back as an encoder's TypeError."""
    arguments = {"service": "stand", "method": "GET", "path": "/h", "headers": headers}
    out = await cloud.call("http_request", arguments)
    assert out.is_error and says in out.text, out.text


async def test_whitespace_around_a_header_value_is_not_part_of_it(cloud: CloudHub) -> None:
    """It used to fail in the HTTP client, reported like a network error."""
    headers = {"X-Lead": " lead", "X-Trail": "trail \t", "X-Inner": "a\tb c", "X-Blank": "\t"}
    out = await cloud.call(
        "http_request", {"service": "stand", "method": "GET", "path": "/ws", "headers": headers}
    )
    assert not out.is_error, out.text
    got = cloud.standin.wait_for("/api/ws").headers
    assert (got["X-Lead"], got["X-Trail"], got["X-Inner"], got["X-Blank"]) == ("lead", "trail", "a\tb c", "")


async def test_error_responses_and_stored_bodies_are_redacted_too(cloud: CloudHub) -> None:
    failed = await cloud.call("http_request", {"service": "stand", "method": "POST", "path": "/status/403"})
    assert failed.is_error and "HTTP 403" in failed.text and "[REDACTED]" in failed.text
    big = await cloud.call(
        "http_request", {"service": "stand", "method": "GET", "path": "/big", "query": {"n": 200_000}}
    )
    assert not big.is_error
    output_id = big.structured["output_id"]
    assert big.structured["body_bytes"] < 200_000  # redaction shortened the repeated key
    assert "output_read" in big.text
    page = await cloud.call("output_read", {"output_id": output_id, "offset": 50_000, "limit": 20_000})
    assert "[REDACTED]" in page.text
    cut = await cloud.call(
        "http_request", {"service": "stand", "method": "GET", "path": "/big", "query": {"n": 400_000}}
    )
    assert cut.structured["truncated"] is True and "was not read" in cut.text
    binary = await cloud.call("http_request", {"service": "stand", "method": "GET", "path": "/binary"})
    assert binary.structured["output_id"].startswith("out_") and "2048 bytes" in binary.text
    cloud.assert_no_canary()


async def test_headers_describing_the_raw_body_do_not_reveal_a_redacted_keys_length(cloud: CloudHub) -> None:
    """`content-length` was passed on as the service sent it: the redacted body is shorter by the
    key's length less 10, so the two numbers together gave the key's length away."""
    for method in ("HEAD", "GET"):
        out = await cloud.call(
            "http_request", {"service": "stand", "method": method, "path": "/echo/length"}, principal="ops"
        )
        assert not out.is_error, out.text
        headers = out.structured["headers"]
        assert "content-length" not in headers and "content-encoding" not in headers, headers
        assert headers["content-type"] == "application/json"
    assert _echo(out)["headers"]["Authorization"] == "Bearer [REDACTED]"
    cloud.assert_no_canary()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compressed_echo_of_the_key_is_decoded_and_redacted(cloud: CloudHub, encoding: str) -> None:
    """The hub asks for `identity`; a service that compresses anyway must not get the key past
    the redaction inside a body the hub passed on unread."""
    # As `ops`: agent-a's calls to this service are near its rate limit by here.
    echoed = cloud.record(
        await cloud.call(
            "http_request",
            {"service": "stand", "method": "GET", "path": "/encoded", "query": {"as": encoding}},
            principal="ops",
        )
    )
    assert _echo(echoed)["headers"]["Authorization"] == "Bearer [REDACTED]"
    assert "content-encoding" not in echoed.structured["headers"]
    # A small compressed body of 20 MB is read no further than the response cap (300 KB).
    bomb = await cloud.call(
        "http_request",
        {"service": "stand", "method": "GET", "path": "/encoded", "query": {"as": encoding, "n": 20_000}},
        principal="ops",
    )
    assert bomb.structured["truncated"] is True and bomb.structured["body_bytes"] <= 300_000
    cloud.assert_no_canary()


async def test_compressed_bodies_are_decoded_whole_or_refused(cloud: CloudHub) -> None:
    async def get(**query: Any) -> Outcome:
        return await cloud.call(
            "http_request",
            {"service": "stand", "method": "GET", "path": "/encoded", "query": query},
            principal="ops",
        )

    raw = await get(**{"as": "raw-deflate"})  # many servers send raw deflate as "deflate"
    assert _echo(raw)["headers"]["Authorization"] == "Bearer [REDACTED]"
    members = await get(**{"as": "gzip", "members": 2})  # gzip allows several members
    assert members.text.count('"method"') == 2, members.text
    cut = await get(**{"as": "gzip", "cut": 8})
    assert cut.is_error and "ends before its compressed stream does" in cut.text
    junk = await get(**{"as": "gzip", "tail": "junk", "tail_bytes": 100})
    assert junk.is_error and "is corrupt" in junk.text
    # Bytes after the end that decode to nothing must not pile up unread: 3 MB of zeros.
    padded = await get(**{"as": "gzip", "tail": "zeros", "tail_bytes": 3_000_000})
    assert padded.is_error and "before it is even decoded" in padded.text
    head = await cloud.call(
        "http_request",
        {"service": "stand", "method": "HEAD", "path": "/encoded", "query": {"as": "br"}},
        principal="ops",
    )
    assert not head.is_error, head.text  # no body: nothing to decode or refuse
    cloud.assert_no_canary()


async def test_a_body_in_an_encoding_the_hub_cannot_read_is_not_passed_on(cloud: CloudHub) -> None:
    refused = await cloud.call(
        "http_request",
        {"service": "stand", "method": "GET", "path": "/encoded", "query": {"as": "br"}},
        principal="ops",
    )
    assert refused.is_error and "the service answered in the encoding 'br'" in refused.text
    assert "not really brotli" not in refused.text


@pytest.mark.parametrize(
    ("codec", "label"),
    [
        ("utf-16", "utf-16"),  # with a BOM (little-endian here)
        ("utf-16-be", "UTF-16BE"),  # declared, no BOM
        ("utf-16-le", "utf-16"),  # declared without a byte order, no BOM
        ("utf-32", ""),  # only a BOM says what it is
        ("utf-32-be", "utf-32be"),
    ],
)
async def test_a_key_echoed_in_utf16_or_utf32_is_redacted(cloud: CloudHub, codec: str, label: str) -> None:
    """The body was read as latin-1 whatever its charset: in UTF-16 a key has a NUL between its
    characters, the redactor never saw it, and the key reached the caller."""
    out = await cloud.call(
        "http_request",
        {"service": "filekey", "method": "GET", "path": "/charset", "query": {"as": codec, "label": label}},
        principal="agent-b",
    )
    key = cloud.standin.wait_for("/files/charset").headers["X-Api-Key"]
    assert _echo(out)["headers"]["X-Api-Key"] == "[REDACTED]"
    assert key not in out.text.replace("\0", "") and key not in json.dumps(out.result).replace("\\u0000", "")
    # Stored whole (past inline_bytes): the stored bytes are the same codec, redacted.
    big = await cloud.call(
        "http_request",
        {
            "service": "filekey",
            "method": "GET",
            "path": "/charset",
            "query": {"as": codec, "label": label, "n": 400},
        },
        principal="agent-b",
    )
    assert "output_id" in big.structured and "[REDACTED]" in big.structured["text"], big.text[:300]
    assert key not in big.text.replace("\0", "")
    cloud.assert_no_canary()


async def test_a_character_cut_by_the_preview_is_left_for_output_read(cloud: CloudHub) -> None:
    # 400 checkmarks of 3 bytes: the 1,024-byte preview would end inside the 342nd.
    out = await cloud.call(
        "http_request", {"service": "stand", "method": "GET", "path": "/text", "query": {"s": "✓", "n": 400}}
    )
    assert not out.is_error and out.structured["text"] == "✓" * 341
    assert "this shows the first 1023" in out.text
    page = await cloud.call("output_read", {"output_id": out.structured["output_id"], "offset": 1023})
    header, _, rest = page.text.partition("\n")
    assert rest == "✓" * 59 and header.endswith("; end of output]")
    binary = await cloud.call("http_request", {"service": "stand", "method": "GET", "path": "/binary"})
    whole = await cloud.call("output_read", {"output_id": binary.structured["output_id"]})
    header, _, rest = whole.text.partition("\n")
    assert "shown as base64" in header and base64.b64decode(rest) == bytes(range(256)) * 8


async def test_a_key_cut_by_the_response_cap_is_still_redacted(cloud: CloudHub) -> None:
    """The cap used to cut the raw body before redaction: a key crossing it lost its tail and so
    escaped the redactor, and a caller could pad its request to move the cut into the key."""
    cap, key = 300_000, cloud.canaries["bearer"]
    await cloud.call(
        "http_request", {"service": "stand", "method": "GET", "path": "/big", "headers": {"X-Pad": "p"}}
    )
    headers = dict(cloud.standin.wait_for("/api/big").headers)

    def straddles(pad: int) -> bool:  # /big repeats the request's headers as JSON lines
        line = json.dumps({**headers, "X-Pad": "p" * pad}) + "\n"
        start = line.index(key)
        return start + len(key) - 3 <= cap % len(line) < start + len(key)  # all but 1-3 characters

    pad = next(p for p in range(1, 5000) if straddles(p))
    arguments = {"query": {"n": 400_000}, "headers": {"X-Pad": "p" * pad}}
    cut = await cloud.call("http_request", {"service": "stand", "method": "GET", "path": "/big", **arguments})
    assert cut.structured["truncated"] is True and cut.structured["body_bytes"] <= cap
    tail = await cloud.call(
        "output_read",
        {
            "output_id": cut.structured["output_id"],
            "offset": cut.structured["body_bytes"] - 3000,
            "limit": 3000,
        },
    )
    assert "[REDACTED]" in tail.text and key[:12] not in tail.text
    cloud.assert_no_canary()


async def test_no_process_the_hub_starts_inherits_a_secret(cloud: CloudHub) -> None:
    child = await cloud.call("spawn_env", {})
    own = await cloud.call("hub_environ", {})
    assert "PATH=" in child.text and "PATH=" in own.text  # the probes do show the environment
    for text in (child.text, own.text):
        # Cloud secrets, and the principals' own tokens read from the environment.
        for name in ("CANARY_BEARER", "CANARY_QUERY", "CANARY_BASIC", "GITHUB_TOKEN", "TOKEN_A", "TOKEN_OPS"):
            assert f"{name}=" not in text
    cloud.assert_no_canary(child.text, own.text)


# --- who may call what -----------------------------------------------------------------------------------


async def test_services_are_listed_and_callable_per_principal(cloud: CloudHub) -> None:
    mine = await cloud.call("cloud_services", {}, principal="agent-a")
    theirs = await cloud.call("cloud_services", {}, principal="agent-b")
    names_a = [s["service"] for s in mine.structured["services"]]
    names_b = [s["service"] for s in theirs.structured["services"]]
    assert "stand" in names_a and "stand" not in names_b and "filekey" in names_b
    assert "github" in names_a and "render" not in names_a and "missing" not in names_a
    stand = next(s for s in mine.structured["services"] if s["service"] == "stand")
    assert stand["tools"] == ["stand_getThing", "stand_deleteThing", "stand_createThing"]
    with pytest.raises(ProtocolFailure) as refused:
        await cloud.call(
            "http_request", {"service": "stand", "method": "GET", "path": "/x"}, principal="agent-b"
        )
    assert refused.value.code == -32031 and "may not call service 'stand'" in refused.value.message
    off = await cloud.call("http_request", {"service": "missing", "method": "GET", "path": "/"})
    assert off.is_error and '"missing" is not one of' in off.text  # a service that is off is not offered
    assert "services.missing.auth: environment variable CLOUD_TEST_NEVER_SET is not set" in cloud.hub.log()
    assert "service render is off" in cloud.hub.log()


async def test_methods_and_paths_outside_the_routes_are_refused(cloud: CloudHub) -> None:
    before = len(cloud.standin.received())
    for method, path in [
        ("DELETE", "/echo/x"),
        ("POST", "/other"),
        ("GET", "/../admin"),
        ("GET", "/a/%2e%2e/b"),
    ]:
        out = await cloud.call("http_request", {"service": "stand", "method": method, "path": path})
        assert out.is_error, (method, path)
    assert len(cloud.standin.received()) == before


# --- generated tools ---------------------------------------------------------------------------------------


async def test_openapi_operations_become_tools(cloud: CloudHub) -> None:
    async with cloud.client() as client:
        tools = {t["name"]: t for t in await client.list_tools()}
    get, delete = tools["stand_getThing"], tools["stand_deleteThing"]
    assert get["annotations"]["readOnlyHint"] is True and get["annotations"]["destructiveHint"] is False
    assert delete["annotations"]["destructiveHint"] is True
    assert set(get["inputSchema"]["properties"]) == {"id", "verbose", "X-Trace"}
    assert "github_issues_list-for-repo" in tools and "render_listServices" not in tools
    out = await cloud.call("stand_getThing", {"id": 42, "verbose": True, "X-Trace": "t-1"})
    received = cloud.standin.wait_for("/api/things/42")
    assert received.path == "/api/things/42?verbose=true" and received.headers["X-Trace"] == "t-1"
    assert received.headers["Authorization"] == f"Bearer {cloud.canaries['bearer']}"
    assert not out.is_error
    created = await cloud.call("stand_createThing", {"body": {"name": "n"}})
    # POST /things is not in stand's configured routes: declaring the operation allowed it.
    assert not created.is_error and _echo(created)["body"] == '{"name":"n"}'
    bad = await cloud.call("stand_getThing", {"id": "x"})
    assert bad.is_error and "invalid arguments" in bad.text


# --- SSRF --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "service", ["deny-loopback", "deny-decimal", "deny-hex", "deny-ipv6", "deny-mapped", "deny-localhost"]
)
async def test_loopback_in_any_form_is_refused_by_default(cloud: CloudHub, service: str) -> None:
    out = await cloud.call("http_request", {"service": service, "method": "GET", "path": "/x"})
    assert out.is_error and "refused to connect" in out.text and "loopback" in out.text, out.text
    assert cloud.standin.received(f"/{service}") == []


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.2:{port}/api/echo/landing",
        "http://[::1]:{port}/api/echo/landing",
        "http://2130706434:{port}/api/echo/landing",
        "http://0x7f000002:{port}/api/echo/landing",
        "http://[::ffff:127.0.0.2]:{port}/api/echo/landing",
    ],
)
async def test_every_redirect_hop_is_checked(cloud: CloudHub, target: str) -> None:
    to = target.format(port=cloud.standin.port)
    out = await cloud.call(
        "http_request", {"service": "stand", "method": "GET", "path": "/redirect", "query": {"to": to}}
    )
    assert out.is_error and "refused to connect" in out.text, out.text


async def test_a_service_cannot_redirect_into_the_hub_itself(cloud: CloudHub) -> None:
    assert cloud.hub.mcp_url is not None
    out = await cloud.call(
        "http_request",
        {"service": "stand", "method": "GET", "path": "/redirect", "query": {"to": cloud.hub.mcp_url}},
    )
    assert out.is_error and "the hub's own listening address" in out.text, out.text


async def test_redirects_keep_the_credential_on_the_service_and_drop_it_elsewhere(cloud: CloudHub) -> None:
    same = await cloud.call(
        "http_request",
        {"service": "stand", "method": "GET", "path": "/redirect", "query": {"to": "/api/echo/same-origin"}},
    )
    assert _echo(same)["path"] == "/api/echo/same-origin"
    assert (
        cloud.standin.wait_for("/api/echo/same-origin").headers["Authorization"].startswith("Bearer canary")
    )
    elsewhere = f"{cloud.other.base}/api/echo/other-origin"
    moved = await cloud.call(
        "http_request", {"service": "stand", "method": "GET", "path": "/redirect", "query": {"to": elsewhere}}
    )
    assert _echo(moved)["path"] == "/api/echo/other-origin"
    assert "Authorization" not in cloud.other.wait_for("/api/echo/other-origin").headers
    assert moved.structured["redirects"] == [elsewhere]
    cloud.assert_no_canary()


# --- limits, counters, rotation ---------------------------------------------------------------------


async def test_the_rate_limit_is_enforced_per_principal_and_service(cloud: CloudHub) -> None:
    call = {"service": "limited", "method": "GET", "path": "/ping"}
    for _ in range(2):
        assert not (await cloud.call("http_request", call)).is_error
    with pytest.raises(ProtocolFailure) as limited:
        await cloud.call("http_request", call)
    assert limited.value.code == -32032 and "rate limit for service 'limited'" in limited.value.message
    assert not (await cloud.call("http_request", call, principal="agent-b")).is_error
    assert len(cloud.standin.received("/limited/ping")) == 3


async def test_usage_counters_are_for_operators(cloud: CloudHub) -> None:
    await cloud.call("http_request", {"service": "filekey", "method": "GET", "path": "/counted"})
    with pytest.raises(ProtocolFailure) as refused:
        await cloud.call("cloud_usage", {}, principal="agent-a")
    assert refused.value.code == -32031 and "for principals with the role operator" in refused.value.message
    for principal, listed in (("agent-a", False), ("ops", True)):
        async with cloud.client(principal) as client:
            names = {tool["name"] for tool in await client.list_tools()}
        assert ("cloud_usage" in names) is listed and "http_request" in names
    usage = (await cloud.call("cloud_usage", {}, principal="ops")).structured
    mine = next(u for u in usage["usage"] if u["principal"] == "agent-a" and u["service"] == "filekey")
    assert mine["calls"] >= 1 and mine["ok"] >= 1 and mine["by_risk"]["read-only"] >= 1
    states = {s["service"]: s["state"] for s in usage["services"]}
    assert states["stand"] == "on" and states["missing"] == "off"
    path = cloud.hub.state_dir / "cloud" / "usage.json"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if path.exists() and any(u["service"] == "filekey" for u in json.loads(path.read_text())["usage"]):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the usage file was not written")
    cloud.assert_no_canary()


async def test_a_cancelled_call_is_counted_as_failed(cloud: CloudHub) -> None:
    """A call cancelled (or abandoned at the caller's deadline) while it waited for the service
    was counted in `calls` and in no outcome, so the outcomes no longer added up to the calls."""

    async def counts() -> dict[str, Any]:
        usage = (await cloud.call("cloud_usage", {}, principal="ops")).structured["usage"]
        found = [u for u in usage if u["principal"] == "agent-b" and u["service"] == "filekey"]
        return found[0] if found else {"calls": 0, "failed": 0}

    def outcomes(u: dict[str, Any]) -> int:
        return int(u["ok"] + u["client_errors"] + u["server_errors"] + u["failed"])

    before = await counts()
    cloud.standin.release.clear()
    try:
        call = asyncio.create_task(
            cloud.call(
                "http_request",
                {
                    "service": "filekey",
                    "method": "GET",
                    "path": "/cancelled/hold",
                    "query": {"to": "/files/x"},
                },
                principal="agent-b",
            )
        )
        await asyncio.to_thread(cloud.standin.wait_for, "/files/cancelled/hold")
        call.cancel()  # the client gives up: the hub cancels the call
        with pytest.raises(asyncio.CancelledError):
            await call
        deadline = time.monotonic() + 10
        while True:
            after = await counts()
            if after["calls"] == before["calls"] + 1 and after["failed"] == before["failed"] + 1:
                break
            assert time.monotonic() < deadline, f"the cancelled call has no outcome: {before} -> {after}"
            await asyncio.sleep(0.1)
        assert outcomes(after) == after["calls"], after
    finally:
        cloud.standin.release.set()
    cloud.assert_no_canary()


async def test_a_rotated_secret_is_used_by_the_next_call_and_not_by_one_in_flight(cloud: CloudHub) -> None:
    async def key_seen(path: str) -> str:
        await cloud.call("http_request", {"service": "filekey", "method": "GET", "path": path})
        return cloud.standin.wait_for(f"/files{path}").headers["X-Api-Key"]

    old = cloud.canaries["file"]
    assert await key_seen("/before") == old
    new = "canary-file-rotated-" + secrets.token_hex(12)
    cloud.canaries["file-2"] = new
    tmp = cloud.secret_file.with_suffix(".tmp")
    tmp.write_text(new + "\n")
    os.replace(tmp, cloud.secret_file)
    assert await key_seen("/after") == new

    # A call in flight keeps its key through a redirect even when the file changes under it.
    cloud.standin.release.clear()
    call = asyncio.create_task(
        cloud.call(
            "http_request",
            {"service": "filekey", "method": "GET", "path": "/hold", "query": {"to": "/files/landing"}},
        )
    )
    await asyncio.to_thread(cloud.standin.wait_for, "/files/hold")
    newest = "canary-file-newest-" + secrets.token_hex(12)
    cloud.canaries["file-3"] = newest
    cloud.secret_file.write_text(newest + "\n")
    cloud.standin.release.set()
    landed = await call
    assert not landed.is_error, landed.text
    assert cloud.standin.wait_for("/files/landing").headers["X-Api-Key"] == new
    assert await key_seen("/next") == newest
    cloud.assert_no_canary()


async def test_sighup_reloads_secrets_without_a_restart(cloud: CloudHub) -> None:
    cloud.hub.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "mcphub.cloud: credentials reloaded (reload 1)" not in cloud.hub.log():
        assert time.monotonic() < deadline, "no reload after SIGHUP"
        await asyncio.sleep(0.05)
    assert cloud.hub.alive()
    out = await cloud.call("http_request", {"service": "filekey", "method": "GET", "path": "/after-hup"})
    assert not out.is_error
    usage = (await cloud.call("cloud_usage", {}, principal="ops")).structured
    assert usage["reloads"] == 1
    cloud.assert_no_canary()


async def test_a_service_whose_secret_file_appears_is_turned_on_by_sighup(tmp_path: Path) -> None:
    """A service off at start for a missing secret file stayed off for good: SIGHUP re-read only
    the services that were on, so mounting the secret later needed a restart."""
    standin = start_standin()
    secret = tmp_path / "late.secret"
    openapi = tmp_path / "late.openapi.yaml"
    openapi.write_text(OPENAPI)
    late = {
        "base_url": f"{standin.base}/late",
        "auth": {"type": "bearer", "secret": {"file": str(secret)}},
        "allow_private_network": ["127.0.0.1/32"],
        "openapi": {"document": str(openapi), "operations": ["getThing"]},
    }
    never = {**late, "base_url": f"{standin.base}/never", "openapi": None}
    never["auth"] = {"type": "bearer", "secret": {"file": str(tmp_path / "never.secret")}}
    config = {
        "policy": {"rules": [{"name": "everything, for this test", "decision": "allow"}]},
        "principals": [{"name": "agent-a", "token_env": "TOKEN_A"}],
        "packs": [{"name": "cloud", "options": {"services": {"late": late, "never": never}}}],
    }
    hub = start_hub(tmp_path / "hub", config=config, env={"TOKEN_A": TOKENS["agent-a"]})
    try:
        async with connect("grpc", hub.grpc, hub.mcp_url, TOKENS["agent-a"]) as client:
            off = await client.call("http_request", {"service": "late", "method": "GET", "path": "/x"})
            assert off.is_error, off.text
            assert "late_getThing" not in {t["name"] for t in await client.list_tools()}
        key = "late-arriving-key-" + secrets.token_hex(12)
        secret.write_text(key + "\n")
        (tmp_path / "never.secret").write_text("short\n")  # there now, but unusable: stays off
        hub.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "service late is on" not in hub.log() or "service never stays off" not in hub.log():
            assert time.monotonic() < deadline, hub.log()[-3000:]
            await asyncio.sleep(0.05)
        async with connect("grpc", hub.grpc, hub.mcp_url, TOKENS["agent-a"]) as client:
            out = await client.call("http_request", {"service": "late", "method": "GET", "path": "/x"})
            assert not out.is_error, out.text
            assert standin.wait_for("/late/x").headers["Authorization"] == f"Bearer {key}"
            assert out.structured["json"]["headers"]["Authorization"] == "Bearer [REDACTED]"
            listed = await client.call("cloud_services", {})
            assert [s["service"] for s in listed.structured["services"]] == ["late"]
            assert "late_getThing" in {t["name"] for t in await client.list_tools()}
            assert not (await client.call("late_getThing", {"id": 7})).is_error
            still = await client.call("http_request", {"service": "never", "method": "GET", "path": "/x"})
            assert still.is_error, still.text
        assert "expected at least 8" in hub.log() and hub.alive()
        assert key not in hub.log()
    finally:
        assert hub.stop() == 0
        standin.stop()


def test_no_process_the_hub_starts_inherits_a_cloud_secret_whatever_the_pack_order(tmp_path: Path) -> None:
    """The shell's spawner and the browser's driver started before the cloud pack took its
    variables out of the environment, and inherited them."""
    standin = start_standin()
    key = "cloud-env-secret-" + secrets.token_hex(12)
    service = {
        "base_url": f"{standin.base}/api",
        "auth": {"type": "bearer", "secret": {"env": "CLOUD_ORDER_KEY"}},
        "allow_private_network": ["127.0.0.1/32"],
    }
    dsn = f"postgresql://app:{key}-db@127.0.0.1:1/app"
    sql = {"name": "sql", "options": {"databases": {"main": {"postgres_env": "DB_ORDER_DSN"}}}}
    config = {
        "packs": ["shell", "browser", {"name": "cloud", "options": {"services": {"svc": service}}}, sql]
    }
    hub = start_hub(tmp_path, config=config, env={"CLOUD_ORDER_KEY": key, "DB_ORDER_DSN": dsn}, http=False)
    try:
        children = subprocess.run(
            ["pgrep", "-P", str(hub.process.pid)], capture_output=True, text=True, timeout=10
        ).stdout.split()
        commands = {c: Path(f"/proc/{c}/cmdline").read_bytes() for c in children}
        assert any(b"spawner" in c for c in commands.values()), commands
        assert any(b"playwright" in c for c in commands.values()), commands
        for child in children:
            environ = Path(f"/proc/{child}/environ").read_bytes()
            assert b"CLOUD_ORDER_KEY" not in environ and key.encode() not in environ, commands[child]
            assert b"DB_ORDER_DSN" not in environ, commands[child]
        # The pack still has the key: the service is on.
        assert "1 services on (svc)" in hub.log(), hub.log()[-2000:]
    finally:
        assert hub.stop() == 0
        standin.stop()


async def test_the_gate_sees_each_requests_own_risk(tmp_path: Path) -> None:
    """Reported: one destructive route anywhere (the render and sentry examples have some) made
    every http_request destructive to the gate: under the default policy a GET on a read-only
    route waited for a person, and its `reading cloud APIs` rule never applied."""
    standin = start_standin()
    service = {
        "allow_private_network": ["127.0.0.1/32"],
        "base_url": f"{standin.base}/api",
        "auth": {"type": "none"},
        "allow": [{"methods": ["GET"], "paths": ["/**"]}, {"methods": ["DELETE"], "paths": ["/items/*"]}],
    }
    config = {
        "principals": [{"name": "agent-a", "token": TOKENS["agent-a"]}],
        "policy": {"extends": "default", "approval_timeout_s": 1},
        "packs": [{"name": "cloud", "options": {"services": {"svc": service}}}],
    }
    hub = start_hub(tmp_path, config=config)
    try:
        async with connect("grpc", hub.grpc, hub.mcp_url, TOKENS["agent-a"]) as client:
            read = await client.call("http_request", {"service": "svc", "method": "GET", "path": "/items/1"})
            assert not read.is_error and read.text.startswith("HTTP 200"), read.text
            delete = await client.call(
                "http_request", {"service": "svc", "method": "DELETE", "path": "/items/1"}
            )
            assert delete.is_error and "approval" in delete.text, delete.text
    finally:
        hub.stop()
        standin.stop()
    assert [r.method for r in standin.received("/api/items/1")] == ["GET"]


@pytest.mark.parametrize(
    ("options", "says", "not_said"),
    [
        (
            {"services": {"billing": {"openapi": {"document": "MISSING", "operations": "*"}}}},
            "packs[cloud]: services.billing.openapi.document: cannot read {missing}: No such file",
            "",
        ),
        (
            {"examples": ["github", "nope"]},
            "  examples: no shipped example 'nope': the examples are render, sentry and github",
            "literal[",
        ),
    ],
)
def test_config_errors_name_the_key_in_one_line(
    tmp_path: Path, options: dict[str, Any], says: str, not_said: str
) -> None:
    """An unreadable OpenAPI document was reported without its service, and a bad `examples`
    value as pydantic's errors for each member of the union (`examples.list[literal[...]].0`)."""
    missing = tmp_path / "nope.openapi.yaml"
    for service in options.get("services", {}).values():
        service.update(
            {
                "base_url": "https://api.example.com",
                "auth": {"type": "none"},
                "openapi": {**service["openapi"], "document": str(missing)},
            }
        )
    out = serve_refused(tmp_path, {"packs": [{"name": "cloud", "options": options}]})
    assert out.returncode == 2, out.stderr
    assert says.format(missing=missing) in out.stderr, out.stderr
    if not_said:
        assert not_said not in out.stderr, out.stderr

"""The cloud pack's pure parts: address policy, path hygiene, routes, buckets, OpenAPI, options, secrets."""

from __future__ import annotations

import base64
import gzip
import ipaddress
import os
import zlib
from pathlib import Path

import httpx2
import orjson
import pytest

from mcp_local.errors import ConfigError, ToolError
from mcp_local.redaction import Redactor
from mcp_remote.tools.cloud.credentials import CredentialSource, SecretMissing
from mcp_remote.tools.cloud.netguard import AddressPolicy, AddressRefused, GuardedBackend, literal_address
from mcp_remote.tools.cloud.openapi import operations, tool_name
from mcp_remote.tools.cloud.ratelimit import RateLimiter
from mcp_remote.tools.cloud.routes import Route, RouteTable, clean_path
from mcp_remote.tools.cloud.settings import AuthSettings, parse_options

# --- the SSRF guard -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
        ("169.254.169.254", "169.254.169.254"),
        ("api.github.com", None),
        ("1e100.net", None),
    ],
)
def test_ip_literals_are_read_in_every_form_a_resolver_accepts(host: str, expected: str | None) -> None:
    found = literal_address(host)
    assert (str(found) if found else None) == expected


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.0.0.2", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.1.2.3", "private"),
        ("2002:7f00:1::", "loopback"),  # 6to4 around 127.0.0.1
        ("64:ff9b::a00:1", "private"),  # NAT64 around 10.0.0.1
        ("10.0.0.8", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fd12::1", "private"),
        ("fe80::1", "link-local"),
        ("169.254.10.10", "link-local"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("100.64.1.1", "shared"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
    ],
)
def test_the_guard_refuses_internal_addresses_by_default(address: str, why: str) -> None:
    problem = AddressPolicy().problem(ipaddress.ip_address(address))
    assert problem is not None and why in problem


@pytest.mark.parametrize("address", ["140.82.112.6", "8.8.8.8", "2606:4700::1111"])
def test_the_guard_lets_public_addresses_through(address: str) -> None:
    assert AddressPolicy().problem(ipaddress.ip_address(address)) is None


def test_opting_in_to_private_networks_never_opens_metadata_endpoints() -> None:
    wide = AddressPolicy(allow_private=True)
    assert wide.problem(ipaddress.ip_address("10.0.0.8")) is None
    assert "metadata" in (wide.problem(ipaddress.ip_address("169.254.169.254")) or "")
    assert "metadata" in (wide.problem(ipaddress.ip_address("::ffff:169.254.169.254")) or "")
    narrow = AddressPolicy.from_setting(["127.0.0.1/32", "169.254.0.0/16"])
    assert narrow.problem(ipaddress.ip_address("127.0.0.1")) is None
    assert narrow.problem(ipaddress.ip_address("::ffff:127.0.0.1")) is None
    assert "loopback" in (narrow.problem(ipaddress.ip_address("127.0.0.2")) or "")
    assert "metadata" in (narrow.problem(ipaddress.ip_address("169.254.169.254")) or "")


def test_the_guard_refuses_the_hubs_own_listening_address() -> None:
    policy = AddressPolicy(
        allow_private=True, own_addresses=lambda: [(ipaddress.ip_address("127.0.0.1"), 7070)]
    )
    assert "hub's own" in (policy.problem(ipaddress.ip_address("127.0.0.1"), 7070) or "")
    assert policy.problem(ipaddress.ip_address("127.0.0.1"), 7071) is None
    # 0.0.0.0 and :: connect to this host: they reached the hub's port with allow_private_network.
    for unspecified in ("0.0.0.0", "::", "::ffff:0.0.0.0"):
        for port in (7070, 7071, None):
            assert "unspecified" in (policy.problem(ipaddress.ip_address(unspecified), port) or "")
    assert "unspecified" in (
        AddressPolicy.from_setting(["0.0.0.0/0"]).problem(ipaddress.ip_address("0.0.0.0")) or ""
    )


@pytest.mark.anyio
@pytest.mark.parametrize("host", ["localhost", "2130706433", "0x7f000001", "::1", "::ffff:127.0.0.1"])
async def test_names_and_literals_are_checked_after_resolution(host: str) -> None:
    backend = GuardedBackend(AddressPolicy())
    with pytest.raises(AddressRefused, match="loopback"):
        await backend.resolve(host, 443)


@pytest.mark.anyio
async def test_an_allowed_network_resolves_to_the_checked_address() -> None:
    backend = GuardedBackend(AddressPolicy.from_setting(["127.0.0.0/8", "::1/128"]))
    assert [str(a) for a in await backend.resolve("2130706433", 80)] == ["127.0.0.1"]


# --- paths and routes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "services",
        "/../admin",
        "/a/%2e%2e/admin",
        "/a/%2E./b",
        "/a/./b",
        "/a%2fb",
        "/a\\b",
        "//evil.example/x",
        "/a?x=1",
        "/a#frag",
        "/a b",
        "/a\r\nHost: x",
        "/a//b",
    ],
)
def test_unsafe_paths_are_refused(path: str) -> None:
    with pytest.raises(ToolError):
        clean_path(path)


def test_clean_paths_pass_and_odd_characters_are_encoded() -> None:
    assert clean_path("/repos/o/r/issues") == "/repos/o/r/issues"
    assert clean_path("/search/a%20b") == "/search/a%20b"
    assert clean_path("/x/\u00e9") == "/x/%C3%A9"
    assert clean_path("/projects/o/p/issues/") == "/projects/o/p/issues/"


def test_routes_match_segments_and_carry_risk() -> None:
    table = RouteTable(
        [
            Route(frozenset({"GET"}), ("/services", "/services/*")),
            Route(frozenset({"POST"}), ("/services/*/deploys",)),
            Route(frozenset({"DELETE"}), ("/things/{id}",)),
            Route(frozenset({"GET"}), ("/contents/**",), risk="write"),
        ]
    )
    assert table.match("GET", "/services") == (table.routes[0], "read-only")
    assert table.match("GET", "/services/srv-1") is not None
    assert table.match("GET", "/services/srv-1/env-vars") is None
    assert table.match("POST", "/services/srv-1/deploys") == (table.routes[1], "write")
    assert table.match("DELETE", "/things/7") == (table.routes[2], "destructive")
    assert table.match("GET", "/contents/a/b/c.txt") == (table.routes[3], "write")
    assert table.match("PUT", "/services") is None


# --- rate limits -------------------------------------------------------------------------------------


def test_the_token_bucket_refuses_past_the_burst_and_refills() -> None:
    now = [100.0]
    limiter = RateLimiter(clock=lambda: now[0])
    assert [limiter.take("a", "s", 60, 2) for _ in range(2)] == [0.0, 0.0]
    wait = limiter.take("a", "s", 60, 2)
    assert wait == pytest.approx(1.0)
    assert limiter.take("b", "s", 60, 2) == 0.0  # buckets are per principal
    now[0] += 1.0
    assert limiter.take("a", "s", 60, 2) == 0.0


# --- OpenAPI -----------------------------------------------------------------------------------------

DOC = {
    "openapi": "3.0.3",
    "paths": {
        "/things/{id}": {
            "parameters": [{"$ref": "#/components/parameters/id"}],
            "get": {
                "operationId": "things.get",
                "parameters": [
                    {"name": "verbose", "in": "query", "schema": {"type": "boolean"}},
                    {"name": "X-Trace", "in": "header", "schema": {"type": "string"}},
                    {"name": "Authorization", "in": "header", "schema": {"type": "string"}},
                ],
            },
            "delete": {"operationId": "deleteThing"},
        },
        "/things": {
            "post": {
                "operationId": "createThing",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Thing"}}},
                },
            }
        },
    },
    "components": {
        "parameters": {"id": {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}},
        "schemas": {
            "Thing": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "nullable": True},
                    "size": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
                    "parent": {"$ref": "#/components/schemas/Thing"},
                },
            }
        },
    },
}


def test_openapi_operations_become_input_schemas() -> None:
    ops = {op.operation_id: op for op in operations(DOC, "*", "test")}
    get = ops["things.get"]
    assert get.method == "GET" and get.path == "/things/{id}"
    assert set(get.input_schema["properties"]) == {"id", "verbose", "X-Trace"}  # no Authorization
    assert get.input_schema["required"] == ["id"]
    create = ops["createThing"].input_schema
    thing = create["properties"]["body"]
    assert thing["properties"]["name"]["type"] == ["string", "null"]
    assert thing["properties"]["size"] == {"type": "number", "exclusiveMinimum": 0}
    assert "recursive" in thing["properties"]["parent"]["description"]
    assert create["required"] == ["body"]
    with pytest.raises(ConfigError, match="no operation 'nope'"):
        operations(DOC, ["nope"], "test")


def test_tool_names_are_sanitised_and_bounded() -> None:
    assert tool_name("github", "issues/list-for-repo") == "github_issues_list-for-repo"
    assert tool_name("svc", "things.get") == "svc_things_get"
    long = tool_name("svc", "x" * 100)
    assert len(long) == 64 and long != tool_name("svc", "x" * 99)


# --- options -----------------------------------------------------------------------------------------


def _service(**extra: object) -> dict[str, object]:
    return {
        "base_url": "https://api.example.com",
        "auth": {"type": "bearer", "secret": {"env": "K"}},
        **extra,
    }


@pytest.mark.parametrize(
    ("service", "message"),
    [
        (_service(auth={"type": "bearer", "secret": "sk-live-123456"}), "services.x.auth.secret"),
        (_service(auth={"type": "bearer", "secret": {"value": "sk-live-123456"}}), "inline secret"),
        (_service(auth={"type": "header", "secret": {"env": "K"}}), "needs `name`"),
        (_service(base_url="http://api.example.com"), "plain http"),
        (_service(base_url="ftp://x"), "expected an http(s) URL"),
        (_service(allow_private_network=["not-a-net"]), "not a network"),
        (_service(colour="blue"), "services.x.colour: unknown key"),
        (_service(headers={"Authorization": "x"}), "cannot be a fixed header"),
    ],
)
def test_bad_options_name_the_key(service: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_options({"services": {"x": service}})
    assert message in str(err.value)
    assert "sk-live-123456" not in str(err.value)


# --- secrets -----------------------------------------------------------------------------------------


def test_a_file_secret_rotates_and_a_bad_rewrite_keeps_the_last_good_key(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("first-key-0001\n")
    redactor = Redactor()
    auth = AuthSettings.model_validate({"type": "basic", "username": "svc", "secret": {"file": str(secret)}})
    source = CredentialSource("services.x.auth", auth, {}, redactor.add)
    first = source.current()
    assert first.generation == 1
    assert first.headers[0][1] == "Basic " + base64.b64encode(b"svc:first-key-0001").decode()
    secret.write_text("second-key-002\n")
    second = source.current()
    assert second.generation == 2 and second is not first
    tmp = tmp_path / "key.tmp"
    tmp.write_text("")
    os.replace(tmp, secret)
    assert source.current() is second and source.failures == 1
    text = f"{first.headers[0][1]} first-key-0001 second-key-002"
    assert "first-key" not in redactor.text(text) and "second-key" not in redactor.text(text)
    assert base64.b64encode(b"svc:first-key-0001").decode() not in redactor.text(text)
    assert "first-key-0001" not in repr(first)


def test_a_missing_secret_is_reported_as_missing(tmp_path: Path) -> None:
    auth = AuthSettings.model_validate({"type": "bearer", "secret": {"env": "NOT_SET_ANYWHERE"}})
    with pytest.raises(SecretMissing, match="NOT_SET_ANYWHERE is not set"):
        CredentialSource("services.x.auth", auth, {}, Redactor().add)
    auth = AuthSettings.model_validate({"type": "bearer", "secret": {"file": str(tmp_path / "none")}})
    with pytest.raises(SecretMissing, match="does not exist"):
        CredentialSource("services.x.auth", auth, {}, Redactor().add)
    auth = AuthSettings.model_validate({"type": "bearer", "secret": {"env": "SHORT"}})
    with pytest.raises(ConfigError, match="at least 8"):
        CredentialSource("services.x.auth", auth, {"SHORT": "abc"}, Redactor().add)


@pytest.mark.parametrize(
    ("target", "in_scope"),
    [
        ("https://api.example/v1/items", True),
        ("https://api.example/v1", True),
        ("https://api.example/v1/a/..b", True),
        ("https://api.example/v2/items", False),
        ("https://api.example/v1/../admin", False),  # httpx2 already resolves this one
        ("https://api.example/v1/%2e%2e/admin", False),  # it used to keep the credential
        ("https://api.example/v1/%2E%2e%2Fadmin", False),
        ("https://api.example/v1/..%5cadmin", False),
        ("https://api.example/v1/%2e/items", False),
        ("https://other.example/v1/items", False),
    ],
)
def test_a_redirect_keeps_the_credential_only_inside_the_base_path(target: str, in_scope: bool) -> None:
    from mcp_remote.tools.cloud.client import _same_scope

    assert _same_scope(httpx2.URL(target), httpx2.URL("https://api.example/v1")) is in_scope


def test_a_key_escaped_in_a_json_response_is_redacted_once_parsed(tmp_path: Path) -> None:
    """PHP writes `\\/`, others `\\u0063`: the byte-level pass missed those forms and parsing
    the JSON for the structured result brought the raw key back."""
    from mcp_local.outputs import OutputStore
    from mcp_local.redaction import Redactor
    from mcp_remote.tools.cloud.client import CloudResponse
    from mcp_remote.tools.cloud.results import ResponseView, response_result

    key = "canary/slash+0123456789abcdef"
    redactor = Redactor([key])
    view = ResponseView("agent-a", "svc", "GET", "/php", 4096, 1 << 20)
    for escaped in (key.replace("/", "\\/"), "".join(f"\\u{ord(c):04x}" for c in key)):
        body = b'{"key": "' + escaped.encode() + b'", "' + escaped.encode() + b'": 1}'
        response = CloudResponse(200, (("content-type", "application/json"),), body, False, "https://svc/php")
        result = response_result(view, response, [], redactor, OutputStore())
        shown = orjson.dumps(result.structured).decode() + "".join(
            getattr(c, "text", "") for c in result.content
        )
        assert key not in shown and escaped not in shown, shown
        assert result.structured is not None and result.structured["json"]["key"] == "[REDACTED]"


def test_a_zlib_deflate_body_arriving_a_byte_at_a_time_is_decoded() -> None:
    """Its first two bytes tell a zlib stream from raw deflate: one byte alone told it wrong."""
    from mcp_remote.tools.cloud.client import _Inflater

    data = zlib.compress(b"hello world" * 10)
    inflater = _Inflater("deflate", "svc", 100_000)
    out = b"".join(inflater.feed(data[i : i + 1], 100_000) for i in range(len(data)))
    inflater.check_complete()
    assert out == b"hello world" * 10


def test_a_body_that_does_not_compress_is_cut_at_the_cap_not_refused() -> None:
    """gzip makes such a body a little longer: the compressed bytes' bound allows for it."""
    from mcp_remote.tools.cloud.client import _Inflater

    body = os.urandom(100_000)
    packed = gzip.compress(body)
    assert len(packed) > len(body)
    inflater = _Inflater("gzip", "svc", 100_000)
    assert inflater.feed(packed, 100_000) == body


@pytest.mark.parametrize(
    ("codec", "content_type"),
    [
        ("utf-16", "application/json"),  # a BOM alone
        ("utf-16-le", "text/plain; charset=UTF-16"),  # no BOM: the byte order is guessed
        ("utf-16-be", "text/plain; charset=utf-16"),
        ("utf-32-le", 'text/plain; charset="utf-32le"'),
        ("utf-32", "text/plain"),
        ("cp500", "text/plain; charset=cp500"),  # EBCDIC: ASCII is not ASCII bytes there either
        ("utf-16-le", "application/json"),  # neither BOM nor charset: told by the zero bytes
        ("utf-32-be", "application/json"),
        ("utf-16-le", "application/json; charset=unicode"),  # Windows' name, unknown to Python
        ("utf-16-be", "text/plain; charset=UCS-2"),
    ],
)
def test_a_body_in_a_wide_charset_is_redacted_in_that_charset(codec: str, content_type: str) -> None:
    """It was read as latin-1: a key in UTF-16 has a NUL between its characters and was missed.
    The marker must come back in the body's own codec, and a cut last character stays as it was."""
    from mcp_remote.tools.cloud.results import redact_bytes

    key = "canary-wide-0123456789"
    note = "caf\u00e9 \u2713" if codec.startswith("utf") else "caf\u00e9"
    body = f'{{"token": "{key}", "note": "{note}"}}'.encode(codec)
    tail = b"\xd8" if codec.startswith("utf-16") else b""  # half a character, from a cut body
    out = redact_bytes(Redactor([key]), body + tail, content_type)
    assert out.endswith(tail)
    text = out[: len(out) - len(tail)].decode(codec)
    assert text.lstrip("\ufeff") == f'{{"token": "[REDACTED]", "note": "{note}"}}'
    assert redact_bytes(Redactor([key]), key.encode("utf-8"), "text/plain; charset=utf-8") == b"[REDACTED]"


def test_binary_data_that_looks_like_utf16_is_still_searched_byte_for_byte() -> None:
    """The zero bytes of a binary header can look like UTF-16: a plain ASCII key after them must
    be found as it was before bodies were decoded by their charset."""
    from mcp_remote.tools.cloud.results import redact_bytes

    key = "canary-binary-0123456789"
    body = b"\x01\x00\x02\x00" + bytes(range(256)) + key.encode() + b"\x00\xff"
    out = redact_bytes(Redactor([key]), body, "application/octet-stream")
    assert key.encode() not in out and b"[REDACTED]" in out
    assert out.startswith(b"\x01\x00\x02\x00" + bytes(range(256)))

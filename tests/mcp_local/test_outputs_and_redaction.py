from __future__ import annotations

import base64
import contextlib
import logging
import random
import time

import orjson
import pytest

from mcp_local import (
    OutputStore,
    Principal,
    RedactingFilter,
    Redactor,
    TextContent,
    ToolCall,
    ToolError,
    ToolResult,
    output_read_tool,
)
from mcp_local.outputs import ENTRY_OVERHEAD, MAX_PAGE_BYTES, PAGE_ANSWER_BUDGET, decode_page, text_page
from mcp_local.redaction import _ASSIGNMENTS, REDACTED, _keep_name

pytestmark = pytest.mark.anyio


def test_outputs_belong_to_their_principal_and_expire() -> None:
    now = [0.0]
    store = OutputStore(ttl_s=10, clock=lambda: now[0])
    shown, output_id = store.preview("alice", b"x" * 100, 10)
    assert shown == b"x" * 10 and output_id is not None
    assert store.get("alice", output_id).data == b"x" * 100
    with pytest.raises(ToolError, match="no output"):
        store.get("bob", output_id)
    now[0] = 11
    with pytest.raises(ToolError, match="no output"):
        store.get("alice", output_id)


def test_small_outputs_are_not_stored() -> None:
    assert OutputStore().preview("a", b"short", 10) == (b"short", None)


def test_the_store_evicts_oldest_beyond_its_budget() -> None:
    store = OutputStore(max_bytes=100)
    first = store.put("a", b"1" * 60)
    second = store.put("a", b"2" * 60)
    with pytest.raises(ToolError):
        store.get("a", first)
    assert store.get("a", second).data == b"2" * 60


def test_a_full_store_evicts_from_whoever_holds_the_most() -> None:
    store = OutputStore(max_bytes=10 * (1000 + ENTRY_OVERHEAD))
    kept = store.put("b", b"b" * 1000)
    flood = [store.put("a", b"a" * 1000) for _ in range(30)]
    assert store.get("b", kept).data == b"b" * 1000  # a's flood evicted a's own oldest
    with pytest.raises(ToolError):
        store.get("a", flood[0])
    assert store.get("a", flood[-1]).data == b"a" * 1000
    # b, now under its share, stores more and evicts a's, never its own.
    more = [store.put("b", b"c" * 1000) for _ in range(4)]
    assert all(store.get("b", i) for i in [kept, *more])
    one_big = store.put("c", b"x" * (20 * 1000))  # larger than the store: kept alone
    assert store.get("c", one_big).data == b"x" * 20000


async def test_output_read_pages_through() -> None:
    store = OutputStore()
    output_id = store.put("alice", b"abcdefghij", label="cmd output")
    tool = output_read_tool(store)
    call = ToolCall("output_read", b"")
    call.principal = Principal("alice")
    call.arguments = {"output_id": output_id, "offset": 4, "limit": 3}
    result = await tool.handler(call)
    assert isinstance(result, ToolResult) and len(result.content) == 1
    assert result.content[0] == TextContent("[cmd output: bytes 4-7 of 10; continue with offset 7]\nefg")
    assert result.structured == {
        "output_id": output_id,
        "offset": 4,
        "next_offset": 7,
        "size": 10,
        "dropped": 0,
        "encoding": "utf-8",
        "data": "efg",
    }


def test_registered_secrets_and_credential_shapes_are_redacted() -> None:
    redactor = Redactor(["canary-secret-value"])
    text = "key=canary-secret-value gh=ghp_" + "a" * 36 + " aws=AKIAABCDEFGHIJKLMNOP"
    assert redactor.text(text) == "key=[REDACTED] gh=[REDACTED] aws=[REDACTED]"
    assert redactor.value({"password": "hunter2", "nested": ["canary-secret-value"], "n": 1}) == {
        "password": "[REDACTED]",
        "nested": ["[REDACTED]"],
        "n": 1,
    }
    with pytest.raises(ValueError, match="too short"):
        redactor.add("abc")
    # A secret sent as an object key (the audit log's arguments, an approver's view) went through.
    keyed = Redactor(["canary-abcdef-0123"])
    assert keyed.value({"canary-abcdef-0123": 1, "x": {"a canary-abcdef-0123": [1]}}) == {
        "[REDACTED]": 1,
        "x": {"a [REDACTED]": [1]},
    }


@pytest.mark.parametrize(
    ("written", "recorded"),
    [
        ("mysql --password=S3cret-pw -u root", "mysql --password=[REDACTED] -u root"),
        ("mysql --password S3cret-pw -u root", "mysql --password [REDACTED] -u root"),
        ("PGPASSWORD=S3cret-pw psql", "PGPASSWORD=[REDACTED] psql"),
        ("export API_KEY='abc123def'", "export API_KEY='[REDACTED]'"),
        (
            """curl -d '{"token": "abc123def", "user": "x"}'""",
            """curl -d '{"token": "[REDACTED]", "user": "x"}'""",
        ),
        ("aws_secret_access_key = AbC/123+xyz", "aws_secret_access_key = [REDACTED]"),
        ("curl -H 'Authorization: Bearer abcdefgh1234'", "curl -H 'Authorization: Bearer [REDACTED]'"),
        ("mysql -u root -pS3cretPw db", "mysql -u root -p[REDACTED] db"),
        ("curl -u admin:S3cretPw2 https://x", "curl -u admin:[REDACTED] https://x"),
        ("psql postgresql://app:S3cretPw3@db/app", "psql postgresql://app:[REDACTED]@db/app"),
        ("MYSQL_PWD=S3cret4 mysql; DB_PASS=S3cret5 x", "MYSQL_PWD=[REDACTED] mysql; DB_PASS=[REDACTED] x"),
        ("mysql --password='ab;S3cretPw5'", "mysql --password='[REDACTED]'"),
        ('x --password="my S3cret pw"', 'x --password="[REDACTED]"'),
        ("PGPASSWORD=S3c\\&retPw psql", "PGPASSWORD=[REDACTED] psql"),
        ("sshpass -p S3cret7 ssh h", "sshpass -p [REDACTED] ssh h"),
        ("docker login -u me -p S3cret8 reg", "docker login -u me -p [REDACTED] reg"),
        ("curl -H 'Authorization: Token S3cret9'", "curl -H 'Authorization: Token [REDACTED]'"),
        ("curl -H 'Authorization: Basic dXNlcjpwYXNz' u", "curl -H 'Authorization: Basic [REDACTED]' u"),
        ("TOKEN='Hunter2Secret' ./run", "TOKEN='[REDACTED]' ./run"),
        ("PGPASSWORD='Hunt'\"Secret\" psql", "PGPASSWORD=[REDACTED] psql"),
        ('curl -H "X-Api-Key: Hunter2Secret" u', 'curl -H "X-Api-Key: [REDACTED]" u'),
        ("curl -H 'Authorization: Bearer abc123456789' u", "curl -H 'Authorization: Bearer [REDACTED]' u"),
        # Names alone, paths, words that only contain a name, and prose stay.
        ("cat --token-file=/run/secrets/t", "cat --token-file=/run/secrets/t"),
        ("git push --force; x --token --other", "git push --force; x --token --other"),
        ("bypass=1 compass=north echo token=", "bypass=1 compass=north echo token="),
        ("psql --no-password mydb; grep -rn token= src/", "psql --no-password mydb; grep -rn token= src/"),
        ("git commit -m 'rotate token: see ticket'", "git commit -m 'rotate token: see ticket'"),
        ("grep password: config.yml", "grep password: config.yml"),
        ("echo basic authentication works", "echo basic authentication works"),
        # Chromium's command line, as Playwright logs it: the option after `basic` is no credential.
        (
            "chromium --password-store=basic --use-mock-keychain --no-sandbox",
            "chromium --password-store=basic --use-mock-keychain --no-sandbox",
        ),
        ("ssh -p 22 h; mkdir -p dir; psql -p 5432", "ssh -p 22 h; mkdir -p dir; psql -p 5432"),
        ("openssl enc -pass pass:hunter22 x", "openssl enc -pass pass:[REDACTED] x"),
        # Review of e7913e8: ordinary arguments that were mangled.
        ("docker run -u 1000:1000 --user 0:0 x", "docker run -u 1000:1000 --user 0:0 x"),
        ("mysql -h db -P3306 -u root db", "mysql -h db -P3306 -u root db"),
        (
            "env PWD=/app make FIRST_PASS=1; x264 --pass 1 f",
            "env PWD=/app make FIRST_PASS=1; x264 --pass 1 f",
        ),
        ("authorization: see the docs", "authorization: see the docs"),
        ("gh auth login --with-token < token.txt", "gh auth login --with-token < token.txt"),
        (
            "curl http://localhost:8080?to=alice@example.com",
            "curl http://localhost:8080?to=alice@example.com",
        ),
    ],
)
def test_secrets_written_into_a_command_line_are_redacted_by_name(written: str, recorded: str) -> None:
    assert Redactor().text(written, assignments=True) == recorded
    assert Redactor().value({"command": [written]}, assignments=True) == {"command": [recorded]}
    # Only where asked: a service's answer (code full of `token = ...`) is left as it is.
    assert Redactor().text(written) == written


def test_the_logging_filter_redacts_messages(caplog: pytest.LogCaptureFixture) -> None:
    redactor = Redactor(["canary-secret-value"])
    logger = logging.getLogger("test.redaction")
    logger.addFilter(RedactingFilter(redactor))
    with caplog.at_level(logging.INFO, logger="test.redaction"):
        logger.info("calling with %s", "canary-secret-value")
    assert "canary-secret-value" not in caplog.text and "[REDACTED]" in caplog.text


async def _read_all(store: OutputStore, output_id: str, limit: int, offset: int = 0) -> list[tuple[str, str]]:
    """Every page (header, content) from `offset`, following the offset each header gives."""
    tool = output_read_tool(store)
    pages = []
    while True:
        call = ToolCall("output_read", b"")
        call.principal = Principal("alice")
        call.arguments = {"output_id": output_id, "offset": offset, "limit": limit}
        result = await tool.handler(call)
        assert isinstance(result, ToolResult) and isinstance(result.content[0], TextContent)
        header, _, content = result.content[0].text.partition("\n")
        pages.append((header, content))
        assert result.structured is not None and result.structured["data"] == content
        if "end of output" in header:
            assert result.structured["next_offset"] is None
            return pages
        offset = int(header.rsplit("continue with offset ", 1)[1].rstrip("]"))
        assert result.structured["next_offset"] == offset


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 5, 7])
async def test_output_read_never_cuts_a_character_in_two(limit: int) -> None:
    text = "héllo wörld ✓ 𝄞 ok"  # characters of 1, 2, 3 and 4 bytes
    store = OutputStore()
    output_id = store.put("alice", text.encode(), label="out")
    pages = await _read_all(store, output_id, limit)
    assert "".join(content for _, content in pages) == text
    assert all(content and "\ufffd" not in content for _, content in pages)


async def test_output_read_shows_bytes_that_are_not_text_as_base64() -> None:
    blob = bytes(range(128, 256)) * 3  # no page of it is UTF-8
    store = OutputStore()
    output_id = store.put("alice", blob, label="bin")
    pages = await _read_all(store, output_id, 100)
    assert all("not UTF-8 text, shown as base64" in header for header, _ in pages)
    assert b"".join(base64.b64decode(content) for _, content in pages) == blob


def test_a_page_is_text_or_base64_and_never_ends_inside_a_character() -> None:
    assert decode_page("é".encode() + b"\xc3", more=True) == ("é", "utf-8", 2)
    assert decode_page(b"ok\xc3", more=False) == ("ok", "utf-8", 2)  # the fragment is a page of its own
    assert decode_page(b"\xc3", more=False) == ("ww==", "base64", 1)
    assert decode_page(b"ab\xffcd", more=True) == ("YWL/Y2Q=", "base64", 5)  # not text: base64, whole
    assert decode_page(b"\xff\xfe", more=True) == ("//4=", "base64", 2)
    assert decode_page(b"\xffab\xe2\x9c", more=True) == (base64.b64encode(b"\xffab").decode(), "base64", 3)
    assert decode_page(b"\xa9ok", more=True)[1] == "base64"  # starts inside a character


async def test_an_offset_past_the_end_is_refused() -> None:
    store = OutputStore()
    output_id = store.put("alice", b"abc")
    end = await _read_all(store, output_id, 10, offset=3)
    assert end == [(f"[{output_id}: bytes 3-3 of 3; end of output]", "")]
    with pytest.raises(ToolError, match=r"offset 4 is past the end of out_\S+ \(3 bytes\)"):
        await _read_all(store, output_id, 10, offset=4)


async def test_text_after_binary_reads_as_text() -> None:
    """A base64 page ends before a character it would cut, so the page after it starts on one."""
    store = OutputStore()
    output_id = store.put("alice", b"\xff" + "é".encode() * 300, label="out")
    pages = await _read_all(store, output_id, 100)
    assert ["base64" in header for header, _ in pages] == [True] + [False] * (len(pages) - 1)
    assert base64.b64decode(pages[0][1]) == b"\xff" + "é".encode() * 49
    assert "".join(content for _, content in pages[1:]) == "é" * 251


async def test_paging_any_bytes_by_the_headers_gives_them_back_exactly() -> None:
    rng = random.Random(7)
    parts = [b"a", b"\n", "é".encode(), "✓".encode(), "𝄞".encode(), b"\xff", b"\xc3", b"\x80", b"\x00"]
    for _ in range(200):
        data = b"".join(rng.choice(parts) for _ in range(rng.randrange(0, 40)))
        store = OutputStore()
        output_id = store.put("alice", data, label="out")
        pages = await _read_all(store, output_id, rng.randrange(1, 10))
        whole = b""
        for header, content in pages:
            whole += base64.b64decode(content) if "base64" in header else content.encode()
        assert whole == data, (data, pages)


@pytest.mark.parametrize("limit", range(1, 8))
def test_text_pages_never_cut_a_character(limit: int) -> None:
    data = "aé€😀b\n".encode() * 3
    pages, offset = [], 0
    while offset < len(data):
        chunk = data[offset : offset + limit + 3]  # as the readers do: up to 3 bytes past the limit
        used = text_page(chunk, limit, more=offset + len(chunk) < len(data))
        assert 0 < used <= max(limit, 4)
        pages.append(chunk[:used].decode())  # strict: a cut character would raise
        offset += used
    assert "".join(pages) == data.decode()


def test_a_text_page_holds_back_a_character_still_being_written() -> None:
    assert text_page("ab€".encode()[:4], 64, more=True) == 2  # "ab" and the first 2 bytes of "€"
    assert text_page("ab€".encode()[:4], 64, more=False) == 4  # the end: shown as it is


def test_many_small_outputs_are_bounded_by_the_store_size() -> None:
    """Found in review: the store counted only the data, so a million one-byte outputs (small
    binary shell outputs are kept now) held hundreds of MB beyond max_bytes."""
    from mcp_local.outputs import ENTRY_OVERHEAD

    store = OutputStore(max_bytes=10 * (ENTRY_OVERHEAD + 1))
    ids = [store.put("p", b"x") for _ in range(100)]
    kept = []
    for output_id in ids:
        with contextlib.suppress(ToolError):
            kept.append(store.get("p", output_id).output_id)
    assert kept == ids[-10:]


def test_a_dsn_password_is_redacted_as_typed_and_as_percent_encoded() -> None:
    redactor = Redactor()
    redactor.add_dsn("postgresql://app:AuPw%40Secret_77x@127.0.0.1:5432/audit")
    assert (
        redactor.text("decoded AuPw@Secret_77x encoded AuPw%40Secret_77x")
        == "decoded [REDACTED] encoded [REDACTED]"
    )


@pytest.mark.parametrize(
    ("echoed", "shown"),
    [
        # Go's encoding/json escapes & < > as \u0026 \u003c \u003e; .NET's escapes + too.
        ('{"token": "sk-live-A\\u0026B\\u003cC\\u003eD-123456"}', '{"token": "[REDACTED]"}'),
        ('{"token": "\\u0073k-live-A&B<C>D-123456"}', '{"token": "[REDACTED]"}'),  # any character
        ("?k=sk-live-A%26B%3cC%3eD-123456&x=1", "?k=[REDACTED]&x=1"),  # lowercase hex
        ("?k=sk%2Blive/KEY%3Dabc123", "?k=[REDACTED]"),  # quote() keeps "/"
        ("?k=sk%2blive%2fKEY%3dabc123 and sk+live\\/KEY=abc123", "?k=[REDACTED] and [REDACTED]"),
        # a basic credential's base64, URL-encoded on its way into a redirect
        ("?auth=Ym9iOmJiLUJBU0lDUEFTUy0xMTIyMzM0NA%3D%3D", "?auth=[REDACTED]"),
        ("%41%42 \\u0041 \\/ 100% kept", "%41%42 \\u0041 \\/ 100% kept"),
    ],
)
def test_a_secret_spelled_with_escapes_is_redacted(echoed: str, shown: str) -> None:
    """Reported: a service echoing its key as Go's JSON writes it, or in a redirect URL
    encoded with lowercase hex or by `quote()`, gave the key to the agent: only the spellings
    registered were looked for."""
    secrets = ["sk-live-A&B<C>D-123456", "sk+live/KEY=abc123", "Ym9iOmJiLUJBU0lDUEFTUy0xMTIyMzM0NA=="]
    assert Redactor(secrets).text(echoed) == shown


def test_long_text_gets_every_form() -> None:
    """Text over 16 KiB (a command with a long argument, a file's content) got the registered
    secrets and key shapes only, and its `PGPASSWORD=...` was recorded as it was."""
    redactor = Redactor(["registered-secret-1234"])
    command = "true " + "y" * 17_000 + " PGPASSWORD=LongCmdSecret12 psql registered-secret-1234"
    assert redactor.text(command, assignments=True) == (
        "true " + "y" * 17_000 + " PGPASSWORD=[REDACTED] psql [REDACTED]"
    )
    dotenv = "".join(f"SETTING_{i}=value-{i}\n" for i in range(1_000)) + "DB_PASSWORD=LongFileSecret11\n"
    assert len(dotenv) > 17_000
    assert redactor.value({"content": dotenv}, assignments=True) == {
        "content": dotenv.replace("LongFileSecret11", REDACTED)
    }


def test_searching_from_anchors_finds_what_searching_everywhere_does() -> None:
    """The forms are tried only where a match can start (the words each holds): on any mix of
    the words they look for, that finds what trying them at every position finds."""
    pieces = [
        *("pass", "password", "PASSWORD", "secret", "token", "api_key", "_pwd", "=", ":", "\n", "\t"),
        *("'", '"', "--", "-", "$'", "\\", ";", "|", "}"),
        *(" ", " = ", ": ", "-H ", "--header ", "curl ", "-u ", "user:", "http://", "https://u:", "@host"),
        *("mysql ", "-p", "sshpass ", "docker ", "login ", "bearer ", "Basic ", "authorization: ", "pass:"),
        *("abc123", "hunter22", "x.y", ".", "-helm", "-http", "Wget", "--no-", "db.", "1234567890", "yy"),
        *("MariaDB ", "X-Api-Key: ", "é", "\u017f", "İ"),  # long s: "s" to `(?i)`
    ]
    rnd = random.Random(7)
    for _ in range(2_000):
        text = "".join(rnd.choice(pieces) for _ in range(rnd.randint(20, 200)))
        if rnd.random() < 0.5:
            text = text.encode("ascii", "ignore").decode()  # lowercased to find the words
        assert Redactor().text(text, assignments=True) == _ASSIGNMENTS.sub(_keep_name, text), text


@pytest.mark.parametrize(
    "written, recorded",
    [
        ("POSTGRES_PASSWORD: ComposeSecret8", "POSTGRES_PASSWORD: [REDACTED]"),
        (
            "services:\n  db:\n    environment:\n      password: YamlSecret9\n      user: app\n",
            "services:\n  db:\n    environment:\n      password: [REDACTED]\n      user: app\n",
        ),
        ("api_key: 'quoted Secret10'\ntoken:\tTabSecret11", "api_key: '[REDACTED]'\ntoken:\t[REDACTED]"),
        # Prose loses a word, not the sentence; not first on its line, nothing.
        ("password: please enter it", "password: [REDACTED] enter it"),
        ("grep password: config.yml\nsee token: x", "grep password: config.yml\nsee token: x"),
        ("password:NoSpace12\npassword: |", "password:NoSpace12\npassword: |"),
    ],
)
def test_secrets_written_as_yaml_are_redacted_by_name(written: str, recorded: str) -> None:
    """`name: value` first on its line (a compose file, an fs_write of YAML) was recorded whole,
    while `"name": "value"` and `name=value` were redacted."""
    assert Redactor().text(written, assignments=True) == recorded
    padded = "#" * 1_000 + "\n" + written  # and searched from its anchors
    assert Redactor().text(padded, assignments=True) == "#" * 1_000 + "\n" + recorded


@pytest.mark.parametrize(
    "text",
    [
        "eyJ" * 87_381,  # JWT-like runs
        "-----BEGIN RSA PRIVATE KEY-----" * 8_456,  # BEGIN after BEGIN, no END
        ("curl -u " * 32_768)[:262_144],  # a command's words scanned for its option
        ("y." * 7_999 + "=x ") * 16,  # a name's characters scanned from every "."
        ("a." * 7_999 + "://u:p@h ") * 16,  # a scheme's characters, likewise
        ("--." * 5_333 + "=x ") * 16,  # a long option's, likewise
        ("docker login login -u " * 11_916)[:262_144],  # each "login" within reach scanned for -p
        "registered%20" * 20_165,  # escapes to decode, and a part of the secret to look for
    ],
    ids=["jwt", "pem", "curl", "dots", "scheme", "option", "login", "escapes"],
)
def test_redaction_takes_time_in_proportion_to_the_text(text: str) -> None:
    """Patterns were tried from every start to the end of the text: 256 KB of such text took
    about a quarter of a minute, on the hub's event loop, for every caller, and 16 KB of "y.y.y."
    eleven seconds. Linear now: at most about 0.3 s for 256 KB of the densest of these (most text
    takes a hundredth of that); the bound is many times that."""
    started = time.perf_counter()
    Redactor(["registered-secret"]).text(text, assignments=True)
    Redactor().value({"a": text[:16_000], "b": text[:16_000]}, assignments=True)
    assert time.perf_counter() - started < 5.0


def test_private_keys_in_pem_are_redacted_whole_and_what_surrounds_them_kept() -> None:
    key = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB\nAbc==\n-----END EC PRIVATE KEY-----"
    text = f"before {key} middle {key.replace('EC ', '')} after -----BEGIN PRIVATE KEY----- cut"
    assert Redactor().text(text) == (
        f"before {REDACTED} middle {REDACTED} after -----BEGIN PRIVATE KEY----- cut"
    )


@pytest.mark.parametrize(
    "data", [b"\0" * 700_000, b"a" * 700_000, bytes(range(256)) * 3000], ids=["nul", "ascii", "binary"]
)
async def test_an_output_read_page_weighs_under_one_mib_as_json(data: bytes) -> None:
    """The page's data goes out twice (text and `structuredContent.data`), JSON-escaped (a control
    character is six bytes): pages of the largest limit were over the 1 MiB an SDK client takes."""
    store = OutputStore()
    output_id = store.put("alice", data, label="big")
    tool = output_read_tool(store)
    offset: int | None = 0
    read = b""
    while offset is not None:
        call = ToolCall("output_read", b"")
        call.principal = Principal("alice")
        call.arguments = {"output_id": output_id, "offset": offset, "limit": MAX_PAGE_BYTES}
        result = await tool.handler(call)
        assert isinstance(result, ToolResult) and isinstance(result.content[0], TextContent)
        page = result.structured
        assert page is not None
        answer = {"content": [{"type": "text", "text": result.content[0].text}], "structuredContent": page}
        assert len(orjson.dumps(answer)) <= PAGE_ANSWER_BUDGET + 1024
        read += base64.b64decode(page["data"]) if page["encoding"] == "base64" else page["data"].encode()
        offset = page["next_offset"]
    assert read == data

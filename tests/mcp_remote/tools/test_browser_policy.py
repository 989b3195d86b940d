"""The URL policy's decisions (pure), and the policy proxy enforcing them on real sockets."""

from __future__ import annotations

import asyncio
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from mcp_local.errors import ConfigError, ToolError
from mcp_remote.tools.browser import UrlPolicy, parse_rule
from mcp_remote.tools.browser import workspace as browser_workspace
from mcp_remote.tools.browser.options import parse_options
from mcp_remote.tools.browser.policy import IPAddress
from mcp_remote.tools.browser.proxy import PolicyProxy
from mcp_remote.tools.browser.render import parse_ref
from mcp_remote.tools.browser.workspace import (
    read_for_upload,
    resolve_in_workspace,
    safe_file_name,
    save_download,
    workspace_dir,
)
from mcp_remote.tools.shell.workspace import workspace_dir_name
from tests.mcp_remote.tools.browser_site import own_address, serve_site


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def test_default_policy_blocks_schemes_metadata_loopback_and_link_local() -> None:
    policy = UrlPolicy.build()
    assert policy.check_url("https://example.com/") is None
    assert policy.check_url("http://10.1.2.3:8080/app") is None  # private networks: the sandbox's own apps
    assert policy.check_url("about:blank") is None
    for url, why in {
        "file:///etc/passwd": "file: URLs may not be opened",
        "chrome://version": "chrome: URLs may not be opened",
        "view-source:https://example.com": "view-source: URLs",
        "javascript:alert(1)": "javascript: URLs",
        "data:text/html,hi": "data: URLs",
        "http://169.254.169.254/latest/meta-data/": "a cloud metadata address",
        "http://[fd00:ec2::254]/": "a cloud metadata address",
        "http://metadata.google.internal/": "a cloud metadata service",
        "http://127.0.0.1:8000/": "a loopback address",
        "http://[::1]/": "a loopback address",
        "http://[::ffff:127.0.0.1]/": "a loopback address",
        "http://169.254.1.1/": "a link-local address",
        "http://0.0.0.0:80/": "the unspecified address",
    }.items():
        reason = policy.check_url(url)
        assert reason is not None and why in reason, (url, reason)


def test_names_are_judged_by_the_addresses_they_resolve_to() -> None:
    policy = UrlPolicy.build()
    reason = policy.check_target("sneaky.example", 80, [ip("169.254.169.254")])
    assert reason is not None and "resolves to 169.254.169.254" in reason
    assert policy.check_target("fine.example", 443, [ip("93.184.216.34")]) is None
    assert policy.check_target("localhost", 80, [ip("127.0.0.1")]) is not None


def test_allow_lifts_defaults_block_wins_and_default_block_is_an_allowlist() -> None:
    policy = UrlPolicy.build(allow=["127.0.0.1", "*.corp.example"], block=["bad.corp.example", "10.0.0.0/8"])
    assert policy.check_url("http://127.0.0.1:9999/") is None
    assert policy.check_url("http://a.corp.example/") is None
    assert policy.check_url("http://corp.example/") is None
    assert "block ('bad.corp.example')" in (policy.check_url("http://bad.corp.example/") or "")
    assert "block ('10.0.0.0/8')" in (policy.check_url("http://10.9.9.9/") or "")
    only = UrlPolicy.build(allow=["example.com:443"], default_allow=False)
    assert only.check_url("https://example.com/") is None
    assert "not in the browser option allow" in (only.check_url("http://example.com/") or "")
    assert "not in the browser option allow" in (only.check_url("https://other.example/") or "")


def test_the_hubs_own_ports_stay_blocked_even_when_loopback_is_allowed() -> None:
    policy = UrlPolicy.build(
        allow=["127.0.0.0/8", "0.0.0.0/0"],
        hub_addresses=lambda: ("127.0.0.1:7070", "[::1]:7071"),
        local_addresses=[ip("192.0.2.10")],
    )
    for url in (
        "http://127.0.0.1:7070/",
        "http://127.0.0.2:7070/",
        "http://localhost:7071/mcp",
        "http://[::1]:7071/",
        "http://192.0.2.10:7070/",
    ):
        assert "this hub's own address" in (policy.check_url(url) or ""), url
    assert policy.check_url("http://127.0.0.1:7072/") is None


def test_rules_are_validated_with_a_readable_error() -> None:
    assert parse_rule("[::1]:8080").port == 8080
    assert parse_rule("example.com:*").port is None
    for bad in ("", "a b", "host:99999", "[::1]x"):
        with pytest.raises(ValueError):
            parse_rule(bad)
    with pytest.raises(ConfigError, match=r"allow: .*port must be 1-65535"):
        parse_options({"allow": ["example.com:0"]})
    with pytest.raises(ConfigError, match="bogus: unknown option"):
        parse_options({"bogus": 1})


def test_refs_and_selectors_are_told_apart() -> None:
    assert parse_ref("e12") == "e12"
    assert parse_ref("[ref=f2e7]") == "f2e7"
    assert parse_ref("aria-ref=e3") == "e3"
    assert parse_ref("#e12") is None
    assert parse_ref("button.e1") is None


def test_workspace_paths_cannot_escape(tmp_path: Path) -> None:
    workspace = tmp_path / "workspaces" / "agent"
    workspace.mkdir(parents=True)
    (workspace / "a.txt").write_text("a")
    (workspace / "link").symlink_to(tmp_path)
    assert resolve_in_workspace(workspace, "a.txt") == (workspace / "a.txt").resolve()
    assert resolve_in_workspace(workspace, str(workspace / "a.txt")) == (workspace / "a.txt").resolve()
    for bad in ("../x", "link/workspaces/agent/a.txt/..", "/etc/hostname", "link", "."):
        with pytest.raises(ToolError):
            resolve_in_workspace(workspace, bad)
    with pytest.raises(ToolError):
        workspace_dir(tmp_path, "..")
    # The shell pack's directory for the same principal (found in review: ".agent" had two).
    assert workspace_dir(tmp_path, ".agent") == tmp_path / workspace_dir_name(".agent") != tmp_path / ".agent"
    assert workspace_dir(tmp_path, "agent-a") == tmp_path / "agent-a"
    assert safe_file_name("../../etc/passwd") == "passwd"
    assert safe_file_name("rep ort;rm -rf.pdf") == "rep ort_rm -rf.pdf"
    assert safe_file_name("...") == "download"


def test_an_upload_is_read_from_what_was_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workspace = tmp_path / "workspaces" / "agent"
    (workspace / "d").mkdir(parents=True)
    (workspace / "d" / "token.txt").write_text("harmless")
    secrets = tmp_path / "hub"
    secrets.mkdir()
    (secrets / "token.txt").write_text("hub secret")
    assert read_for_upload(workspace, ["d/token.txt"]) == [("token.txt", b"harmless")]

    # The agent swaps `d` for a link between the check and the read: the read refuses.
    checked = browser_workspace.resolve_in_workspace

    def check_then_swap(ws: Path, path: str) -> Path:
        resolved = checked(ws, path)
        (workspace / "d").rename(workspace / "d0")
        (workspace / "d").symlink_to(secrets)
        return resolved

    monkeypatch.setattr(browser_workspace, "resolve_in_workspace", check_then_swap)
    with pytest.raises(ToolError, match="outside your workspace"):
        read_for_upload(workspace, ["d/token.txt"])
    monkeypatch.undo()
    (workspace / "d").unlink()
    (workspace / "d0").rename(workspace / "d")

    # A FIFO put in the file's place is refused at once, not waited on.
    os.mkfifo(workspace / "fifo")
    monkeypatch.setattr(browser_workspace, "resolve_in_workspace", lambda ws, path: ws / "fifo")
    with pytest.raises(ToolError, match="not a regular file"):
        read_for_upload(workspace, ["d/token.txt"])
    monkeypatch.undo()

    # The limit is for all the files of one upload together.
    (workspace / "b.bin").write_bytes(b"x" * 6)
    assert len(read_for_upload(workspace, ["b.bin"], limit=12)) == 1
    with pytest.raises(ToolError, match="may hold"):
        read_for_upload(workspace, ["b.bin", "b.bin", "b.bin"], limit=12)


def test_a_download_never_goes_through_a_link(tmp_path: Path) -> None:
    source = tmp_path / "artifact"
    source.write_bytes(b"from a website")
    workspace = tmp_path / "workspaces" / "agent"
    assert save_download(workspace, source, "r.txt") == "r.txt"
    assert save_download(workspace, source, "r.txt") == "r-1.txt"
    elsewhere = tmp_path / "etc-cron.d"
    elsewhere.mkdir()
    (workspace / "downloads" / "job").symlink_to(elsewhere / "job")  # dangling
    assert save_download(workspace, source, "job") == "job-1"
    (workspace / "downloads").rename(workspace / "kept")
    (workspace / "downloads").symlink_to(elsewhere)
    with pytest.raises(ToolError, match="not a directory"):
        save_download(workspace, source, "job")
    assert list(elsewhere.iterdir()) == []
    assert (workspace / "kept" / "r-1.txt").read_bytes() == b"from a website"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files away takes root")
def test_a_download_belongs_to_the_workspace_owner(tmp_path: Path) -> None:
    # The shell pack runs a sandbox's commands as the uid that owns its workspace.
    source = tmp_path / "artifact"
    source.write_bytes(b"data")
    workspace = tmp_path / "workspaces" / "agent"
    workspace.mkdir(parents=True, mode=0o700)
    os.chown(workspace, 100_123, 100_000)
    saved = save_download(workspace, source, "r.txt")
    for path in (workspace / "downloads", workspace / "downloads" / saved):
        assert (path.stat().st_uid, path.stat().st_gid) == (100_123, 100_000), path


# --- the proxy on real sockets -------------------------------------------------------------------


async def _exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    return data


@pytest.mark.anyio
async def test_proxy_forwards_allowed_requests_and_refuses_the_rest() -> None:
    async def resolver(host: str, port: int) -> Sequence[IPAddress]:
        return {"metadata.test": [ip("169.254.169.254")], "site.test": [ip("127.0.0.1")]}[host]

    with serve_site() as site:
        proxy = PolicyProxy(UrlPolicy.build(allow=[f"127.0.0.1:{site.port}"]), resolver=resolver)
        port = await proxy.start()
        try:
            ok = await _exchange(
                port,
                f"GET http://site.test:{site.port}/echo?n=7 HTTP/1.1\r\nHost: site.test\r\n\r\n".encode(),
            )
            assert ok.startswith(b"HTTP/1.0 200") or ok.startswith(b"HTTP/1.1 200")
            assert b"Connection: close" in ok and b"Echo 7" in ok

            refused = await _exchange(
                port, b"GET http://metadata.test/ HTTP/1.1\r\nHost: metadata.test\r\n\r\n"
            )
            assert refused.startswith(b"HTTP/1.1 403")
            assert b"resolves to 169.254.169.254" in refused
            assert "cloud metadata" in (proxy.recent_block("metadata.test") or "")

            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"CONNECT site.test:{site.port} HTTP/1.1\r\nHost: site.test\r\n\r\n".encode())
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 200 Connection Established\r\n\r\n"
            writer.write(b"GET /echo?n=tunnelled HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n")
            assert b"Echo tunnelled" in await asyncio.wait_for(reader.read(-1), 10)
            writer.close()

            tunnel = await _exchange(port, b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n")
            assert tunnel.startswith(b"HTTP/1.1 403") and b"loopback" in tunnel
        finally:
            await proxy.stop()


@pytest.mark.anyio
async def test_proxy_knows_this_machine_by_the_connection_and_an_allow_rule_opens_it() -> None:
    # Not told the machine's addresses, the proxy still sees it connected to itself
    # (the connection's two ends are one address) and refuses, unless a rule allows it.
    own = own_address()
    if own is None:
        pytest.skip("this machine has no address but loopback")
    request = f"GET http://{own}:{{port}}/echo?n=own HTTP/1.1\r\nHost: {own}\r\n\r\n"
    with serve_site("0.0.0.0") as site:
        for allow, expected in (([], b"HTTP/1.1 403"), ([own], b"HTTP/1.")):
            proxy = PolicyProxy(UrlPolicy.build(allow=allow))
            port = await proxy.start()
            try:
                answer = await _exchange(port, request.format(port=site.port).encode())
            finally:
                await proxy.stop()
            assert answer.startswith(expected), (allow, answer[:200])
            if allow:
                assert b"Echo own" in answer
            else:
                assert b"an address of this machine" in answer


def test_this_machines_addresses_are_blocked_by_default_and_can_be_allowed() -> None:
    mine = [ip("192.0.2.10"), ip("2001:db8::10")]
    policy = UrlPolicy.build(local_addresses=mine)
    for url in ("http://192.0.2.10:8080/", "http://[2001:db8::10]/"):
        assert "an address of this machine" in (policy.check_url(url) or ""), url
    assert "resolves to 192.0.2.10" in (policy.check_target("me.example", 80, [ip("192.0.2.10")]) or "")
    assert policy.check_url("http://192.0.2.11/") is None
    allowed = UrlPolicy.build(allow=["192.0.2.10:8080"], local_addresses=mine)
    assert allowed.check_url("http://192.0.2.10:8080/") is None
    assert allowed.check_url("http://192.0.2.10:8081/") is not None


@pytest.mark.anyio
async def test_stopping_the_proxy_with_a_request_in_flight_reports_no_error() -> None:
    """The hub's stop cancels the proxy's connections; a cancelled connection task made asyncio
    log an ERROR traceback ("Exception in callback ... CancelledError") in every such stop."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    held: list[asyncio.StreamWriter] = []
    reached = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # never answers
        reached.set()

    upstream = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = upstream.sockets[0].getsockname()[1]
    proxy = PolicyProxy(UrlPolicy.build(allow=[f"127.0.0.1:{port}"]))
    try:
        proxy_port = await proxy.start()
        _, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
        writer.write(f"GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await asyncio.wait_for(reached.wait(), 10)
        await proxy.stop()
        for _ in range(5):
            await asyncio.sleep(0.02)  # the done callbacks of the cancelled tasks run
        writer.close()
        await writer.wait_closed()
    finally:
        loop.set_exception_handler(previous)
        for w in held:
            w.close()
        upstream.close()
        await upstream.wait_closed()
    assert not reported, [str(c.get("message")) + repr(c.get("exception")) for c in reported]

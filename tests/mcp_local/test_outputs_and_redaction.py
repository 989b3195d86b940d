from __future__ import annotations

import logging

import pytest

from mcp_local import OutputStore, Principal, RedactingFilter, Redactor, ToolCall, ToolError, output_read_tool

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


async def test_output_read_pages_through() -> None:
    store = OutputStore()
    output_id = store.put("alice", b"abcdefghij", label="cmd output")
    tool = output_read_tool(store)
    call = ToolCall("output_read", b"")
    call.principal = Principal("alice")
    call.arguments = {"output_id": output_id, "offset": 4, "limit": 3}
    text = await tool.handler(call)
    assert text == "[cmd output: bytes 4-7 of 10; continue with offset 7]\nefg"


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


def test_the_logging_filter_redacts_messages(caplog: pytest.LogCaptureFixture) -> None:
    redactor = Redactor(["canary-secret-value"])
    logger = logging.getLogger("test.redaction")
    logger.addFilter(RedactingFilter(redactor))
    with caplog.at_level(logging.INFO, logger="test.redaction"):
        logger.info("calling with %s", "canary-secret-value")
    assert "canary-secret-value" not in caplog.text and "[REDACTED]" in caplog.text

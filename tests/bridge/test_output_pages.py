"""Every `output_read` page reaches the official SDK client whole: a 2025-era session answers with
one server-sent event, which that client refuses over 1 MiB, and a page carries its data twice
(text and `structuredContent.data`), JSON-escaped. Pages of 500 KB and more broke it."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator

import pytest

from mcp_local.outputs import MAX_PAGE_BYTES
from tests.support.clients import ToolClient, connect
from tests.support.hub import RunningHub, start_hub

SIZE = 700_000


@pytest.fixture(scope="module")
def shell_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    hub = start_hub(tmp_path_factory.mktemp("pages-hub"), packs=["shell"])
    try:
        yield hub
    finally:
        hub.stop()


async def _read_whole(client: ToolClient, output_id: str) -> bytes:
    data, offset = b"", 0
    while offset is not None:
        outcome = await client.call(
            "output_read", {"output_id": output_id, "offset": offset, "limit": MAX_PAGE_BYTES}
        )
        assert not outcome.is_error, outcome.text
        page = outcome.structured
        text = outcome.text.partition("\n")[2]
        assert text == page["data"]  # the text and the structured page say the same
        data += base64.b64decode(page["data"]) if page["encoding"] == "base64" else page["data"].encode()
        assert page["next_offset"] is None or page["next_offset"] > offset
        offset = page["next_offset"]
    return data


@pytest.mark.parametrize("transport", ["mcp-2025", "stdio"])
@pytest.mark.parametrize(
    ("command", "expected"),
    [
        # NUL: a control character, six bytes once escaped, twice over: the worst case.
        (f"head -c {SIZE} /dev/zero", b"\0" * SIZE),
        ("seq 1 120000", "".join(f"{n}\n" for n in range(1, 120001)).encode()),
        (f"head -c {SIZE} /dev/urandom", None),  # not UTF-8: base64
    ],
    ids=["control", "ascii", "binary"],
)
async def test_pages_of_the_largest_limit_reach_the_sdk_client(
    shell_hub: RunningHub, transport: str, command: str, expected: bytes | None
) -> None:
    async with connect(transport, shell_hub.grpc, shell_hub.mcp_url, None) as client:
        outcome = await client.call("shell_exec", {"command": command})
        assert not outcome.is_error, outcome.text
        match = re.search(r"out_[A-Za-z0-9_-]+", outcome.text)
        assert match, outcome.text
        data = await _read_whole(client, match.group(0))
        assert data == expected if expected is not None else len(data) == SIZE

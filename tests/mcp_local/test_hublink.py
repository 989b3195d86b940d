"""The hub link: its reconnect backoff (full jitter between half the step and the step, capped), and
how it cancels the calls of a real hub."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest

from bridge.hubclient import HubClient
from mcp_local.hublink import Backoff
from mcphub_proto.v1 import toolhub_pb2 as pb
from tests.mcp_remote.test_federation import TOKENS, hub_config, tool_names, wait_for
from tests.support.hub import REPO, RunningHub, start_hub
from tests.support.sidecar import RunningSidecar, start_sidecar

pytestmark = pytest.mark.anyio


def test_backoff_delays_grow_stay_in_their_window_and_vary() -> None:
    backoff = Backoff(first_s=0.5, max_s=30.0)
    for attempt, ceiling in [(0, 0.5), (1, 1.0), (3, 4.0), (6, 30.0), (40, 30.0)]:
        delays = [backoff.delay(attempt) for _ in range(200)]
        low = min(0.5, ceiling) / 2
        assert all(low <= d <= ceiling for d in delays), (attempt, min(delays), max(delays))
        assert len(set(delays)) > 150  # jittered, so a fleet of sidecars does not redial in step
        # Spread over the window, not bunched at one end.
        assert min(delays) < low + (ceiling - low) * 0.2 and max(delays) > ceiling - (ceiling - low) * 0.2


def test_a_backoff_with_a_minimum_share_never_drops_below_it() -> None:
    # After losing its sandbox to another sidecar, a redial must never come almost at once.
    backoff = Backoff(first_s=1.0, max_s=60.0, min_share=0.5)
    for attempt, ceiling in [(0, 1.0), (1, 2.0), (4, 16.0), (9, 60.0)]:
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempt, min(delays), max(delays))


# --- cancelling a call from the hub -------------------------------------------------------------

STUBBORN_PACK = str(REPO / "tests" / "packs" / "stubborn.py")


@pytest.fixture
def linked(tmp_path: Path) -> Iterator[tuple[RunningHub, RunningSidecar, Path]]:
    """A real hub, and a sidecar registered with it serving the stubborn pack; its markers' directory."""
    hub = start_hub(tmp_path / "hub", config=hub_config())
    try:
        root = tmp_path / "sidecar"
        manifest = {"workspace": str(tmp_path), "packs": [STUBBORN_PACK]}
        sidecar = start_sidecar(root, manifest, hub=hub.grpc, token=TOKENS["sbx-42"])
        try:
            yield hub, sidecar, root / "state" / "markers"
        finally:
            sidecar.stop()
    finally:
        hub.stop()


async def _cancelled_through_the_hub(
    hub: RunningHub, markers: Path, tool: str, arguments: dict[str, Any]
) -> None:
    """Call `tool` through the hub, and cancel the call once the tool runs and until it handles it."""

    async def listed() -> bool:
        return f"sbx-42__{tool}" in await tool_names(hub, TOKENS["agent-42"])

    await wait_for(listed, what="the sidecar's tools at the hub")
    client = HubClient(hub.grpc)
    request = pb.CallToolRequest(name=f"sbx-42__{tool}", arguments_json=orjson.dumps(arguments))
    call = asyncio.ensure_future(client.call_tool(TOKENS["agent-42"], request))
    try:

        async def exists(path: Path) -> bool:
            return path.exists()

        await wait_for(partial(exists, markers / f"{arguments['marker']}.started"), what="the tool to start")
        call.cancel()
        await wait_for(partial(exists, markers / f"{arguments['marker']}.stopping"), what="the cancel")
    finally:
        call.cancel()
        await client.close()


async def test_a_call_cancelled_by_the_hub_is_not_cancelled_again_when_the_link_ends(
    linked: tuple[RunningHub, RunningSidecar, Path],
) -> None:
    """A second cancel of a call's task used to interrupt what its tool does to stop (psycopg's
    cancel request: statements ran on in PostgreSQL)."""
    hub, sidecar, markers = linked
    await _cancelled_through_the_hub(hub, markers, "slow_to_stop", {"marker": "twice", "seconds": 3})
    hub.kill()  # the link ends while the tool cleans up: the link's calls are cancelled

    async def ended() -> bool:
        return (markers / "twice").exists()

    await wait_for(ended, what="the tool's cleanup to end")
    assert (markers / "twice").read_text() == "cleaned up"
    assert "after it was cancelled" not in sidecar.log()


async def test_a_tool_that_runs_on_after_its_cancel_is_logged(
    linked: tuple[RunningHub, RunningSidecar, Path],
) -> None:
    """The hub's audit said cancelled while such a tool ran to its end, with no trace of it."""
    hub, sidecar, markers = linked
    await _cancelled_through_the_hub(hub, markers, "ignores_cancel", {"marker": "stubborn", "seconds": 6})

    async def logged() -> re.Match[str] | None:
        return re.search(
            r"tool ignores_cancel \(call (\S+)\) ended (\d+\.\d)s after it was cancelled", sidecar.log()
        )

    found = await wait_for(logged, what="the log of the tool's end")
    assert (markers / "stubborn").read_text() == "carried on"
    call_id, ran_on = found.group(1), float(found.group(2))
    running_on = f"tool ignores_cancel (call {call_id}) is still running 5s after it was cancelled"
    assert running_on in sidecar.log(), sidecar.log()
    assert ran_on >= 5.0


async def test_a_result_with_text_that_is_not_unicode_reaches_the_hubs_caller(tmp_path: Path) -> None:
    """Reported: a result holding a lone surrogate (a file name decoded with surrogateescape) could
    not be put on the wire; the sidecar's call task died, nothing was logged, and the hub's caller
    waited until its deadline (11 minutes without one). Such characters now arrive as U+FFFD."""
    hub = start_hub(tmp_path / "hub", config=hub_config())
    manifest = {"workspace": str(tmp_path), "packs": [str(REPO / "tests" / "packs" / "oddtext.py")]}
    sidecar = start_sidecar(tmp_path / "sidecar", manifest, hub=hub.grpc, token=TOKENS["sbx-42"])
    client = HubClient(hub.grpc)
    try:

        async def listed() -> bool:
            return "sbx-42__surrogate" in await tool_names(hub, TOKENS["agent-42"])

        await wait_for(listed, what="the sidecar's tools at the hub")
        request = pb.CallToolRequest(name="sbx-42__surrogate", arguments_json=b"{}")
        result = await client.call_tool(TOKENS["agent-42"], request, timeout=20)
        assert not result.is_error, result
        assert result.content[0].text.text == "found bad\ufffdname.txt"
        assert orjson.loads(result.structured_content_json) == {"found": 1}
    finally:
        await client.close()
        sidecar.stop()
        hub.stop()

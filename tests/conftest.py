"""Fixtures shared by the whole suite: real hubs on 127.0.0.1 port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.hub import CONFORMANCE_PACK, PROBE_PACK, RunningHub, start_hub

TOKENS = {
    "agent-a": "token-of-agent-a-0123456789",
    "agent-b": "token-of-agent-b-0123456789",
    "approver": "token-of-the-approver-012345",
}


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session", autouse=True)
async def _one_event_loop(anyio_backend: str) -> AsyncIterator[None]:
    """Hold anyio's test runner open for the whole session: grpc.aio binds its poller to the first
    event loop of the process, so every async test must run on that same loop. (Autouse: a
    `usefixtures` marker added in pytest_collection_modifyitems comes too late to take effect,
    and each test got a loop of its own; a gRPC event of a closed loop then failed a later test.)"""
    yield


@pytest.fixture(scope="session")
def open_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    """A loopback hub with no principals: everyone is `local`."""
    hub = start_hub(tmp_path_factory.mktemp("open-hub"), packs=[PROBE_PACK, CONFORMANCE_PACK])
    yield hub
    hub.stop()


@pytest.fixture(scope="session")
def secured_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    """A hub with principals: agent-a may call everything, agent-b only echo and whoami."""
    config = {
        "principals": [
            {"name": "agent-a", "token": TOKENS["agent-a"]},
            {"name": "agent-b", "token": TOKENS["agent-b"], "tools": ["echo", "who*"]},
            {"name": "approver", "token": TOKENS["approver"], "roles": ["approver"]},
        ],
    }
    hub = start_hub(tmp_path_factory.mktemp("secured-hub"), config=config, packs=[PROBE_PACK])
    yield hub
    hub.stop()

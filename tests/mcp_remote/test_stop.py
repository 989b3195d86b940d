"""A hub's stop and restart as a supervisor sees them: bounded by one grace period whatever its
clients do, recorded before anything slow, and leaving nothing behind that a restart confuses
(approvals nobody waits for, revisions that repeat, sandboxes' tools said to be unknown)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mcp_remote.test_audit import all_records
from tests.mcp_remote.test_federation import TOKENS, hub_config, sandbox_manifest, tool_names, wait_for
from tests.support.hub import start_hub
from tests.support.sidecar import RunningSidecar, start_sidecar

pytestmark = pytest.mark.anyio


@pytest.fixture
def frozen() -> Iterator[list[RunningSidecar]]:
    """Sidecars a test froze (SIGSTOP): thawed and stopped after it, whatever it did."""
    sidecars: list[RunningSidecar] = []
    yield sidecars
    for sidecar in sidecars:
        if sidecar.alive():
            os.kill(sidecar.process.pid, signal.SIGCONT)
        sidecar.stop()


async def test_a_frozen_sidecar_does_not_hold_the_stop_past_its_grace(
    tmp_path: Path, frozen: list[RunningSidecar]
) -> None:
    """Found by an SRE: a paused sidecar (`docker pause`) kept its connection open after the hub
    had ended its stream, and gRPC's stop waited a second full grace for it, so a supervisor's
    SIGKILL came before the `stopped` record. Here the grace is long and the supervisor's
    timeout half of it: the stop must be over (and recorded) well before either."""
    grace = 30.0
    config = hub_config() | {"shutdown_grace_s": grace}
    hub = start_hub(tmp_path / "hub", config=config, http=False)
    try:
        sidecar = start_sidecar(
            tmp_path / "sbx", sandbox_manifest(tmp_path / "sbx"), hub=hub.grpc, token=TOKENS["sbx-42"]
        )
        frozen.append(sidecar)

        async def present() -> bool:
            return "sbx-42__files_read" in await tool_names(hub, TOKENS["ops"])

        await wait_for(present, what="the sidecar to register")
        os.kill(sidecar.process.pid, signal.SIGSTOP)
        started = time.monotonic()
        hub.stop(timeout=grace / 2)  # SIGTERM, then SIGKILL after that long, as systemd does
        took = time.monotonic() - started
    finally:
        hub.stop()
    assert hub.process.returncode == 0, (took, hub.log())
    assert took < grace / 2, took
    events = [r.body_json().get("event") for r in await all_records(hub.state_dir) if r.kind == "hub"]
    assert events[-1] == "stopped", events
    assert not (hub.state_dir / "hub.json").exists()  # the next start finds a clean stop

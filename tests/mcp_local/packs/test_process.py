"""The process pack: list the sandbox's processes, stop one (through a pidfd), refuse the sidecar and init."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_local.packs.process import read_process
from tests.support.packs import PackUnderTest, make_pack, text

pytestmark = pytest.mark.anyio


@pytest.fixture
def proc(tmp_path: Path) -> PackUnderTest:
    return make_pack("process", {}, tmp_path)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "mcphub-test-sleeper"])
    yield child
    if child.poll() is None:
        child.kill()
    child.wait()


async def test_lists_and_stops_a_process(proc: PackUnderTest, sleeper: subprocess.Popen[bytes]) -> None:
    listed = await proc.call("process_list", match="mcphub-test-sleeper")
    assert listed.structured is not None
    [entry] = listed.structured["processes"]
    assert entry["pid"] == sleeper.pid and entry["ppid"] == os.getpid()
    stopped = await proc.call("process_stop", pid=sleeper.pid, start=entry["start"], wait_s=10)
    assert not stopped.is_error, text(stopped)
    assert sleeper.wait(10) == -15
    assert f"process {sleeper.pid}" in text(stopped)


async def test_a_reused_pid_is_not_hit(proc: PackUnderTest, sleeper: subprocess.Popen[bytes]) -> None:
    info = read_process(sleeper.pid)
    assert info is not None
    result = await proc.call("process_stop", pid=sleeper.pid, start=info.start_ticks + 1)
    assert result.is_error and "not the one listed" in text(result)
    assert sleeper.poll() is None


async def test_the_sidecar_and_init_are_not_stopped(proc: PackUnderTest) -> None:
    own = await proc.call("process_stop", pid=os.getpid())
    assert own.is_error and "the sidecar itself" in text(own)
    gone = await proc.call("process_stop", pid=2**22 + 12345)
    assert gone.is_error and "no process" in text(gone)
    assert proc.tools["process_stop"].annotations.destructive is True

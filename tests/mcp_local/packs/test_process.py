"""The process pack: list the sandbox's processes, stop one (through a pidfd), refuse the sidecar and init."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_local.packs.process import PID_MAX_LIMIT, read_process
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
    gone = await proc.call("process_stop", pid=PID_MAX_LIMIT)  # pids stay below pid_max <= 2**22
    assert gone.is_error and "no process" in text(gone)
    assert proc.tools["process_stop"].annotations.destructive is True


async def test_a_thread_id_or_an_impossible_pid_gets_a_clear_error(proc: PackUnderTest) -> None:
    worker = threading.Thread(target=time.sleep, args=(2,))
    worker.start()
    try:
        assert worker.native_id is not None and worker.native_id != os.getpid()
        result = await proc.call("process_stop", pid=worker.native_id)
        assert result.is_error and "a thread's id is not a process id" in text(result)
    finally:
        worker.join()
    for pid in (99999999999, 1e20):
        huge = await proc.call("process_stop", pid=pid)
        assert huge.is_error and "is greater than the maximum of 4194304" in text(huge)

"""Finding the cgroup hierarchy and making per-principal groups, on fake /proc and cgroupfs trees.

The real v1 hierarchy of this machine is exercised by the escape tests (CPU throttling, the OOM
killer, the fork bomb); these cover the parsing and the v2 layout this machine does not offer.
"""

from __future__ import annotations

import os
from pathlib import Path

from mcp_remote.tools.shell.cgroups import _mounts, _own_cgroups, detect_cgroups
from mcp_remote.tools.shell.options import Limits

MOUNTINFO_V1 = """\
30 23 0:26 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory
31 23 0:27 / /sys/fs/cgroup/pids rw,relatime shared:10 - cgroup cgroup rw,pids
32 23 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:11 - cgroup cgroup rw,cpu,cpuacct
33 23 0:29 / /sys/fs/cgroup/unified rw,relatime shared:12 - cgroup2 cgroup2 rw
"""


def test_own_groups_and_mounts_are_parsed() -> None:
    own = _own_cgroups("12:pids:/a\n4:memory:/process_api/x\n3:cpu,cpuacct:/\n0::/user.slice\n")
    assert own == {"pids": "/a", "memory": "/process_api/x", "cpu": "/", "cpuacct": "/", "": "/user.slice"}
    v1, v2 = _mounts(MOUNTINFO_V1)
    assert v1 == {
        "memory": Path("/sys/fs/cgroup/memory"),
        "pids": Path("/sys/fs/cgroup/pids"),
        "cpu": Path("/sys/fs/cgroup/cpu,cpuacct"),
    }
    assert v2 == Path("/sys/fs/cgroup/unified")


def _fake_proc(tmp_path: Path, cgroup: str, mountinfo: str) -> Path:
    proc = tmp_path / "proc" / "self"
    proc.mkdir(parents=True)
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text(mountinfo)
    return tmp_path / "proc"


def test_v2_groups_are_made_below_the_hubs_own_group(tmp_path: Path) -> None:
    fs = tmp_path / "cgroup2"
    own = fs / "hub.service"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (own / "cgroup.subtree_control").write_text("")
    (own / "cgroup.procs").write_text("")
    proc = _fake_proc(tmp_path, "0::/hub.service\n", f"40 1 0:30 / {fs} rw - cgroup2 cgroup2 rw\n")
    driver = detect_cgroups(proc)
    assert driver.mode == "v2", driver.reason
    base = own / f"mcphub-{os.getpid()}"
    assert (own / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    (base / "cgroup.subtree_control").write_text("cpu memory pids")  # as the kernel would show it
    group = driver.group("agent-a", Limits(memory_mb=256, processes=32, cpus=1.5))
    assert group is not None and set(group.enforced) == {"memory", "pids", "cpu"}
    assert (base / "agent-a" / "memory.max").read_text() == str(256 * 1024 * 1024)
    assert (base / "agent-a" / "pids.max").read_text() == "32"
    assert (base / "agent-a" / "cpu.max").read_text() == "150000 100000"
    assert group.procs_files == (str(base / "agent-a" / "cgroup.procs"),)


def test_v2_without_delegated_controllers_means_rlimits_only(tmp_path: Path) -> None:
    fs = tmp_path / "cgroup2"
    (fs / "user.slice").mkdir(parents=True)
    (fs / "user.slice" / "cgroup.controllers").write_text("")
    proc = _fake_proc(tmp_path, "0::/user.slice\n", f"40 1 0:30 / {fs} rw - cgroup2 cgroup2 rw\n")
    driver = detect_cgroups(proc)
    assert driver.mode == "none" and "no memory, pids or cpu controller" in driver.reason
    assert driver.group("agent-a", Limits()) is None


def test_v1_groups_carry_the_limits(tmp_path: Path) -> None:
    memory, pids, cpu = tmp_path / "memory", tmp_path / "pids", tmp_path / "cpu"
    for d in (memory / "outer", pids, cpu):
        d.mkdir(parents=True)
    mountinfo = (
        f"1 1 0:1 / {memory} rw - cgroup cgroup rw,memory\n"
        f"2 1 0:2 / {pids} rw - cgroup cgroup rw,pids\n"
        f"3 1 0:3 / {cpu} rw - cgroup cgroup rw,cpu\n"
    )
    proc = _fake_proc(tmp_path, "4:memory:/outer\n8:pids:/\n1:cpu:/\n", mountinfo)
    driver = detect_cgroups(proc)
    assert driver.mode == "v1"
    base = f"mcphub-{os.getpid()}"
    (cpu / base / "p").mkdir()
    (cpu / base / "p" / "cpu.cfs_period_us").write_text("100000\n")
    group = driver.group("p", Limits(memory_mb=64, processes=10, cpus=0.25))
    assert group is not None and set(group.enforced) == {"memory", "pids", "cpu"}
    assert (memory / "outer" / base / "p" / "memory.limit_in_bytes").read_text() == str(64 * 1024 * 1024)
    assert (pids / base / "p" / "pids.max").read_text() == "10"
    assert (cpu / base / "p" / "cpu.cfs_quota_us").read_text() == "25000"

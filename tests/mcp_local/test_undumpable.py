"""The environment block /proc/PID/environ shows: the values of variables taken out are
overwritten there, and nothing else is touched."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.hub import REPO

_PROGRAM = r"""
import os, subprocess, sys
from mcp_local.undumpable import scrub_environment_block
os.environ.pop("SECRET_X")
print(scrub_environment_block(os.environ))
sys.stdout.flush()
block = open("/proc/self/environ", "rb").read()
sys.stdout.buffer.write(b"secret shown: %d\n" % (b"hunter2hunter2" in block))
sys.stdout.buffer.write(subprocess.run(["env"], capture_output=True).stdout)
"""


def test_only_the_values_of_variables_taken_out_are_overwritten() -> None:
    """Review: a name that is not UTF-8 was compared in its decoded form with os.environ's
    (surrogate escapes), taken for unset, and its value overwritten while still set: every
    process started after it inherited `xxxx`."""
    env = {
        b"PATH": os.environb[b"PATH"],
        b"PYTHONPATH": str(REPO).encode(),
        b"SECRET_X": b"hunter2hunter2",
        b"BAD\xffNAME": b"keepme",
        b"NAME\xe9": b"v\xe9",
    }
    out = subprocess.run([sys.executable, "-c", _PROGRAM], env=env, capture_output=True, check=True).stdout
    lines = out.splitlines()
    assert lines[0] == b"1" and lines[1] == b"secret shown: 0", out
    assert b"BAD\xffNAME=keepme" in lines and b"NAME\xe9=v\xe9" in lines, out

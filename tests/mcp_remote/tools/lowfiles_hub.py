"""`mcphub serve` with a hard open-file limit of 512 and without CAP_SYS_RESOURCE (as a hub run by
an ordinary user), whatever the tests run as: `python -m tests.mcp_remote.tools.lowfiles_hub serve ...`."""

from __future__ import annotations

import os
import resource
import sys

if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))
    argv = ["setpriv", "--bounding-set=-sys_resource", "--", sys.executable, "-m", "mcp_remote.cli"]
    os.execvp(argv[0], [*argv, *sys.argv[1:]])

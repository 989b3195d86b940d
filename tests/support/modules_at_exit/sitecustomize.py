"""Put this directory on PYTHONPATH and set MCPHUB_TEST_MODULES_FILE: the process writes the
names of every module it had loaded to that file when it exits normally.

Unlike `-X importtime`, this also sees modules imported through `importlib.import_module`
(how packs are loaded), and it reports the process that finally ran: after an exec, the new
interpreter's modules, not the command's that handed over.
"""

import atexit
import os
import sys


def _write() -> None:
    with open(os.environ["MCPHUB_TEST_MODULES_FILE"], "w") as out:
        out.write("\n".join(sorted(sys.modules)) + "\n")


if os.environ.get("MCPHUB_TEST_MODULES_FILE"):
    atexit.register(_write)

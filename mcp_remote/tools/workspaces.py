"""Where a principal's workspace lives: `<root>/<name>`, one naming rule for every pack."""

from __future__ import annotations

import re

__all__ = ["workspace_dir_name"]

_PLAIN_NAME = re.compile(r"^[a-zA-Z0-9_@-][a-zA-Z0-9_.@-]{0,63}$")


def workspace_dir_name(principal: str) -> str:
    """A directory name for a principal: the name itself when harmless, else `~` + hex.

    Principal names may be `.` or `..` or start with a dot; `~` cannot appear in a name, so the two
    forms never collide. The shell pack (its jails) and the browser pack (uploads, downloads)
    share it, so a principal's files are in one place.
    """
    if _PLAIN_NAME.match(principal):
        return principal
    return "~" + principal.encode().hex()

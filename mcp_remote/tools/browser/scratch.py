"""The directory that holds the browser's temporary files while a hub runs.

Playwright's driver makes a profile directory and an artifacts directory for each Chromium it
launches, and Chromium a directory for its single-instance socket, all in the temp directory.
They are removed when the browser closes cleanly; when the hub, the driver or Chromium is killed
they stay, a megabyte or more each, for as long as the machine runs. So the driver (and with it
Chromium) gets `TMPDIR` pointing into a directory of the hub's own, `mcphub-browser-XXXXXXXX` in
the system's temp directory (a short path: Chromium's socket path must fit in 108 bytes), which
the hub removes when it stops. The hub holds a lock on it while it runs; a hub that starts removes
the directories whose lock nobody holds, the leftovers of hubs that were killed. A lock rather
than a process id, so that hubs in other PID namespaces sharing the directory are told apart.
A directory gets its name only once its lock is held (it is made under another name and renamed),
so a sweep never sees one that is being made.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

__all__ = ["PREFIX", "ScratchDir"]

logger = logging.getLogger(__name__)

PREFIX = "mcphub-browser-"
MAKING = ".mcphub-browser-making-"
LOCK = ".lock"
SOCKET_PATH_MAX = 107
CHROMIUM_SOCKET = len("/org.chromium.Chromium.XXXXXX/SingletonSocket")
MAKING_GRACE_S = 60.0
"""A directory still named MAKING this old is a hub killed while it made it."""


class ScratchDir:
    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self._lock_fd: int | None = lock_fd

    @classmethod
    def create(cls, base: Path | None = None) -> ScratchDir:
        """Sweep the leftovers of killed hubs in `base` (the system's temp directory by default),
        then make and lock a directory of this hub's own."""
        root = Path(base) if base is not None else Path(tempfile.gettempdir())
        longest = len(str(root)) + 1 + len(PREFIX) + 8 + CHROMIUM_SOCKET
        if longest > SOCKET_PATH_MAX:
            raise OSError(
                f"{root} is too long a path for a directory in it to hold Chromium's socket "
                f"({longest} bytes, at most {SOCKET_PATH_MAX}); set TMPDIR to a shorter one"
            )
        sweep(root)
        making = Path(tempfile.mkdtemp(prefix=MAKING, dir=root))
        fd = os.open(making / LOCK, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else holds it
            path = root / (PREFIX + making.name.removeprefix(MAKING))
            making.rename(path)
        except OSError:
            os.close(fd)
            shutil.rmtree(making, ignore_errors=True)
            raise
        return cls(path, fd)

    def entries(self) -> list[Path]:
        """What the browsers launched so far keep here (their profiles, Chromium's socket)."""
        try:
            return [entry for entry in self.path.iterdir() if entry.name != LOCK]
        except OSError:
            return []

    @staticmethod
    def remove_entries(entries: list[Path]) -> None:
        """Remove what a browser that is gone kept here (a crashed Chromium leaves its socket's
        directory, a dead driver its Chromium's whole profile, cookies and storage included)."""
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()

    def remove(self) -> None:
        """Remove the directory and everything in it (the browser has stopped), then unlock."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def sweep(root: Path) -> int:
    """Remove the scratch directories in `root` that no running hub holds; how many."""
    removed = 0
    try:
        entries = [entry for entry in root.iterdir() if entry.name.startswith((PREFIX, MAKING))]
    except OSError:
        return 0
    for entry in entries:
        with contextlib.suppress(OSError):
            if entry.is_symlink() or not entry.is_dir() or entry.stat().st_uid != os.geteuid():
                continue
            if _abandoned(entry) if entry.name.startswith(PREFIX) else _stale(entry):
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
    if removed:
        logger.info("removed %d browser temp directories left by hubs that did not stop", removed)
    return removed


def _stale(entry: Path) -> bool:
    return time.time() - entry.stat().st_mtime > MAKING_GRACE_S


def _abandoned(entry: Path) -> bool:
    try:
        fd = os.open(entry / LOCK, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return True  # named only once locked: no lock file is no hub
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a running hub holds it
    finally:
        os.close(fd)  # closing drops the lock taken just now, if any
    return True

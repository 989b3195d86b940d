"""SIGHUP means "reload": parts of the hub subscribe a callback and one signal handler calls them all.

asyncio keeps one handler per signal, so two packs each installing their own
would clobber each other; subscribing here chains them instead. A handler that
was installed with `signal.signal` before the first subscription keeps being
called, and is put back when the last subscriber leaves.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
from collections.abc import Callable
from typing import Any

__all__ = ["on_reload"]

logger = logging.getLogger("mcphub.reload")

_subscribers: dict[int, Callable[[], None]] = {}
_ids = itertools.count(1)
_installed: asyncio.AbstractEventLoop | None = None
_previous: Any = None


def _dispatch() -> None:
    logger.info("SIGHUP: reloading (%d subscribers)", len(_subscribers))
    for callback in list(_subscribers.values()):
        try:
            callback()
        except Exception:  # one failing subscriber must not stop the others from reloading
            logger.exception("a reload callback failed")
    if callable(_previous):
        _previous(signal.SIGHUP, None)


def on_reload(callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback` on SIGHUP (from the running event loop); returns the function that unsubscribes."""
    global _installed, _previous
    key = next(_ids)
    _subscribers[key] = callback
    if _installed is None:
        loop = asyncio.get_running_loop()
        previous = signal.getsignal(signal.SIGHUP)
        try:
            loop.add_signal_handler(signal.SIGHUP, _dispatch)
        except (RuntimeError, ValueError, NotImplementedError) as exc:
            logger.debug("no SIGHUP handler in this process (%s); reload by file change only", exc)
        else:
            _installed = loop
            _previous = previous if callable(previous) else None

    def unsubscribe() -> None:
        global _installed, _previous
        _subscribers.pop(key, None)
        if not _subscribers and _installed is not None:
            loop, _installed = _installed, None
            if not loop.is_closed():
                loop.remove_signal_handler(signal.SIGHUP)
            if _previous is not None:
                signal.signal(signal.SIGHUP, _previous)
            _previous = None

    return unsubscribe

"""Text from elsewhere (a caller, a sandbox's sidecar) made safe to show on a terminal or in a log line.

Such text could otherwise start a line of its own (a forged log line), hide itself or what follows
(terminal escapes, zero-width characters), or reorder what is shown (bidi overrides): each such
character is written as an escape instead.
"""

from __future__ import annotations

import unicodedata

__all__ = ["shown", "shown_lines"]

# Characters that change what a terminal shows without showing themselves: controls, format
# characters (bidi overrides and isolates, zero-width joiners), line and paragraph separators,
# unassigned and private code points, spaces other than the plain one, and letters that are blank.
_UNSEEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"})
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0")


def _escaped(ch: str) -> str:
    if ch == " " or (unicodedata.category(ch) not in _UNSEEN_CATEGORIES and ch not in _BLANK_LETTERS):
        return ch
    code = ord(ch)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def shown(text: str) -> str:
    """`text` with what would hide, reorder or break a line written as `\\uXXXX` escapes."""
    if text.isascii() and text.isprintable():  # the usual case: nothing to escape
        return text
    return "".join(_escaped(ch) for ch in text)


def shown_lines(text: str) -> str:
    """`text` as `shown` writes it, but with its line breaks (`\\n`) and tabs kept: a tool's output
    of several lines, shown on a terminal."""
    if text.isascii() and text.replace("\n", "").replace("\t", "").isprintable():
        return text
    return "\n".join("\t".join(map(shown, line.split("\t"))) for line in text.split("\n"))

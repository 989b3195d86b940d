"""How a browser tool's result reads: the action's outcome, the page, events, then the snapshot.

Plain functions over strings; the snapshot size limit keeps a large snapshot whole
in the output store and shows its beginning with the id to read on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from mcp_local.outputs import OutputStore

__all__ = ["PageState", "compose", "limit_text", "parse_ref"]

_REF = re.compile(r"^\[?(?:aria-)?(?:ref=)?((?:f\d+)?e\d+)\]?$")


def parse_ref(target: str) -> str | None:
    """The aria ref a target names (`e12`, `ref=e12`, `[ref=e12]`, `f1e3`), or None for a selector."""
    match = _REF.match(target.strip())
    return match.group(1) if match else None


@dataclass(frozen=True, slots=True)
class PageState:
    url: str
    title: str
    tab: int
    tabs: int


def limit_text(outputs: OutputStore, principal: str, text: str, limit: int, *, label: str) -> str:
    """`text` if it fits in `limit` characters; else its beginning and how to read the whole."""
    if len(text) <= limit:
        return text
    cut = text.rfind("\n", 0, limit)
    if cut < limit // 2:
        cut = limit
    head = text[:cut]
    output_id = outputs.put(principal, text.encode(), media_type="text/plain", label=label)
    offset = len(head.encode())
    return (
        f"{head}\n[{label} cut: showing {cut} of {len(text)} characters; the whole is kept as {output_id}, "
        f'read on with output_read {{"output_id": "{output_id}", "offset": {offset}}}]'
    )


def compose(
    result: str,
    *,
    page: PageState | None,
    events: Sequence[str],
    modal: str | None,
    snapshot: str | None,
) -> str:
    parts = []
    if result:
        parts.append(f"### Result\n{result}")
    if page is not None:
        lines = [f"- URL: {page.url}"]
        if page.title:
            lines.append(f"- Title: {page.title}")
        if page.tabs > 1:
            lines.append(f"- Tab: {page.tab} of {page.tabs} (see browser_tabs)")
        parts.append("### Page\n" + "\n".join(lines))
    if events:
        parts.append("### Events\n" + "\n".join(f"- {e}" for e in events))
    if modal:
        parts.append(
            f"### Waiting for you\n- {modal} is open: answer it with "
            + ("browser_file_upload" if "file chooser" in modal else "browser_handle_dialog")
            + " before other page actions"
        )
    if snapshot is not None:
        parts.append(f"### Snapshot\n```yaml\n{snapshot}\n```")
    return "\n\n".join(parts)

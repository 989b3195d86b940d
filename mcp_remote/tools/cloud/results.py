"""A service's response as a tool result: redacted, previewed, large or binary bodies kept whole."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from mcp_local.content import TextContent, ToolResult
from mcp_local.outputs import OutputStore, preview_length
from mcp_local.redaction import Redactor

from .client import CloudResponse

__all__ = ["ResponseView", "redact_bytes", "response_result"]

HIDDEN_RESPONSE_HEADERS = frozenset(
    {"set-cookie", "set-cookie2", "connection", "keep-alive", "transfer-encoding", "date", "server"}
)
_TEXT_TYPES = ("json", "text/", "xml", "javascript", "x-www-form-urlencoded", "yaml", "csv")
_SHOWN_HEADERS = ("content-type", "location", "link", "retry-after", "x-ratelimit-remaining")
RAW_BODY_HEADERS = frozenset(
    {"content-length", "content-encoding", "content-md5", "digest", "content-digest", "repr-digest"}
)
"""Headers that describe the body as the service sent it. The result's body is decoded and
redacted, so they no longer fit it, and the length or digest of the raw body would tell the
caller the length (or let it test guesses) of a secret the redaction replaced. The body's size
is `body_bytes`."""


def redact_bytes(redactor: Redactor, data: bytes) -> bytes:
    """`data` with secrets replaced. latin-1 maps bytes to code points one to one, so an ASCII
    secret is found in any encoding and the other bytes come back unchanged."""
    return redactor.text(data.decode("latin-1")).encode("latin-1")


@dataclass(frozen=True, slots=True)
class ResponseView:
    """What the result is about: who asked, which service, what was sent."""

    principal: str
    service: str
    method: str
    path: str
    inline_bytes: int
    max_response_bytes: int


def response_result(
    view: ResponseView,
    response: CloudResponse,
    dropped: list[str],
    redactor: Redactor,
    outputs: OutputStore,
) -> ToolResult:
    redact = redactor.text
    # Redact, then cut: the client read past the cap so that no secret is split by the cut.
    body = redact_bytes(redactor, response.body)[: view.max_response_bytes]
    content_type = response.header("content-type") or ""
    headers = {
        k.lower(): redact(v)
        for k, v in response.headers
        if k.lower() not in HIDDEN_RESPONSE_HEADERS and k.lower() not in RAW_BODY_HEADERS
    }
    is_text = not content_type or any(t in content_type.lower() for t in _TEXT_TYPES)
    inline = view.inline_bytes
    output_id: str | None = None
    if body and (not is_text or len(body) > inline):
        output_id = outputs.put(
            view.principal,
            body,
            media_type=content_type or "application/octet-stream",
            label=f"{view.service} {view.method} {view.path}",
        )
    structured: dict[str, Any] = {
        "service": view.service,
        "status": response.status,
        "headers": headers,
        "url": redact(response.url),
        "body_bytes": len(body),
    }
    notes: list[str] = []
    shown_bytes = 0
    if is_text:
        shown_bytes = preview_length(body, inline)
        preview = body[:shown_bytes].decode("utf-8", errors="replace")
        if output_id is None and "json" in content_type.lower():
            try:
                # Redacted again once parsed: escapes (`\/`, `\u0063`) hide a key from the byte-level
                # pass and parsing brings it back. The text shown is then made from the result.
                parsed = redactor.value(orjson.loads(body), by_key_name=False)  # secrets only, as before
            except orjson.JSONDecodeError:
                structured["text"] = preview
            else:
                structured["json"] = parsed
                preview = orjson.dumps(parsed).decode("utf-8")[:inline]
        else:
            structured["text"] = preview
        shown = preview
    else:
        shown = f"<{len(body)} bytes of {content_type or 'binary data'}>"
    if output_id is not None:
        structured["output_id"] = output_id
        notes.append(
            f"the body is {len(body)} bytes; this shows the first {shown_bytes}. "
            f"Read all of it with output_read (output_id {output_id})"
        )
    if response.truncated:
        structured["truncated"] = True
        notes.append(f"the service sent more than {view.max_response_bytes} bytes; the rest was not read")
    if response.redirects:
        structured["redirects"] = [redact(r) for r in response.redirects]
    if dropped:
        structured["dropped_headers"] = dropped
        notes.append(f"dropped {', '.join(dropped)}: the hub supplies the credential")
    lines = [f"HTTP {response.status} from {view.service} ({view.method} {redact(view.path)})"]
    lines.extend(f"{key}: {headers[key]}" for key in _SHOWN_HEADERS if key in headers)
    lines.extend(f"[{n}]" for n in notes)
    text = "\n".join(lines) + "\n\n" + shown
    return ToolResult(content=(TextContent(text),), structured=structured, is_error=response.status >= 400)

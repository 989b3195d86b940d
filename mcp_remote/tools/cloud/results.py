"""A service's response as a tool result: redacted, previewed, large or binary bodies kept whole."""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Any

import orjson

from mcp_local.content import TextContent, ToolResult
from mcp_local.outputs import OutputStore, preview_length
from mcp_local.redaction import Redactor

from .client import CloudResponse

__all__ = ["ResponseView", "body_codec", "redact_bytes", "response_result"]

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


_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),  # before UTF-16's: it starts with the same two bytes
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_ASCII = bytes(range(0x20, 0x7F))
_ASCII_TEXT = _ASCII.decode("ascii")
_CHARSET_ALIASES = {  # names services use (IANA, Windows) that Python's codecs do not know
    "ucs-2": "utf-16",
    "ucs2": "utf-16",
    "iso-10646-ucs-2": "utf-16",
    "csunicode": "utf-16",
    "unicode": "utf-16-le",  # Windows' name for its UTF-16LE
    "unicodefffe": "utf-16-be",
    "ucs-4": "utf-32",
    "ucs4": "utf-32",
    "iso-10646-ucs-4": "utf-32",
}


def _charset(content_type: str) -> str | None:
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip("\"'") or None
    return None


def _guess_order(codec: str, data: bytes) -> str:
    """UTF-16 or UTF-32 without a BOM: the byte order whose zero bytes fall where ASCII text
    puts them (most of what an API sends is ASCII). Big-endian when nothing tells (RFC 2781)."""
    width = 2 if codec == "utf-16" else 4
    sample = data[: 4096 - 4096 % width]
    low_zero = sum(1 for i in range(0, len(sample), width) if sample[i] == 0)
    high_zero = sum(1 for i in range(width - 1, len(sample), width) if sample[i] == 0)
    return f"{codec}-le" if high_zero > low_zero else f"{codec}-be"


def _json_wide(data: bytes) -> tuple[str, bytes] | None:
    """UTF-16 or UTF-32 with neither BOM nor charset, told by where the zero bytes of the
    first (ASCII) characters fall, as RFC 4627 reads JSON: text in an ASCII-compatible
    encoding has no zero bytes there."""
    head = data[:4]
    if len(head) < 4 or b"\0" not in head:
        return None
    zeros = (head[0] == 0, head[1] == 0, head[2] == 0, head[3] == 0)
    return {
        (True, True, True, False): ("utf-32-be", b""),
        (False, True, True, True): ("utf-32-le", b""),
        (True, False, True, False): ("utf-16-be", b""),
        (False, True, False, True): ("utf-16-le", b""),
    }.get(zeros)


def body_codec(content_type: str, data: bytes) -> tuple[str, bytes] | None:
    """The codec a body must be decoded with to find an ASCII secret in it, and the BOM it
    starts with; None for an encoding where ASCII is ASCII bytes (UTF-8, latin-1, ...), read
    as latin-1. A BOM wins over the declared charset, as it does in browsers."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return codec, bom
    charset = _charset(content_type)
    if charset is None:
        return _json_wide(data)
    try:
        codec = codecs.lookup(_CHARSET_ALIASES.get(charset.lower(), charset)).name
        if _ASCII_TEXT.encode(codec) == _ASCII:
            return None
    except (LookupError, UnicodeError):
        return None  # unknown to Python, or not a text codec: read as latin-1
    if codec in ("utf-16", "utf-32"):
        codec = _guess_order(codec, data)
    return codec, b""


def redact_bytes(redactor: Redactor, data: bytes, content_type: str = "") -> bytes:
    """`data` with secrets replaced. A body in UTF-16 or UTF-32 (by its BOM, its charset, or for
    neither the zero bytes of its first characters), or in another charset in which ASCII is not
    ASCII bytes, is decoded with its codec, redacted, and encoded back with the same codec (so
    `[REDACTED]` is valid text there too), then searched for the registered secrets byte for
    byte as well. Anything else is read as latin-1, which maps bytes to code points one to one:
    an ASCII secret is found in any ASCII-compatible encoding (UTF-8 included), and the other
    bytes come back unchanged."""
    found = body_codec(content_type, data)
    if found is not None:
        codec, bom = found
        text = data[len(bom) :]
        width = 4 if codec.startswith("utf-32") else 2 if codec.startswith("utf-16") else 1
        tail = len(text) % width  # a body cut inside its last character: those bytes hold no secret
        whole, rest = text[: len(text) - tail], text[len(text) - tail :]
        try:
            decoded = whole.decode(codec, errors="surrogatepass")
        except UnicodeDecodeError:
            pass  # not text in that codec after all (binary data that starts like a BOM)
        else:
            data = bom + redactor.text(decoded).encode(codec, errors="surrogatepass") + rest
            # And byte for byte, as before: a guess can be wrong (binary data that looks like
            # UTF-16), and a plain ASCII secret in it must not get past for that.
            return redactor.text(data.decode("latin-1"), shapes=False).encode("latin-1")
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
    content_type = response.header("content-type") or ""
    body = redact_bytes(redactor, response.body, content_type)[: view.max_response_bytes]
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
        found = body_codec(content_type, body)
        document: bytes | str = body
        if found is None:
            shown_bytes = preview_length(body, inline)
            preview = body[:shown_bytes].decode("utf-8", errors="replace")
        else:  # UTF-16 and the like: shown as the text it is
            codec, bom = found
            shown_bytes = len(body) if len(body) <= inline else inline - inline % 4
            preview = body[len(bom) : shown_bytes].decode(codec, errors="replace")
            document = body[len(bom) :].decode(codec, errors="replace")
        if output_id is None and "json" in content_type.lower():
            try:
                # Redacted again once parsed: escapes (`\/`, `\u0063`) hide a key from the byte-level
                # pass and parsing brings it back. The text shown is then made from the result.
                parsed = redactor.value(orjson.loads(document), by_key_name=False)  # secrets only
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

"""Secret redaction: known secret values and secret-shaped strings never leave in results, records or logs.

Packs that hold secrets (cloud credentials, SSH keys) register the values with
the hub's `Redactor`; the audit log, the logging filter and tools that echo
foreign text run everything through it.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
import re
import threading
from collections.abc import Iterable
from typing import Any

__all__ = ["REDACTED", "RedactingFilter", "Redactor", "dsn_password", "without_dsn"]

REDACTED = "[REDACTED]"

# Shapes of well-known credentials, redacted even when nobody registered them.
_SHAPES = re.compile(
    r"(?:"
    r"gh[pousr]_[A-Za-z0-9]{30,}"  # GitHub tokens
    r"|github_pat_[A-Za-z0-9_]{40,}"
    r"|sk-[A-Za-z0-9_-]{20,}"  # OpenAI/Anthropic-style keys
    r"|AKIA[0-9A-Z]{16}"  # AWS access key ids
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|rnd_[A-Za-z0-9]{20,}"  # Render
    r"|sntrys_[A-Za-z0-9_=+/-]{20,}"  # Sentry
    # JWTs; starting only where a token can start: "eyJeyJeyJ..." tried at every "eyJ" was
    # quadratic (a second on 64 KB, on the event loop)
    r"|(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    r")"
)
# Private keys in PEM, found by `_pem` in one pass: as a pattern, each BEGIN without an END
# after it scanned to the end of the text, quadratic in the number of BEGINs.
_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z ]{0,40}PRIVATE KEY-----")
_PEM_END = re.compile(r"-----END [A-Z ]{0,40}PRIVATE KEY-----")


def _pem(text: str) -> str:
    if "-----BEGIN" not in text:
        return text
    out, pos = [], 0
    for begin in _PEM_BEGIN.finditer(text):
        if begin.start() < pos:
            continue  # inside a key already redacted
        end = _PEM_END.search(text, begin.end())
        if end is None:
            break  # no END after this BEGIN, so none after any later one either
        out += [text[pos : begin.start()], REDACTED]
        pos = end.end()
    return "".join([*out, text[pos:]]) if out else text


_SECRET_KEYS = re.compile(
    r"(?i)(pass(word|wd)?|secret|token|api[_-]?key|private[_-]?key|authorization|cookie|credential)"
)
_MIN_SECRET_LENGTH = 6
# Secrets given in a command line or a config text. Each form: what stays (the name, the option,
# the scheme), then the value, which goes. A value is a quoted string (its quotes stay) or a run
# of characters up to a space or shell punctuation (a backslash escapes one).
_NAME = (
    r"[\w.-]*(?:password|passwd|passphrase|secret|token|api[_-]?key|access[_-]?key|private[_-]?key"
    r"|(?<![a-z-])pass|_pwd)"
)
_VALUE = (  # a shell word: quoted and unquoted pieces side by side ('a'"b"c, $'..')
    r"(?:\"(?:\\.|[^\"\\])*\"|\$?'(?:\\.|[^'\\])*'|(?:\\.|[^\s\"',;&|)}\\])+)+"
)
_FORMS: tuple[tuple[str, str], ...] = (
    # PGPASSWORD=x, --password=x, db.password=x (nothing between the = and the value). A name
    # starts where its run of name characters does: tried after every "." too, "y.y.y..." was
    # scanned to its end from each "y", quadratic (11 s for 16 KB).
    (rf"(?<![\w.-])(?!--no-){_NAME}=", _VALUE),
    # aws_secret_access_key = x (spaces on both sides, as in INI files)
    (rf"(?<![\w.-]){_NAME}\s+=\s+", _VALUE),
    # "token": "x", 'password':'x' (a quoted name, as in JSON)
    (rf"[\"']{_NAME}[\"']\s*:\s*", _VALUE),
    # POSTGRES_PASSWORD: x, password: x (YAML, a compose file: the name first on its line)
    (rf"(?:\A|(?<=\n))[ \t]*{_NAME}:[ \t]+", _VALUE),
    # --password x (a long option whose value follows it)
    (rf"(?<![\w.-])--(?!no-){_NAME}\s+(?=[^-\s<>|&;])", _VALUE),
    # Authorization: Token x
    (r"\bauthorization\s*:\s*[a-z]+\s+(?=\S*[0-9+/=._~-])", _VALUE),
    # Authorization: Basic dXNlcjpwYXNz (base64 of "user:pass" may have no digit or symbol)
    (
        r"\bauthorization\s*:\s*basic\s+"
        r"(?=(?:[a-z0-9+/]{4}){2,}(?:[a-z0-9+/]{2}==|[a-z0-9+/]{3}=)?(?![\w+/=]))",
        _VALUE,
    ),
    # scheme://user:x@host (the scheme is its whole run of scheme characters, for the reason above)
    (r"(?<![a-z0-9+.-])[a-z0-9+.-]+://[^\s/:@'\"?#]+:(?=[^\s/@'\"?#]+@)", r"[^\s/@'\"?#]+"),
    # curl -H 'X-Api-Key: x' (a header named for a secret; Authorization has its own form)
    (
        r"(?<![\w-])(?:-H|--header)\s+['\"]?(?!authorization)[\w-]*(?:key|token|secret|password)[\w-]*\s*:\s*",
        _VALUE,
    ),
    # curl -u user:x, --user user:x (curl's: docker's -u is user:group). The commands' words
    # before the option are bounded: a lazy scan to the end from every "curl" was quadratic.
    (r"\b(?:curl|wget|http|https)\b[^;&|\n]{0,200}?\s(?:-u|--user)\s+['\"]?[^\s:'\"]+:", _VALUE),
    # openssl -pass pass:x, -passin pass:x
    (r"(?<![\w-])pass:", _VALUE),
    # mysql -px (attached), sshpass -p x, docker login -p x
    (r"\b(?:mysql|mariadb|mysqldump|mysqladmin|mysqlimport)\b[^;&|\n]{0,200}?\s(?-i:-p)(?=\S)", _VALUE),
    (r"\bsshpass\s+-p\s*", _VALUE),
    (
        # (the first "login" only: trying each within reach, each with its own scan, cost 5 ms a KB)
        r"\b(?:docker|podman|buildah|skopeo|helm|oras)\b(?>[^;&|\n]{0,200}?\blogin\b)[^;&|\n]{0,200}?\s-p\s+",
        _VALUE,
    ),
)
_ASSIGNMENTS = re.compile(
    "(?i)"
    + "|".join(f"(?P<k{i}>{keep})(?P<v{i}>{value})" for i, (keep, value) in enumerate(_FORMS))
    # Bearer x, Basic x: only a value that looks like a credential (it has a digit or a symbol),
    # and not a command line's next option (`--password-store=basic --use-mock-keychain`; a
    # token of base64url may start with "--", but not with a lowercase word and its end)
    + r"|(?P<kb>\b(?:bearer|basic)\s+)"
    + r"(?P<vb>(?!(?-i:--[a-z][a-z-]*)(?:[=\s]|$))(?=[\w.~+/=-]*[0-9+/=._~-])[\w.~+/=-]{8,})"
)


_MIN_ASSIGNED = 4
"""Values shorter than this are left: a count or a flag, not a secret."""

# Every match of `_ASSIGNMENTS` holds one of these words in what it keeps (a name, a command, a
# scheme's "://"), and starts at one, at the start of the run of name characters holding it (or
# the quote before that run), at the start of its line, or at the start of the scheme before it.
# Trying the forms at every position costs about 0.6 ms a KB; finding these words costs a
# fiftieth of that, and the forms are then tried only where a match can start.
_ANCHOR_WORDS = (
    "pass|secret|token|key|pwd|authorization|://|curl|wget|http|mysql|mariadb|sshpass"
    "|docker|podman|buildah|skopeo|helm|oras|-h|--header|bearer|basic"
)
_ANCHORS = re.compile(_ANCHOR_WORDS)
"""On lowercased ASCII text: every word starts with a fixed character, which the engine skips to."""
_ANCHORS_ANY = re.compile(f"(?i)(?=(?:{_ANCHOR_WORDS}))")
"""On other text (whose lowercase may differ in length, or match where `(?i)` would not)."""
_WORD_RUN = re.compile(r"[\w.-]*")
_SCHEME_RUN = re.compile(r"(?i)[a-z0-9+.-]*")
_BLANKS = re.compile(r"[ \t]*")


def _back(run: re.Pattern[str], reverse: str, at: int, stop: int) -> int:
    """Where the run of `run`'s characters ending at `at` starts, looking back no further than
    `stop` (`reverse` is the text reversed)."""
    size = len(reverse)
    found = run.match(reverse, size - at, size - stop)
    return at - (found.end() - found.start()) if found else at


def _starts(text: str) -> list[int]:
    """Every position where a match of `_ASSIGNMENTS` can start, in order.

    A run of name characters is looked back over once: the anchors in it (`passpasspass...`)
    share its start."""
    if text.isascii():
        anchors = [found.start() for found in _ANCHORS.finditer(text.lower())]
        # Matches do not overlap: an anchor hides another only inside one run of name characters
        # (`sshpass`), whose start both share, or just after a "-" (`-helm`, `-http`).
        anchors += [at + 1 for at in anchors if text[at] == "-"]
        anchors.sort()
    else:
        anchors = [found.start() for found in _ANCHORS_ANY.finditer(text)]
    reverse = text[::-1]
    starts: set[int] = set()
    word_start = word_end = scheme_start = scheme_end = -1
    for at in anchors:
        starts.add(at)
        found = _back(_WORD_RUN, reverse, at, max(word_end, 0))
        if found != word_end:  # else the run goes on from the previous anchor's, and starts where it does
            word_start = found
            starts.add(word_start)
            if word_start and text[word_start - 1] in "\"'":
                starts.add(word_start - 1)
            line = _back(_BLANKS, reverse, word_start, 0)
            if line == 0 or text[line - 1] == "\n":
                starts.add(line)
        word_end = at
        if text.startswith("://", at):
            found = _back(_SCHEME_RUN, reverse, at, max(scheme_end, 0))
            if found != scheme_end:
                scheme_start = found
                starts.add(scheme_start)
            scheme_end = at
    return sorted(starts)


def _assigned(text: str) -> str:
    """`text` with `_ASSIGNMENTS` replaced: the same as `_ASSIGNMENTS.sub(_keep_name, text)`,
    trying the forms only where they can start (`_starts`): a seventh of the time for a short
    command, a tenth to a fiftieth for a file's content."""
    out, pos = [], 0
    for start in _starts(text):
        if start < pos:
            continue
        found = _ASSIGNMENTS.match(text, start)
        if found is not None:
            out += [text[pos:start], _keep_name(found)]
            pos = found.end()
    return "".join([*out, text[pos:]]) if out else text


def _maybe_assigned(text: str) -> bool:
    """Whether `text` holds what every form of `_ASSIGNMENTS` needs (`=`, `:`, an option, or a
    scheme's name). Every call's arguments are redacted: most have none of it, and these few
    substring tests cost a fraction of trying every form at every position."""
    if "=" in text or ":" in text or " -" in text:
        return True
    lowered = text.lower()
    return "bearer" in lowered or "basic" in lowered


def _keep_name(match: re.Match[str]) -> str:
    for name, value in match.groupdict().items():
        if value is None or not name.startswith("v"):
            continue
        keep = match.group("k" + name[1:])
        bare = value.strip("'\"")
        if bare == REDACTED or len(bare) < _MIN_ASSIGNED:  # `--pass 1`, `FIRST_PASS=1`: no secret
            return match.group(0)
        if value[0] in "\"'" and len(value) > 1 and value[-1] == value[0]:
            return f"{keep}{value[0]}{REDACTED}{value[0]}"
        return keep + REDACTED
    return match.group(0)  # pragma: no cover - every alternative has a value group


_ESCAPES = re.compile(r"(%[0-9A-Fa-f]{2}|\\u[0-9A-Fa-f]{4}|\\/)")
"""A character as a URL (`%2f`, either case) or a JSON string (`\\u0026`, `\\/`) may spell it."""
_ANCHOR = re.compile(r"[A-Za-z0-9]{4,}")


def _escaped_char(escape: str) -> str:
    if escape == "\\/":
        return "/"
    return chr(int(escape[1:] if escape[0] == "%" else escape[2:], 16))


def _unescaped(value: str, pattern: re.Pattern[str]) -> str:
    """`value` with the registered secrets it spells with escapes replaced: a secret in a URL
    encoded other than as registered (`quote(s)` keeps `/`, lowercase hex, a base64 credential
    whose `=` became `%3D`), or in JSON from an encoder that escapes more than it must (Go's
    `\\u0026` for `&`, any character as `\\uXXXX`). The escapes are decoded into a second
    text, the secrets are looked for there, and what they were spelled with is replaced."""
    pieces = _ESCAPES.split(value)  # text, escape, text, ..., text
    if len(pieces) == 1:
        return value
    texts, escapes = pieces[0::2], pieces[1::2]
    chars = [_escaped_char(e) for e in escapes]
    decoded = "".join([*itertools.chain.from_iterable(zip(texts[:-1], chars, strict=True)), texts[-1]])
    found = [m.span() for m in pattern.finditer(decoded)]
    if not found:
        return value
    # Where each escape's character is in the decoded text, and how many characters the escapes
    # before it took beyond one each.
    positions = [n + i for i, n in enumerate(itertools.accumulate(map(len, texts[:-1])))]
    extra = [0, *(n - i - 1 for i, n in enumerate(itertools.accumulate(map(len, escapes))))]
    out: list[str] = []
    last = 0
    for start, end in found:
        begin = start + extra[bisect.bisect_left(positions, start)]
        out.append(value[last:begin])
        out.append(REDACTED)
        last = end + extra[bisect.bisect_left(positions, end)]
    out.append(value[last:])
    return "".join(out)


class Redactor:
    """Replaces registered secret values and credential-shaped strings with `[REDACTED]`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._anchors: frozenset[str] | None = frozenset()
        """A part of each secret that any spelling of it keeps as it is (its longest run of
        letters and digits: URLs and JSON escape neither), or None when one has none."""
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        """Register a secret value (values shorter than 6 characters are refused: they would redact words)."""
        if len(secret) < _MIN_SECRET_LENGTH:
            raise ValueError(f"a secret of {len(secret)} characters is too short to redact safely")
        with self._lock:
            if secret in self._values:
                return
            self._values.add(secret)
            self._compile()

    def add_dsn(self, dsn: str) -> None:
        """Register a database connection string and the password it holds (when long enough)."""
        password = dsn_password(dsn)
        decoded = None
        if password and "%" in password:
            import urllib.parse

            decoded = urllib.parse.unquote(password)  # as it is typed, and as the server sees it
        for secret in (dsn, password, decoded):
            if secret and len(secret) >= _MIN_SECRET_LENGTH:
                self.add(secret)

    def remove(self, secret: str) -> None:
        with self._lock:
            self._values.discard(secret)
            self._compile()

    def _compile(self) -> None:
        ordered = sorted(self._values, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(v) for v in ordered)) if ordered else None
        anchors = set()
        for secret in ordered:
            runs = _ANCHOR.findall(secret)
            if not runs:
                self._anchors = None
                return
            anchors.add(max(runs, key=len))
        self._anchors = frozenset(anchors)

    def _may_spell(self, value: str) -> bool:
        """Might `value` spell a secret with escapes? (Cheap: most texts hold no part of one.)"""
        if "%" not in value and "\\" not in value:
            return False
        anchors = self._anchors
        return anchors is None or any(a in value for a in anchors)

    def text(self, value: str, *, assignments: bool = False, shapes: bool = True) -> str:
        """`assignments`: also values given to secret-named options and variables in the text
        (`--password=x`, `TOKEN=x`): for what callers write (arguments, reasons), not for what
        services answer (a page of code full of `token = ...` would be mangled). `shapes=False`:
        the registered values only, for data the caller asked for (a table of API keys stays one)."""
        pattern = self._pattern
        if pattern is not None:
            value = pattern.sub(REDACTED, value)
            if self._may_spell(value):
                value = _unescaped(value, pattern)
        if shapes:
            value = _pem(_SHAPES.sub(REDACTED, value))
        if assignments and _maybe_assigned(value):
            return _assigned(value)
        return value

    def value(
        self,
        value: Any,
        *,
        key: str = "",
        redact_keys: bool = True,
        by_key_name: bool = True,
        assignments: bool = False,
        shapes: bool = True,
    ) -> Any:
        """A JSON-like value with secrets replaced, in object keys too; any value under a
        secret-named key is replaced whole. `assignments`, `shapes`: as for `text`."""
        if by_key_name and key and _SECRET_KEYS.search(key) and value not in (None, "", [], {}):
            return REDACTED
        if isinstance(value, str):
            return self.text(value, assignments=assignments, shapes=shapes)
        if isinstance(value, dict):
            return {
                (self.text(k, shapes=shapes) if redact_keys and isinstance(k, str) else k): self.value(
                    v,
                    key=str(k),
                    redact_keys=redact_keys,
                    by_key_name=by_key_name,
                    assignments=assignments,
                    shapes=shapes,
                )
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [
                self.value(
                    v,
                    redact_keys=redact_keys,
                    by_key_name=by_key_name,
                    assignments=assignments,
                    shapes=shapes,
                )
                for v in value
            ]
        return value


def dsn_password(dsn: str) -> str | None:
    """The password a PostgreSQL connection string (URI or `key=value` form) holds, if any."""
    if "://" in dsn:
        import urllib.parse  # on use: a sidecar without PostgreSQL databases need not load it

        with contextlib.suppress(ValueError):
            return urllib.parse.urlsplit(dsn).password
        # urlsplit refuses some malformed URIs (an unclosed `[`) that still hold a password
        found = re.match(r"[^:/]+://[^:@/]*:([^@]*)@", dsn)
        return found.group(1) if found else None
    found = re.search(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", dsn)
    return found.group(1).strip("'") if found else None


_QUOTED = re.compile(r'"([^"\n]*)"')


def without_dsn(text: str, dsn: str) -> str:
    """`text` (a driver's error message) without the connection string `dsn` or its password.

    libpq quotes the part of a DSN it cannot parse: the whole DSN, or a piece that may hold
    part of the password; such a piece goes too. The password goes whatever its length (the
    `Redactor` refuses short values, which would hit words: in one message that is the lesser harm)."""
    text = text.replace(dsn, REDACTED)
    password = dsn_password(dsn)
    if not password:
        return text
    start = dsn.find(password)
    end = start + len(password)

    def quoted(match: re.Match[str]) -> str:
        piece = match.group(1)
        at = dsn.find(piece) if piece else -1
        overlaps = at >= 0 and start >= 0 and at < end and at + len(piece) > start
        return f'"{REDACTED}"' if overlaps else match.group(0)

    return _QUOTED.sub(quoted, text).replace(password, REDACTED)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's message and arguments."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        # Assignments too: a tool's error quoting the caller's `--password=x` is logged.
        message = record.getMessage()
        redacted = self._redactor.text(message, assignments=True)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and record.exc_info[1] is not None:
            text = self._redactor.text(str(record.exc_info[1]), assignments=True)
            if text != str(record.exc_info[1]):
                record.exc_info = None
                record.msg = f"{record.msg} ({text})"
        return True

"""The errors that do not cross the wire, defined without gRPC (see `mcp_local.errors`).

`mcphub local serve` reads and checks the manifest before it loads gRPC (the serving process
does that, see `mcp_local.serving`), so the errors of configuration live here.
"""

from __future__ import annotations

__all__ = ["ConfigError", "ToolError", "ToolHubError", "read_text", "yaml_problem"]


class ToolHubError(Exception):
    """Base of every error raised by mcphub code."""


class ToolError(ToolHubError):
    """Raised by a tool handler for an expected failure; its message is shown to the model."""


class ConfigError(ToolHubError):
    """Invalid configuration: the message names the key and the value expected."""


def read_text(path: object, what: str) -> str:
    """The text of a file the user gave (`what` it is, for the message): a ConfigError naming it
    when it cannot be read or is not UTF-8, never a traceback. The error quotes none of it."""
    from pathlib import Path

    try:
        data = Path(str(path)).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: {what} is not UTF-8 text (byte {exc.start}: 0x{data[exc.start]:02x}); save it as UTF-8"
        ) from None


def yaml_problem(exc: Exception) -> str:
    """What is wrong with a YAML text, and where, without quoting it: PyYAML's own message shows
    the offending line, which may hold a token or a password."""
    problem = getattr(exc, "problem", None)
    if not isinstance(problem, str):
        return type(exc).__name__
    text = f"{_at(getattr(exc, 'problem_mark', None))}{problem}"
    context = getattr(exc, "context", None)
    if isinstance(context, str):
        started = getattr(exc, "context_mark", None)
        text += f" ({context}{' from ' + _at(started)[:-2] if started is not None else ''})"
    return text


def _at(mark: object) -> str:
    line, column = getattr(mark, "line", None), getattr(mark, "column", None)
    return (
        f"line {line + 1}, column {column + 1}: " if isinstance(line, int) and isinstance(column, int) else ""
    )

"""Precise errors for a request the SDK refuses before any handler of ours runs.

The SDK's runner validates a request's params with pydantic and, when they do not fit, answers
-32602 with the fixed text "Invalid request parameters" and empty data (its dispatcher turns
every `ValidationError` into that); a request sent before `initialize` gets the same answer from
its pre-handshake gate. A client (or the agent reading the error) cannot tell which field is at
fault, or that nothing is wrong with the params at all. `PreciseErrors` is a server middleware
(`Server.middleware`): it wraps the runner's validation on every transport (stdio, 2025-era
sessions, the stateless 2026-07-28 wire) and rewrites those two answers into ones that name the
field and the problem, or say to send `initialize` first. `initialize` itself is screened
earlier, by the session door (`door._initialize_problem`).
"""

from __future__ import annotations

from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerMiddleware, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, INVALID_REQUEST
from pydantic import ValidationError

__all__ = ["PreciseErrors", "params_problem"]

_MAX_PROBLEMS = 5

_EXPECTED: dict[str, str] = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "a boolean",
    "bool_parsing": "a boolean",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "list_type": "an array",
}
"""pydantic's error type -> what the field should have been, in JSON's words."""

_UNION_MEMBERS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})
"""The tags pydantic adds to a location for each member of a plain union (`str | int`)."""


def _field(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "params"


def params_problem(method: str, exc: ValidationError) -> str:
    """The -32602 message for params of `method` that failed validation: each field at fault
    (a union's members merged: "must be a string or an integer") and what is wrong with it."""
    problems: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for error in exc.errors():
        loc = tuple(error["loc"])
        if len(loc) > 1 and loc[-1] in _UNION_MEMBERS:
            loc = loc[:-1]
        problems.setdefault(loc, []).append(dict(error))
    shown: list[str] = []
    for loc, errors in list(problems.items())[:_MAX_PROBLEMS]:
        field = _field(loc if not loc or loc[0] == "params" else ("params", *loc))
        expected = [_EXPECTED.get(e["type"]) for e in errors]
        if any(e["type"] == "missing" for e in errors):
            shown.append(f"{field} is required")
        elif all(expected):
            kinds = list(dict.fromkeys(expected))
            shown.append(f"{field} must be {' or '.join(k for k in kinds if k)}")
        else:
            shown.append(f"{field}: {errors[0]['msg']}")
    more = len(problems) - len(shown)
    if more > 0:
        shown.append(f"and {more} more")
    return f"Invalid params for {method}: {'; '.join(shown)}"


def _is_gate(exc: MCPError) -> bool:
    """Whether `exc` is the SDK runner's pre-handshake refusal (pinned: mcp 2.3, runner.py)."""
    error = exc.error
    return error.code == INVALID_PARAMS and error.message == "Invalid request parameters" and not error.data


def _initialized(ctx: ServerRequestContext[Any, Any]) -> bool:
    # The SDK keeps the handshake state on the session's connection (no public view; pinned: mcp 2.3).
    connection = getattr(ctx.session, "_connection", None)
    return bool(getattr(connection, "initialize_accepted", True))


class PreciseErrors(ServerMiddleware[Any]):
    """See the module's docstring."""

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        try:
            return await call_next(ctx)
        except ValidationError as exc:
            if ctx.request_id is None:
                raise
            raise MCPError(code=INVALID_PARAMS, message=params_problem(ctx.method, exc)) from None
        except MCPError as exc:
            if ctx.request_id is None or not _is_gate(exc) or _initialized(ctx):
                raise
            message = (
                f"Invalid Request: send initialize first: {ctx.method} came before the session's "
                "initialize request (and its notifications/initialized)"
            )
            raise MCPError(code=INVALID_REQUEST, message=message) from None

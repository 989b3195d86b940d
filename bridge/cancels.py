"""Why a call was cancelled, for the hub's audit log.

A client's `notifications/cancelled` (with its optional `reason`) made the SDK cancel the call's
handler, and so the gRPC call: the hub saw only a gRPC CANCELLED and recorded "the caller went
away", as for a client that disconnected. Now a call that has a `call_key` keeps running on the
hub until the bridge has told it (`CancelCall`) that the client cancelled it and why; only then
is its gRPC call cancelled, and the hub records "the client cancelled the call: <reason>".

The SDK cancels the handler before it hands the notification on, so the reason comes to the
handler through `CancelReasons`, a server middleware that sees every notification: it files the
reason under the session's connection and the request's id, where the handler waits for it a
moment. A cancel with no notification (stdin closed, a session ended, a stop) finds none and is
recorded as before. So is the cancel the session door sends for a client whose POST closed
before its answer (`door._cancel`): the client went away, it did not cancel.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import anyio
import grpc
from mcp.server.context import CallNext, HandlerResult, ServerMiddleware, ServerRequestContext

__all__ = ["DISCONNECTED", "CancelReasons", "call_key", "cancellable"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

DISCONNECTED = "the client closed the connection"
"""The reason of the cancel `door._cancel` sends for a client that went away."""

REASON_WAIT_S = 0.25
"""How long a cancelled handler waits for its notification's reason (it is on its way at once)."""

CANCEL_CALL_TIMEOUT_S = 2.0
"""How long the hub may take to note the reason before the call is cancelled anyway."""

_reasons: dict[tuple[int, str], tuple[asyncio.Event, list[str]]] = {}


def _connection_of(ctx: ServerRequestContext[Any, Any]) -> int:
    # The session's connection (no public view of it; pinned: mcp 2.3): one per stdio or 2025 session.
    return id(getattr(ctx.session, "_connection", ctx.session))


def call_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode("ascii")


@contextlib.contextmanager
def _expecting(ctx: ServerRequestContext[Any, Any]) -> Iterator[tuple[asyncio.Event, list[str]] | None]:
    if ctx.request_id is None:
        yield None
        return
    key = (_connection_of(ctx), str(ctx.request_id))
    if key in _reasons:
        yield None
        return
    entry = _reasons[key] = (asyncio.Event(), [])
    try:
        yield entry
    finally:
        _reasons.pop(key, None)


class CancelReasons(ServerMiddleware[Any]):
    """Files the reason of each `notifications/cancelled` for the handler it cancelled."""

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method == "notifications/cancelled" and ctx.request_id is None and ctx.params:
            request_id = ctx.params.get("requestId")
            reason = ctx.params.get("reason")
            if isinstance(request_id, int | str) and not isinstance(request_id, bool):
                entry = _reasons.get((_connection_of(ctx), str(request_id)))
                if entry is not None and not entry[0].is_set():
                    entry[1].append(reason if isinstance(reason, str) else "")
                    entry[0].set()
        return await call_next(ctx)


async def cancellable(
    ctx: ServerRequestContext[Any, Any],
    work: Awaitable[_T],
    key: str,
    tell_hub: Callable[[str, str], Awaitable[None]],
) -> _T:
    """`work` (the gRPC call made with `key`), run apart from the handler's cancellation: when
    the client cancels the request, the hub is told why (`tell_hub(key, reason)`) before the
    call is cancelled."""
    with _expecting(ctx) as expected:
        task = asyncio.ensure_future(work)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            with anyio.CancelScope(shield=True):
                if expected is not None:
                    with anyio.move_on_after(REASON_WAIT_S):
                        await expected[0].wait()
                    reason = expected[1][0] if expected[1] else None
                    if reason is not None and reason != DISCONNECTED:
                        try:
                            with anyio.fail_after(CANCEL_CALL_TIMEOUT_S):
                                await tell_hub(key, reason)
                        except (grpc.aio.AioRpcError, TimeoutError) as exc:
                            logger.debug("could not tell the hub why a call was cancelled: %s", exc)
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            raise

"""Tool-list changes: the hub's `WatchTools` stream becomes MCP's `notifications/tools/list_changed`.

Each MCP client gets its own watch, made with its own token, so it hears about
the tools it can see (a sandbox registering, a pack reloading):

- handshake versions (2025-06-18, 2025-11-25): once the client sends
  `notifications/initialized`, a watch runs for as long as the session does
  (the SDK runs notification handlers in the session's task group and cancels
  them when the session ends) and sends `notifications/tools/list_changed`
  on the session's standalone channel (the GET stream, or stdio);
- 2026-07-28: a client opens `subscriptions/listen`; the watch runs for as
  long as that stream, publishing to a bus of its own that the SDK's
  `ListenHandler` turns into stamped notifications on the stream.

A watch the hub ends as UNAUTHENTICATED (a reload revoked or rotated the token that opened it)
ends what it served: the 2025-era session is terminated (its GET stream closes, its next
request gets 404, its place under the principal's session cap is free), and the listen stream
gets a -32030 error as its answer, which ends it. Before, both stayed open and silent: a
rotated client never learned it had to listen again, and a revoked token's GET streams kept
the principal's session slots, so the new token got 429.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import anyio.abc
import grpc
from mcp.server.context import ServerRequestContext
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged
from mcp.shared.exceptions import MCPError
from mcp_types import NotificationParams, SubscriptionsListenRequestParams, SubscriptionsListenResult
from starlette.requests import Request

from .errors import STATUS_TO_JSONRPC
from .hubclient import ToolHubClient

__all__ = ["ToolChanges", "ending_http_sessions"]

logger = logging.getLogger(__name__)

TokenOf = Callable[[ServerRequestContext[Any, Any]], "str | None"]
EndSession = Callable[[ServerRequestContext[Any, Any]], Awaitable[None]]


def ending_http_sessions(sessions: Callable[[], Mapping[str, Any]]) -> EndSession:
    """`EndSession` for Streamable HTTP: terminates the session named by the request's
    `Mcp-Session-Id`, found in `sessions()` (the SDK's live transports by ID)."""

    async def end(ctx: ServerRequestContext[Any, Any]) -> None:
        request = ctx.request
        session_id = request.headers.get("mcp-session-id") if isinstance(request, Request) else None
        transport = sessions().get(session_id) if session_id else None
        if transport is not None and not transport.is_terminated:
            logger.info("an MCP session ended: the token that opened it is no longer valid")
            # Shielded: ending the session cancels the handler that ends it, which must not cut
            # the closing of its streams short.
            with anyio.CancelScope(shield=True):
                await transport.terminate()

    return end


class ToolChanges:
    """The two handlers a bridge registers to relay tool-list changes."""

    def __init__(self, hub: ToolHubClient, token_of: TokenOf, end_session: EndSession | None = None) -> None:
        """`end_session` terminates the 2025-era session a handler's request belongs to (nothing
        to do on stdio, where the bridge's own token is the only one)."""
        self._hub = hub
        self._token_of = token_of
        self._end_session = end_session

    async def _watch(
        self,
        token: str | None,
        changed: Callable[[], Awaitable[None]],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> str | None:
        """Call `changed` after every change the hub reports (not for the revision current at the
        start). `task_status` is told once the watch has that first revision (or has ended).
        Returns the hub's words when it ended the watch as UNAUTHENTICATED (the token is no
        longer valid), else None."""
        first = True
        try:
            async for _ in self._hub.watch_tools(token):
                if first:
                    first = False
                    task_status.started()
                    continue
                await changed()
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                logger.info("tool-list watch ended: %s: %s", exc.code().name, exc.details())
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                return exc.details() or "the bearer token is no longer valid"
        finally:
            if first:
                task_status.started()  # a watch that never began: the listen stream goes on without it
        return None

    async def on_initialized(self, ctx: ServerRequestContext[Any, Any], params: NotificationParams) -> None:
        """Handshake era: watch for the lifetime of the session (this handler is cancelled with it)."""
        session = ctx.session
        revoked = await self._watch(self._token_of(ctx), session.send_tool_list_changed)
        if revoked is not None and self._end_session is not None:
            await self._end_session(ctx)  # cancels this handler too: nothing may follow it

    async def on_listen(
        self, ctx: ServerRequestContext[Any, Any], params: SubscriptionsListenRequestParams
    ) -> SubscriptionsListenResult:
        """2026-07-28: serve the listen stream while a watch publishes the changes to it."""
        bus = InMemorySubscriptionBus()
        listen = ListenHandler(bus, max_subscriptions=1)
        token = self._token_of(ctx)

        revoked: list[str] = []

        async def publish() -> None:
            await bus.publish(ToolsListChanged())

        async def watch(*, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            reason = await self._watch(token, publish, task_status=task_status)
            if reason is not None:
                revoked.append(reason)
                tg.cancel_scope.cancel()  # the listen stream ends: its answer says why

        result: SubscriptionsListenResult | None = None
        async with anyio.create_task_group() as tg:
            # The watch has the list as it is before the client hears that it listens: a change it
            # makes at once (a test's trigger) is one the watch reports, not its starting point.
            await tg.start(watch)
            try:
                result = await listen(ctx, params)
            finally:
                tg.cancel_scope.cancel()
        if revoked:
            code = STATUS_TO_JSONRPC[grpc.StatusCode.UNAUTHENTICATED]
            raise MCPError(code=code, message=f"{revoked[0]}; the listen stream has ended")
        assert result is not None  # only the revocation cancels the listen without cancelling this task
        return result

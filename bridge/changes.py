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
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import grpc
from mcp.server.context import ServerRequestContext
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged
from mcp_types import NotificationParams, SubscriptionsListenRequestParams, SubscriptionsListenResult

from .hubclient import ToolHubClient

__all__ = ["ToolChanges"]

logger = logging.getLogger(__name__)

TokenOf = Callable[[ServerRequestContext[Any, Any]], "str | None"]


class ToolChanges:
    """The two handlers a bridge registers to relay tool-list changes."""

    def __init__(self, hub: ToolHubClient, token_of: TokenOf) -> None:
        self._hub = hub
        self._token_of = token_of

    async def _watch(
        self,
        token: str | None,
        changed: Callable[[], Awaitable[None]],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call `changed` after every change the hub reports (not for the revision current at the
        start). `task_status` is told once the watch has that first revision (or has ended)."""
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
        finally:
            if first:
                task_status.started()  # a watch that never began: the listen stream goes on without it

    async def on_initialized(self, ctx: ServerRequestContext[Any, Any], params: NotificationParams) -> None:
        """Handshake era: watch for the lifetime of the session (this handler is cancelled with it)."""
        session = ctx.session
        await self._watch(self._token_of(ctx), session.send_tool_list_changed)

    async def on_listen(
        self, ctx: ServerRequestContext[Any, Any], params: SubscriptionsListenRequestParams
    ) -> SubscriptionsListenResult:
        """2026-07-28: serve the listen stream while a watch publishes the changes to it."""
        bus = InMemorySubscriptionBus()
        listen = ListenHandler(bus, max_subscriptions=1)
        token = self._token_of(ctx)

        async def publish() -> None:
            await bus.publish(ToolsListChanged())

        async with anyio.create_task_group() as tg:
            # The watch has the list as it is before the client hears that it listens: a change it
            # makes at once (a test's trigger) is one the watch reports, not its starting point.
            await tg.start(self._watch, token, publish)
            try:
                result = await listen(ctx, params)
            finally:
                tg.cancel_scope.cancel()
        return result

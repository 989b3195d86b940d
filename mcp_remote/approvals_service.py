"""The `Approvals` gRPC service: list, watch and decide approvals, for principals with the approver role."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc

from mcp_local.errors import HubError, InvalidArgument, PermissionDenied, Unavailable
from mcp_local.principals import Authenticator, Principal
from mcp_local.service import StreamLimit
from mcp_local.servicer import abort_with, caller_token
from mcphub_proto.v1 import approvals_pb2 as apb
from mcphub_proto.v1 import approvals_pb2_grpc as apb_grpc

from .approvals import Approval, ApprovalBook, ApprovalState, arguments_excerpt

__all__ = ["ApprovalsServicer", "approval_to_proto"]

_STATES: tuple[ApprovalState, ...] = ("pending", "approved", "denied", "expired", "used")
PAGE_SIZE = 100
MAX_PAGE_SIZE = 200
PAGE_BYTES = 3 * 1024 * 1024
"""A page of ListApprovals stops growing past this size: below the 4 MiB a gRPC client takes by
default (one approval alone is about 64 KiB of arguments, and always fits)."""


logger = logging.getLogger(__name__)


def approval_to_proto(a: Approval) -> apb.Approval:
    # A hub cuts the arguments of old rows when it starts; a hub of an older version sharing the
    # store may still write whole ones since: cut them here too.
    shown, left_out = arguments_excerpt(a.arguments_json)
    return apb.Approval(
        id=a.id,
        call_id=a.call_id,
        principal=a.principal,
        tool=a.tool,
        arguments_json=shown,
        arguments_bytes_left_out=a.arguments_left_out + left_out,
        arguments_sha256=a.args_sha256,
        reason=a.reason,
        rule=a.rule,
        approver_groups=list(a.approvers),
        state=a.state,
        created_at_unix_ms=a.created_ms,
        expires_at_unix_ms=a.expires_ms,
        decided_by=a.decided_by,
        decided_at_unix_ms=a.decided_ms,
        decision_reason=a.decision_reason,
        used_at_unix_ms=a.used_ms,
    )


def _position(token: str) -> tuple[int, str] | None:
    """The (created_ms, id) a page token names (`ListApprovals` made it); None for the first page."""
    if not token:
        return None
    created, sep, approval_id = token.partition(":")
    try:
        if not sep or not approval_id or not 0 <= int(created) < 2**63:  # a time SQLite can hold
            raise ValueError(token)
        return int(created), approval_id
    except ValueError:
        raise InvalidArgument(
            f"page_token {token[:80]!r} is not one ListApprovals returned; send next_page_token as it came"
        ) from None


MAX_REASON_CHARS = 4096
"""The longest reason an approver may give with a decision."""


class ApprovalsServicer(apb_grpc.ApprovalsServicer):
    def __init__(
        self, book: ApprovalBook, authenticator: Authenticator, streams: StreamLimit | None = None
    ) -> None:
        self._book = book
        self._authenticate = authenticator.authenticate
        self._streams = streams if streams is not None else StreamLimit(None)

    def _approver(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        principal = self._authenticate(caller_token(context))
        if not principal.has_role("approver"):
            raise PermissionDenied(f"principal {principal.name!r} does not have the approver role")
        return principal

    async def ListApprovals(
        self, request: apb.ListApprovalsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> apb.ListApprovalsResponse:
        try:
            self._approver(context)
            states = tuple(s.lower() for s in request.states) or ("pending",)  # "PENDING" too
            unknown = [s for s in states if s not in _STATES]
            if unknown:
                raise InvalidArgument(f"unknown state {unknown[0]!r}; expected one of {', '.join(_STATES)}")
            if request.page_size < 0:
                raise InvalidArgument(f"page_size must be 0 (the default, {PAGE_SIZE}) or more")
            limit = min(request.page_size or PAGE_SIZE, MAX_PAGE_SIZE)
            after = _position(request.page_token)
            found = await self._book.page(cast(tuple[ApprovalState, ...], states), after, limit + 1)
        except Exception as exc:
            await abort_with(context, exc)
        page: list[apb.Approval] = []
        size = 0
        for approval in found[:limit]:
            message = approval_to_proto(approval)
            size += message.ByteSize() + 8  # its tag and length in the response
            if page and size > PAGE_BYTES:
                break
            page.append(message)
        more = len(page) < len(found)
        last = found[len(page) - 1] if page else None
        token = f"{last.created_ms}:{last.id}" if more and last is not None else ""
        return apb.ListApprovalsResponse(approvals=page, next_page_token=token)

    async def WatchApprovals(
        self, request: apb.WatchApprovalsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[apb.Approval]:
        try:
            approver = self._approver(context)
            self._streams.enter(approver, "WatchApprovals")
        except Exception as exc:
            await abort_with(context, exc)
        try:
            queue = await self._book.watch()
        except BaseException as exc:
            # Cancelled too (the caller left while a shared store was slow): its place is freed.
            self._streams.leave(approver)
            if not isinstance(exc, Exception):
                raise
            await abort_with(context, exc)
        try:
            for approval in await self._book.listing(("pending",)):
                yield approval_to_proto(approval)
            while True:
                change = await self._streams.wait(queue.get())
                # Asked again at every approval, and at every reload (None): an approver removed
                # (or whose token was revoked) stops seeing calls' arguments at once.
                self._approver(context)
                if change is not None:
                    yield approval_to_proto(change)
        except asyncio.CancelledError:
            raise
        except HubError as exc:
            await abort_with(context, exc)
        finally:
            self._book.unwatch(queue)
            self._streams.leave(approver)

    async def DecideApproval(
        self, request: apb.DecideApprovalRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> apb.Approval:
        try:
            # The book checks the role itself, to record a refused attempt with its approval.
            approver = self._authenticate(caller_token(context))
            if not request.id:
                raise InvalidArgument("give the id of the approval to decide")
            if not request.approve and not request.reason.strip():
                raise InvalidArgument("a denial needs a reason the caller can read")
            if len(request.reason) > MAX_REASON_CHARS:
                # It is stored, recorded, sent to the caller and to every watcher, and fills pages.
                raise InvalidArgument(
                    f"the reason is {len(request.reason)} characters; at most {MAX_REASON_CHARS} are taken: "
                    "say it shorter (a link to more, say)"
                )
            try:
                decided = await self._book.decide(
                    request.id, approver, request.approve, request.reason.strip()
                )
            except HubError:
                raise
            except Exception as exc:  # the store: a full disk, a database gone; the approver can try again
                # One line, as every other write a full disk refuses: its cause, not a traceback.
                logger.error(
                    "could not record the decision on approval %s: %s: %s",
                    request.id,
                    type(exc).__name__,
                    exc,
                )
                raise Unavailable(
                    f"the decision on approval {request.id} could not be stored (the approvals store "
                    "cannot be written: the hub's log says why); it is still pending, try again"
                ) from None
        except Exception as exc:
            await abort_with(context, exc)
        return approval_to_proto(decided)

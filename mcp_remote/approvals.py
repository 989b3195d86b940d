"""Human approvals: the state machine of one approval, and the book of them a hub keeps.

    pending --approve--> approved --use--> used
       |  \\--deny-----> denied
       \\----timeout----> expired          (a timeout is a denial; so is a hub restart)

An approval is bound to principal + tool + a digest of the canonical arguments, is used at
most once, expires, and cannot be granted by the principal that asked.

The digest is HMAC-SHA256 under a random key of the approval's own, kept only in the
approval's stored row and wiped once the approval can no longer be used. A plain SHA-256
would let anyone holding the audit log or an approvals listing confirm a guess of an
argument the redactor hid (a password in a command, say): every other argument is there in
the redacted copy. The key travels with the row, so any replica sharing the store checks it. The book stores
approvals in the hub's store (so any replica sharing it can decide or use them) and wakes
the call waiting on this replica directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

import orjson

from mcp_local.errors import Conflict, PermissionDenied, ToolNotFound
from mcp_local.principals import Principal

from .policy import describe_approver_groups, missing_approver_groups

__all__ = ["Approval", "ApprovalBook", "ApprovalState", "ApprovalStore", "arguments_digest"]

logger = logging.getLogger(__name__)

ApprovalState = Literal["pending", "approved", "denied", "expired", "used"]
POLL_INTERVAL_S = 0.5


def _canonical(arguments: Mapping[str, Any]) -> bytes:
    """The arguments as canonical JSON: sorted keys, no whitespace."""
    return orjson.dumps(dict(arguments), option=orjson.OPT_SORT_KEYS)


def arguments_digest(arguments: Mapping[str, Any], key: str) -> str:
    """HMAC-SHA256 under `key` (hex) of the arguments' canonical JSON."""
    return hmac.new(bytes.fromhex(key), _canonical(arguments), hashlib.sha256).hexdigest()


def _matches(approval: Approval, arguments: Mapping[str, Any]) -> bool:
    if approval.args_key:
        expected = arguments_digest(arguments, approval.args_key)
    else:  # an approval stored before digests were keyed: its plain SHA-256
        expected = hashlib.sha256(_canonical(arguments)).hexdigest()
    return hmac.compare_digest(expected, approval.args_sha256)


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Approval:
    id: str
    call_id: str
    principal: str
    tool: str
    args_sha256: str
    """HMAC-SHA256 of the canonical arguments under `args_key` (see the module's docstring)."""
    arguments_json: str
    """The call's arguments, redacted, for the approver to read."""
    reason: str
    rule: str
    approvers: tuple[str, ...]
    state: ApprovalState
    created_ms: int
    expires_ms: int
    instance: str
    decided_by: str = ""
    decided_ms: int = 0
    decision_reason: str = ""
    used_ms: int = 0
    args_key: str = ""
    """The digest's key (hex), in the stored row only; wiped once the approval cannot be used."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "call_id": self.call_id,
            "principal": self.principal,
            "tool": self.tool,
            "args_sha256": self.args_sha256,
            "arguments": self.arguments_json,
            "reason": self.reason,
            "rule": self.rule,
            "approvers": list(self.approvers),
            "state": self.state,
            "created_ms": self.created_ms,
            "expires_ms": self.expires_ms,
            "decided_by": self.decided_by,
            "decided_ms": self.decided_ms,
            "decision_reason": self.decision_reason,
            "used_ms": self.used_ms,
        }


class ApprovalStore(Protocol):
    async def put_approval(self, approval: Approval) -> None: ...

    async def get_approval(self, approval_id: str) -> Approval | None: ...

    async def swap_approval(self, expected: ApprovalState, approval: Approval) -> bool:
        """Store `approval` if the stored one is still in state `expected` (compare-and-set)."""
        ...

    async def list_approvals(self, states: tuple[ApprovalState, ...]) -> list[Approval]: ...


class ApprovalBook:
    """Creates, decides, waits for and uses approvals; emits the audit events through `on_event`."""

    def __init__(self, store: ApprovalStore, instance: str, on_event: Any = None) -> None:
        self._store = store
        self._instance = instance
        self._waiters: dict[str, asyncio.Future[Approval]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._on_event = on_event or (lambda kind, approval, **extra: None)
        self._watchers: set[asyncio.Queue[Approval]] = set()

    async def create(
        self,
        *,
        call_id: str,
        principal: str,
        tool: str,
        arguments: Mapping[str, Any],
        arguments_json: str,
        reason: str,
        rule: str,
        approvers: tuple[str, ...],
        timeout_s: float,
    ) -> Approval:
        now = _now_ms()
        key = secrets.token_hex(32)
        approval = Approval(
            id="apr_" + secrets.token_urlsafe(9),
            call_id=call_id,
            principal=principal,
            tool=tool,
            args_sha256=arguments_digest(arguments, key),
            args_key=key,
            arguments_json=arguments_json,
            reason=reason,
            rule=rule,
            approvers=approvers,
            state="pending",
            created_ms=now,
            expires_ms=now + int(timeout_s * 1000),
            instance=self._instance,
        )
        await self._store.put_approval(approval)
        self._on_event("pending", approval)
        self._publish(approval)
        return approval

    async def wait(self, approval: Approval) -> Approval:
        """Until approved, denied or expired (a timeout expires it); a cancelled wait leaves it pending."""
        future: asyncio.Future[Approval] = asyncio.get_running_loop().create_future()
        self._waiters[approval.id] = future
        self._ensure_poller()
        remaining = max(0.0, approval.expires_ms / 1000 - time.time())
        try:
            return await asyncio.wait_for(asyncio.shield(future), remaining)
        except TimeoutError:
            return await self.expire(approval.id, "no decision before the approval timed out")
        finally:
            self._waiters.pop(approval.id, None)

    async def expire(self, approval_id: str, why: str) -> Approval:
        current = await self._store.get_approval(approval_id)
        if current is None:
            raise ToolNotFound(f"no approval {approval_id}")
        if current.state != "pending":
            return current
        expired = replace(current, state="expired", decided_ms=_now_ms(), decision_reason=why, args_key="")
        if await self._store.swap_approval("pending", expired):
            self._on_event("expired", expired)
            self._publish(expired)
            return expired
        return await self._store.get_approval(approval_id) or expired

    async def decide(self, approval_id: str, approver: Principal, approve: bool, reason: str) -> Approval:
        current = await self._store.get_approval(approval_id)
        if current is None:
            raise ToolNotFound(f"no approval {approval_id!r}")
        if not approver.has_role("approver"):
            raise PermissionDenied(f"principal {approver.name!r} is not an approver")
        if approver.name == current.principal:
            raise PermissionDenied(
                "an approval cannot be granted or denied by the principal that asked for it"
            )
        missing = missing_approver_groups(current.approvers, approver.groups)
        if missing:
            raise PermissionDenied(
                f"approval {approval_id} needs an approver in {describe_approver_groups(current.approvers)}; "
                f"{approver.name!r} is in {', '.join(sorted(approver.groups)) or 'no group'}"
            )
        if current.state == "pending" and current.expires_ms <= _now_ms():
            current = await self.expire(approval_id, "no decision before the approval timed out")
        if current.state != "pending":
            raise Conflict(f"approval {approval_id} is already {current.state}")
        decided = replace(
            current,
            state="approved" if approve else "denied",
            decided_by=approver.name,
            decided_ms=_now_ms(),
            decision_reason=reason,
            args_key=current.args_key if approve else "",
        )
        if not await self._store.swap_approval("pending", decided):
            latest = await self._store.get_approval(approval_id)
            raise Conflict(f"approval {approval_id} is already {latest.state if latest else 'gone'}")
        self._on_event("decided", decided)
        self._publish(decided)
        waiter = self._waiters.get(approval_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(decided)
        return decided

    async def use(
        self, approval_id: str, principal: str, tool: str, arguments: Mapping[str, Any]
    ) -> tuple[Approval | None, str]:
        """Spend an approved approval on a call; returns it, or None and why it cannot be used."""
        current = await self._store.get_approval(approval_id)
        if current is None:
            return None, "there is no such approval"
        if (current.principal, current.tool) != (principal, tool):
            return None, "it was granted for another principal or tool"
        if current.state == "approved" and not _matches(current, arguments):
            return None, "the arguments changed since it was granted (changed arguments need a new approval)"
        if current.state == "used":
            return None, "it was already used (an approval is good for one call)"
        if current.state != "approved":
            return None, f"it is {current.state}, not approved"
        used = replace(current, state="used", used_ms=_now_ms(), args_key="")
        if not await self._store.swap_approval("approved", used):
            return None, "it was already used (an approval is good for one call)"
        self._on_event("used", used)
        self._publish(used)
        return used, ""

    async def fail_pending_on_restart(self) -> list[Approval]:
        """Pending approvals of this instance's previous run can wake no call any more: expire them."""
        expired = []
        for approval in await self._store.list_approvals(("pending",)):
            if approval.instance == self._instance:
                expired.append(await self.expire(approval.id, "the hub restarted while the call was waiting"))
        return expired

    async def listing(self, states: tuple[ApprovalState, ...]) -> list[Approval]:
        return await self._store.list_approvals(states)

    def watch(self) -> asyncio.Queue[Approval]:
        queue: asyncio.Queue[Approval] = asyncio.Queue(1024)
        self._watchers.add(queue)
        return queue

    def unwatch(self, queue: asyncio.Queue[Approval]) -> None:
        self._watchers.discard(queue)

    def _publish(self, approval: Approval) -> None:
        for queue in list(self._watchers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(approval)

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll(), name="mcphub-approval-poller")

    async def _poll(self) -> None:
        """Decisions made through another replica reach waiters here through the shared store."""
        while self._waiters:
            await asyncio.sleep(POLL_INTERVAL_S)
            for approval_id, waiter in list(self._waiters.items()):
                if waiter.done():
                    continue
                current = await self._store.get_approval(approval_id)
                if current is not None and current.state in ("approved", "denied", "expired"):
                    waiter.set_result(current)

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

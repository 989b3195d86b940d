"""The hub's own dispatch stages: the audit trail around every call, and the human-in-the-loop gate.

    audit-trail -> authenticate -> resolve -> authorize -> validate -> gate -> execute

`AuditTrail` is outermost so that every call leaves records, refused ones included:
`requested` (written by the gate, or at the end for a call refused before it), `decided`,
`approval`, `started`, `finished`, and `undelivered` when the caller never saw the result: the
log could not be written in time, or the caller left (its deadline) while its `finished` record
was being written. A call that needs approval, or whose tool is destructive,
waits until its `requested` and `decided` records are durable before the tool runs; every
call waits until its `finished` record is durable before its result goes back, so a caller
never holds a result the log could lose. Either failing, the caller is told which: refused
before its tool ran, or the tool ran and its result is withheld.

While the log cannot be written, the gate refuses every call before recording anything (so
an outage cannot fill the hub's memory with queued records). The gate, not the trail, refuses
them so that the caller is authenticated by then: the log, once it can be written again,
gets one `unrecorded` record counting those calls, with their principals and tools.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace

from mcp_local.content import REFUSED_META, ToolResult
from mcp_local.errors import DeadlineExceeded, HubError, Unavailable
from mcp_local.pipeline import InFlight, Next
from mcp_local.principals import Principal
from mcp_local.tools import Tool, ToolCall

from .approvals import Approval, ApprovalBook, TooManyPending
from .audit import AuditLog
from .audit.log import APPROVER_TEXT_BYTES, UNAUTHENTICATED_ARGUMENT_BYTES, omitted_arguments
from .policy import Decision, Policy, describe_approver_groups, missing_approver_groups

__all__ = ["AuditTrail", "Gate", "approval_hint"]

logger = logging.getLogger(__name__)

_PENDING, _APPROVED, _DENIED, _EXPIRED = 1, 2, 3, 4
_STATE_CODES = {"approved": _APPROVED, "used": _APPROVED, "denied": _DENIED, "expired": _EXPIRED}


def approval_hint(approval_id: str) -> str:
    return f"mcphub approvals approve {approval_id}"


class AuditTrail:
    """The outermost stage: every call's records, and the calls in flight (`calls`), whose
    `drain` ends them with an answer to each caller."""

    name = "audit"

    def __init__(
        self, log: AuditLog, identify: Callable[[str | None], Principal | None] | None = None
    ) -> None:
        self._log = log
        # Who sent a call refused before authentication ran (the hub draining): for its record.
        self._identify = identify
        self._prefix = "c" + secrets.token_hex(3)
        self._counter = itertools.count(1)
        self.calls = InFlight()

    async def __call__(self, call: ToolCall, call_next: Next) -> ToolResult:
        log = self._log
        call.call_id = f"{self._prefix}{next(self._counter):x}"
        started = time.perf_counter()
        log.active += 1
        status = "ok"
        error: str | None = None
        result: ToolResult | None = None
        gone = False
        key = id(call)
        task: asyncio.Task[object] | None = None
        try:
            try:
                task = self.calls.enter(key)
            except Unavailable:
                authorization, call.authorization = call.authorization, None
                if self._identify is not None and call.principal is None:
                    call.principal = self._identify(authorization)
                raise
            result = await call_next(call)
            if result.is_error:
                status = "refused" if result.refusal not in (None, "stopped") else "tool_error"
        except HubError as exc:
            status, error = exc.status.name.lower(), exc.message
            raise
        except asyncio.CancelledError:
            stopped = self.calls.stopped(task)
            if stopped is None:
                gone = True
                status, error = _why_gone(call)
                raise
            status, error = "cancelled", stopped  # by `drain`: the caller is still there, and told why
            result = ToolResult.refused(stopped, "stopped")
        except BaseException as exc:
            status, error = "internal", type(exc).__name__
            raise
        finally:
            log.active -= 1
            self.calls.leave(key)
            principal = call.principal.name if call.principal else "-"
            if not call.logged and not log.healthy:
                # Refused before the gate recorded anything, while the log cannot be written: one
                # record counts such calls once it can (see the module's docstring).
                log.count_unrecorded(principal, call.name, status)
            else:
                if not call.logged:
                    arguments = call.arguments_json
                    given: dict[str, object] = {"request_id": call.request_id or None}
                    if call.principal is None and len(arguments) > UNAUTHENTICATED_ARGUMENT_BYTES:
                        # Anyone who reaches the port: no megabytes of theirs on the hub's disk.
                        given["arguments_omitted"] = omitted_arguments(arguments)
                    else:
                        given["arguments_json"] = arguments
                    log.record("requested", call.call_id, principal, call.name, given)
                delivered = result is not None  # a call stopped by `drain` still answers its caller
                finish = log.commit if delivered or not gone else log.record
                durable = finish(
                    "finished",
                    call.call_id,
                    principal,
                    call.name,
                    {
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                        "result": result,
                        "error": error if error is not None else _error_text(result),
                    },
                )
                if durable is not None and (delivered or not gone):
                    try:
                        await asyncio.shield(durable)
                    except Unavailable:
                        # The caller never sees the result its `finished` record describes: the
                        # log says so, once the store takes the queue again. A caller told only
                        # "refused" after its tool ran would think nothing happened.
                        told = _UNDELIVERED_RAN if call.started else _UNDELIVERED_REFUSED
                        log.record("undelivered", call.call_id, principal, call.name, {"error": told})
                        raise Unavailable(_WITHHELD if call.started else _REFUSED) from None
                    except asyncio.CancelledError:
                        # The caller left (its deadline passed, or it went away) while the record
                        # was on its way, so it never got the result `finished` describes (a
                        # store that hangs holds a call that long).
                        left = _why_gone(call)[0] == "deadline_exceeded"
                        why = "the call's deadline passed" if left else "the caller went away"
                        with contextlib.suppress(Unavailable):  # the log has stopped: nothing to add to
                            log.record(
                                "undelivered",
                                call.call_id,
                                principal,
                                call.name,
                                {"error": f"{why} while its audit records were being written, {_NEVER_GOT}"},
                            )
                        raise
                if (
                    delivered
                    and call.deadline is not None
                    and asyncio.get_running_loop().time() >= call.deadline
                ):
                    # Its deadline passed while the record was made durable (inline, or just
                    # before gRPC's cancel would have come): gRPC tells the caller
                    # DEADLINE_EXCEEDED and drops the result, so the log must not say it got one.
                    log.record(
                        "undelivered",
                        call.call_id,
                        principal,
                        call.name,
                        {"error": _UNDELIVERED_LATE},
                    )
                    raise DeadlineExceeded(_LATE_RAN if call.started else _LATE)
        return result


_REFUSED = (
    "the audit log cannot be written, so the call was refused and its tool did not run; "
    "calls are refused until the log recovers"
)
_WITHHELD = (
    "the tool ran, but its result is withheld: its audit records could not be written "
    "(calls are refused until the audit log recovers)"
)
_UNDELIVERED_RAN = (
    "the audit log could not be written, so the caller never saw the result: "
    "it was told that the tool ran and its result was withheld"
)
_NEVER_GOT = "so the caller never got the result"
_UNDELIVERED_LATE = f"the call's deadline passed while its audit records were being written, {_NEVER_GOT}"
_LATE = "the call's deadline passed before its result could be sent"
_LATE_RAN = f"{_LATE}; its tool ran"
_UNDELIVERED_REFUSED = (
    "the audit log could not be written, so the caller never saw the result: it was told the call was refused"
)
DEADLINE_SLACK_S = 0.05
"""A call cancelled this close to its deadline was cancelled by it: gRPC cancels the handler at
its own deadline, which the hub's (`time_remaining()` added to the loop's clock) only approximates."""


def _why_gone(call: ToolCall) -> tuple[str, str]:
    """The status and error of a call cancelled from outside. gRPC cancels a call whose deadline
    passes wherever it is (waiting for an approval, say), as it does one whose caller went away;
    the call's deadline tells the two apart."""
    deadline = call.deadline
    if deadline is not None and asyncio.get_running_loop().time() >= deadline - DEADLINE_SLACK_S:
        where = "" if call.started else " before its tool ran"
        return "deadline_exceeded", f"the call's deadline passed{where}"
    if call.cancel_reason is not None:
        reason = f": {call.cancel_reason}" if call.cancel_reason else ""
        return "cancelled", f"the client cancelled the call{reason}"
    return "cancelled", "the caller went away"


async def _refused_unless_durable(durable: Awaitable[None]) -> None:
    """Wait for records that must be durable before the tool runs. When they cannot be written,
    the call is refused, and says so truthfully: its tool has not run."""
    try:
        await durable
    except Unavailable:
        raise Unavailable(_REFUSED) from None


def _error_text(result: ToolResult | None) -> str | None:
    """What a tool error's record keeps: the first line of its text, the tool's own message
    ("timed out after 1s; ..."). What follows is output (a timed-out command's stdout, with
    whatever hostnames and data it printed), which a record keeps as a digest only, as for a
    call that succeeded."""
    if result is None or not result.is_error or not result.content:
        return None
    first = result.content[0]
    text = getattr(first, "text", None)
    if not isinstance(text, str):
        return None
    end = text.find("\n", 0, 501)
    return text[:end] if end >= 0 else text[:500]


class Gate:
    """Policy decision, approvals, and the records of both."""

    name = "gate"

    def __init__(
        self, policy: Policy, book: ApprovalBook, log: AuditLog, approvers: Sequence[Principal] = ()
    ) -> None:
        """`approvers`: the principals of this hub that may decide approvals (to warn of an
        approval none of them can decide)."""
        self.policy = policy
        self._book = book
        self._log = log
        self.approvers = tuple(approvers)
        self._approver_named = {p.name: p for p in self.approvers}
        self.generation = 0
        """Counts reloads (`reload`): a call that waited for a person across one is decided again."""
        self._principal_named: Callable[[str], Principal | None] = lambda name: None
        self.tool_now: Callable[[Tool], bool] | None = None
        """Is a tool still registered as it was (set by the hub): a call that waited for approval
        runs only the tool it was asked for, not one gone or changed meanwhile."""
        self._revoked: dict[str, int] = {}
        """Approvers a reload revoked (removed, given a new token, or no longer approvers), and
        when (ms since the epoch): an approval one of them decided before then is not used."""

    def reload(
        self,
        policy: Policy,
        approvers: Sequence[Principal],
        principal_named: Callable[[str], Principal | None],
        revoked: Iterable[str] = (),
    ) -> None:
        """The hub's config was reloaded: decide every call from now on with `policy`; calls
        waiting for approval are checked again when their approval comes (`_still_allowed`).
        `revoked`: approvers whose approvals made before now no longer count (`_decider_refusal`)."""
        self.policy = policy
        self.approvers = tuple(approvers)
        self._approver_named = {p.name: p for p in self.approvers}
        self._principal_named = principal_named
        now_ms = int(time.time() * 1000)
        for name in revoked:
            self._revoked[name] = now_ms
        self.generation += 1

    def _decider_refusal(self, approval: Approval, groups: Sequence[str]) -> str:
        """Why the approver who approved `approval` no longer lets a call use it, as this hub now
        knows its approvers; "" when they do. `groups`: the approver groups the call's decision
        needs now. An approver this hub does not know may be one of another hub sharing the
        approvals store: only one this hub revoked, or knows to be outside `groups`, is refused."""
        by = approval.decided_by
        revoked_ms = self._revoked.get(by)
        if revoked_ms is not None and approval.decided_ms <= revoked_ms:
            return (
                f"it was approved by {by!r}, whose approver token or role a reload of the hub's config "
                "revoked after that; calling again without it asks for a new approval"
            )
        approver = self._approver_named.get(by)
        if approver is not None and missing_approver_groups(groups, approver.groups):
            return (
                f"it was approved by {by!r}, and the hub's config now needs an approver in "
                f"{describe_approver_groups(groups)} ({by!r} is in "
                f"{', '.join(sorted(approver.groups)) or 'no group'}); calling again without it asks "
                "for a new approval"
            )
        return ""

    def _still_allowed(self, call: ToolCall) -> ToolResult | Decision:
        """A call approved after a reload runs only if the reloaded config would still let it be
        asked for: its principal still there with the tool among its grants, and the policy not
        denying it now. The policy's decision now when it may run (its approver groups are the
        ones the approval's approver must meet), else the refusal."""
        assert call.principal is not None and call.tool is not None
        name = call.principal.name
        now = self._principal_named(name)
        if now is None or not now.may_use(call.tool):
            why = "removed" if now is None else "no longer granted this tool"
            return ToolResult.refused(
                f"principal {name!r} was {why} by a reload of the hub's config while the call waited "
                "for approval",
                "policy",
            )
        decision = self.policy.evaluate(
            name,
            call.name,
            call.arguments,
            call.tool.annotations_of(call.arguments),
            trusted=not call.source.startswith("sandbox:"),
        )
        if decision.verdict != "deny":
            return decision
        self._log.record(
            "decided",
            call.call_id,
            name,
            call.name,
            {"decision": "deny", "rule": decision.rule, "reason": decision.reason, "after": "reload"},
        )
        return ToolResult.refused(
            f"refused by policy rule {decision.rule!r} (the hub's config was reloaded while the call "
            f"waited for approval): {decision.reason or 'denied'}",
            "policy",
        )

    async def __call__(self, call: ToolCall, call_next: Next) -> ToolResult:
        principal = call.principal
        tool = call.tool
        assert principal is not None and tool is not None
        log = self._log
        if not log.healthy:
            # Nothing recorded, nothing queued: the trail counts the call instead (see the
            # module's docstring).
            raise Unavailable(_REFUSED)
        trusted = not call.source.startswith("sandbox:")
        annotations = tool.annotations if tool.annotate is None else tool.annotations_of(call.arguments)
        decision = self.policy.evaluate(
            principal.name, call.name, call.arguments, annotations, trusted=trusted
        )
        log.record(
            "requested",
            call.call_id,
            principal.name,
            call.name,
            {
                "arguments_json": call.arguments_json,
                "request_id": call.request_id or None,
                "source": call.source,
            },
        )
        call.logged = True
        # A call that needs approval, or is destructive, is on the record before anything else
        # happens; the others are committed with their `finished` record.
        must_be_durable = decision.verdict == "ask" or annotations.destructive
        pointless = tool.precheck(call) if decision.verdict == "ask" and tool.precheck is not None else None
        durable = (log.commit if must_be_durable else log.record)(
            "decided",
            call.call_id,
            principal.name,
            call.name,
            {
                "decision": decision.verdict,
                "rule": decision.rule,
                "reason": decision.reason or None,
                "tool_refuses": pointless,
            },
        )
        if pointless is not None:
            # Nobody is asked (or kept waiting) to approve a call its tool would refuse anyway.
            return ToolResult.error(pointless)
        if decision.verdict == "deny":
            return ToolResult.refused(
                f"refused by policy rule {decision.rule!r}: {decision.reason or 'denied'}", "policy"
            )
        if must_be_durable and durable is not None:
            await _refused_unless_durable(asyncio.shield(durable))
        if decision.verdict == "ask":
            refusal = await self._ask(call, decision)
            if refusal is not None:
                return refusal
        call.started = True
        log.record("started", call.call_id, principal.name, call.name, {})
        result = await call_next(call)
        if result.meta and REFUSED_META in result.meta:
            # Only the hub says it refused a call: a tool (a sandbox's, say) that claims so
            # would make the audit log and the CLI call a call that ran one that did not.
            meta = {k: v for k, v in result.meta.items() if k != REFUSED_META}
            result = replace(result, meta=meta or None)
        return result

    async def _ask(self, call: ToolCall, decision: Decision) -> ToolResult | None:
        """None once an approval lets the call proceed; otherwise the result telling the caller why not."""
        assert call.principal is not None
        principal, tool = call.principal.name, call.name
        generation = self.generation
        if call.approval_id:
            return await self._use(
                call, call.approval_id, decision, generation, "cannot be used for this call"
            )
        try:
            approval = await self._book.create(
                call_id=call.call_id,
                principal=principal,
                tool=tool,
                arguments=call.arguments,
                arguments_json=_redacted_arguments(self._log, call),
                # Past this, the approver's text is the arguments' start only: the count says so.
                arguments_bytes=len(call.arguments_json)
                if len(call.arguments_json) > APPROVER_TEXT_BYTES
                else 0,
                reason=decision.reason,
                rule=decision.rule,
                approvers=decision.approvers,
                timeout_s=decision.timeout_s,
            )
        except TooManyPending as exc:
            # Refused at once, nobody asked: callers that give up waiting leave their approvals
            # pending, and one of them could otherwise fill every approver's listing.
            self._log.record(
                "approval", call.call_id, principal, tool, {"state": "refused", "why": exc.message}
            )
            return ToolResult.refused(exc.message, "approval")
        if decision.approvers and not any(
            not missing_approver_groups(decision.approvers, p.groups) for p in self.approvers
        ):
            # Each rule's groups can be met, but no one of this hub is in all of them at once.
            logger.warning(
                "approval %s needs an approver in %s, and no principal of this hub is (rules %s); "
                "only an approver of a hub sharing the store can decide it, else it times out",
                approval.id,
                describe_approver_groups(decision.approvers),
                decision.rule,
            )
        hint = approval_hint(approval.id)
        await call.sink.approval(approval.id, _PENDING, decision.reason, approval.expires_ms, hint)
        outcome = await self._book.wait(approval)
        await call.sink.approval(
            approval.id,
            _STATE_CODES.get(outcome.state, _DENIED),
            outcome.decision_reason,
            approval.expires_ms,
            "",
        )
        if outcome.state == "approved":
            return await self._use(call, approval.id, decision, generation, "could not be used")
        if outcome.state == "denied":
            reason = f": {outcome.decision_reason}" if outcome.decision_reason else ""
            message = f"{outcome.decided_by} denied this call (approval {approval.id}){reason}"
            return ToolResult.refused(message, "denied")
        return ToolResult.refused(
            f"no approver decided within {decision.timeout_s:g}s (approval {approval.id}, now expired); "
            "a timeout is a denial. Calling again asks for a new approval.",
            "timeout",
        )

    async def _use(
        self, call: ToolCall, approval_id: str, decision: Decision, generation: int, cannot: str
    ) -> ToolResult | None:
        """Spend an approval on the call: None when it may run, else the refusal, recorded.

        Everything that can refuse is checked before the approval is spent, so a refused call
        leaves it as it was: after a reload since `generation` (when `decision` was made), the
        call is decided again (`_still_allowed`), and the approver must still count as the hub
        now knows its approvers (`_decider_refusal`)."""
        assert call.principal is not None
        principal, tool = call.principal.name, call.name
        groups = decision.approvers
        if generation != self.generation:
            now = self._still_allowed(call)
            if isinstance(now, ToolResult):
                return now
            groups = now.approvers
        if self.tool_now is not None and call.tool is not None and not self.tool_now(call.tool):
            # Its sandbox disconnected (or changed the tool) while the call waited: the tool would
            # not run, and the approval must not be spent on nothing.
            why = (
                "the tool went away or changed while the call waited for approval (its sandbox "
                "disconnected?); the approval is kept: call again with it once the tool is back"
            )
            return self._not_used(call, approval_id, cannot, why)
        used, why = await self._book.use(
            approval_id,
            principal,
            tool,
            call.arguments,
            call.call_id,
            check=lambda approval: self._decider_refusal(approval, groups),
        )
        if used is None:
            return self._not_used(call, approval_id, cannot, why)
        # The `used` record (written by the book under this call: which approval, who approved
        # it, when) is durable before the tool runs.
        await _refused_unless_durable(self._log.flush())
        return None

    def _not_used(self, call: ToolCall, approval_id: str, cannot: str, why: str) -> ToolResult:
        """The refusal of a call whose approval was not spent on it, recorded."""
        assert call.principal is not None
        self._log.record(
            "approval",
            call.call_id,
            call.principal.name,
            call.name,
            {"approval_id": approval_id, "state": "refused", "why": why},
        )
        return ToolResult.refused(f"approval {approval_id} {cannot}: {why}", "approval")


def _redacted_arguments(log: AuditLog, call: ToolCall) -> str:
    return log.redact_arguments(call.arguments_json)


def instance_name(state_dir: str) -> str:
    """A stable name for this hub: host name plus its state directory."""
    return f"{os.uname().nodename}:{state_dir}"

"""Human approvals: the state machine of one approval, and the book of them a hub keeps.

    pending --approve--> approved --use--> used
       |  \\--deny-----> denied        |
       \\----timeout----> expired <------/  (not used in time)

A timeout is a denial; so is a hub restart while the call waits. `expires_ms` is the deadline
of both steps: a decision must come before it, and so must the call that uses an approval
(the waiting call itself, or a retry with the approval's id once the caller gave up). The hub
that created an approval expires it when that time passes, whether a call still waits or not.

An approval is bound to principal + tool + a digest of the canonical arguments, is used at
most once, expires, and cannot be granted by the principal that asked.

An approval keeps what an approver needs to read, bounded: the first ARGUMENTS_SHOWN_BYTES of
the redacted arguments, and how many bytes were left out. The digest covers all of them, so an
excerpt never lets a call with other arguments use the approval. The store is working state,
not the record: approvals that can no longer change are dropped `keep_s` after they expire
(the audit log keeps their records), and one principal may have at most
`max_pending_per_principal` approvals pending (a caller that gives up waiting leaves its
approval pending until it expires; without a cap, one caller could fill the store and every
approver's listing).

The digest is HMAC-SHA256 under a random key of the approval's own, kept only in the
approval's stored row and wiped once the approval can no longer be used. A plain SHA-256
would let anyone holding the audit log or an approvals listing confirm a guess of an
argument the redactor hid (a password in a command, say): every other argument is there in
the redacted copy. The key travels with the row, so any replica sharing the store checks it. The book stores
approvals in the hub's store (so any replica sharing it can decide or use them), wakes
the call waiting on this replica directly, and, with a store the replicas share, shows a
watcher on any of them every replica's changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import orjson

from mcp_local.errors import Conflict, PermissionDenied, ResourceExhausted, ToolNotFound
from mcp_local.principals import Principal

from .policy import GROUP_ALTERNATIVES, describe_approver_groups, missing_approver_groups

if TYPE_CHECKING:
    from mcp_local.redaction import Redactor

__all__ = [
    "Approval",
    "ApprovalBook",
    "ApprovalChanges",
    "ApprovalState",
    "ApprovalStore",
    "ApprovalUpgrade",
    "SharedApprovalStore",
    "TooManyPending",
    "approval_from_json",
    "arguments_digest",
    "arguments_excerpt",
]

logger = logging.getLogger(__name__)

ApprovalState = Literal["pending", "approved", "denied", "expired", "used"]
POLL_INTERVAL_S = 0.5
STORE_WARNING_EVERY_S = 60.0
"""While the store cannot be read, the waiting calls' poller (every POLL_INTERVAL_S) warns at
once, then at most this often, counting the failed reads between."""
LISTEN_RETRY_S = 0.5
LISTEN_RETRY_MAX_S = 10.0
"""A lost listening connection is made again after LISTEN_RETRY_S, doubling up to this."""
REPEATS_RECORDED_AFTER_S = 60.0
"""A refused attempt to decide that repeats one already recorded is counted, and the count
recorded this long after the last record of it (see `ApprovalBook._refused`)."""
REFUSALS_KEPT = 4096
"""Refusals to decide the book remembers, to count their repeats; when full, the counts so far
are recorded and it starts again."""
_ALL_STATES: tuple[ApprovalState, ...] = ("pending", "approved", "denied", "expired", "used")
SETTLED: tuple[ApprovalState, ...] = ("denied", "expired", "used")
"""States an approval never leaves: such approvals are pruned `keep_s` after they expire."""
ARGUMENTS_SHOWN_BYTES = 64 * 1024
"""An approval keeps this much of the call's redacted arguments (UTF-8) for approvers to read.
Six abandoned calls with 3 MB arguments made every listing larger than gRPC carries."""
MAX_PENDING_PER_PRINCIPAL = 20
"""Default of config `approvals.max_pending_per_principal`."""
KEEP_S = 7 * 86400.0
"""Default of config `approvals.keep_days`, in seconds."""
PRUNE_EVERY_S = 3600.0
"""How often a hub drops settled approvals past their time (and once at start)."""


class TooManyPending(ResourceExhausted):
    """The principal already has as many approvals pending as it may."""


def arguments_excerpt(text: str, limit: int = ARGUMENTS_SHOWN_BYTES) -> tuple[str, int]:
    """`text` cut to at most `limit` bytes of UTF-8 on a character boundary, and how many bytes
    were left out (0 when it is whole)."""
    if len(text) <= limit // 4:  # no character takes more than 4 bytes: whole, without encoding it
        return text, 0
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text, 0
    end = limit
    while end > 0 and data[end] & 0xC0 == 0x80:  # a continuation byte: inside a character
        end -= 1
    return data[:end].decode("utf-8", "surrogatepass"), len(data) - end


def approval_from_json(data: bytes) -> Approval:
    """An approval as a store keeps it (JSON of its fields). Keys this version does not know
    (written by a newer hub sharing the store) are left out rather than refused; the groups of
    an older hub's row (without `waiting`) are read as the alternatives they were."""
    raw = orjson.loads(data)
    groups = raw["approvers"] = tuple(raw["approvers"])
    if "waiting" not in raw and len(groups) > 1 and all(isinstance(group, str) for group in groups):
        # An older hub's row (`ApprovalUpgrade`), read before a store rewrote it (another hub
        # sharing the store wrote it since): its groups were alternatives, one entry now.
        raw["approvers"] = (GROUP_ALTERNATIVES.join(groups),)
    known = Approval.__dataclass_fields__
    approval = Approval(**{k: v for k, v in raw.items() if k in known})
    for name, kind in _FIELD_KINDS.items():
        value = getattr(approval, name)
        # A number where a time goes, a string where a name goes: else it breaks what reads it
        # later (the expiry sweep comparing times), far from where it came in.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise TypeError(f"its {name} is {type(value).__name__}, not {kind.__name__}")
    if not all(isinstance(group, str) for group in approval.approvers):
        raise TypeError("its approvers are not all strings")
    return approval


OLDER_FORM = b'"waiting":'
"""Stored rows have this key from December 2026 on (`Approval.waiting`); a row without it is an
older hub's (`ApprovalUpgrade`). As bytes of the row's JSON: no string value holds them (a `"`
inside one is escaped), so a store can find such rows without reading each one."""


class ApprovalUpgrade:
    """Rewrites the approvals an older hub stored (rows without `waiting`) in this version's form,
    where a store rewrites rows as it opens:

    - `approvers` meant "an approver in any of these groups" (`["oncall", "security"]`); it is one
      entry per rule, each to be met, with `|` between alternatives, so the old row is one entry
      (`["oncall|security"]`). Read as it was, it refused an approver in oncall only, who could
      approve it.
    - The reason and the arguments are redacted as this version redacts (older hubs let
      `PGPASSWORD=...`, `--password=...` and `Bearer ...` through), the arguments cut to an excerpt.
    - `waiting` is left out, so it takes its default: a pending one is expired at the start, as
      one whose call waited (fail closed: whether its call still waited was not stored). `pending`
      holds their ids, for the start's log line to say what they are.
    """

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self.rewritten = 0
        self.pending: set[str] = set()

    def __call__(self, data: bytes) -> Approval | None:
        """The row rewritten, or None when it is in this version's form already. Raises as
        `approval_from_json` does for a row that is no approval (set aside by the store)."""
        if OLDER_FORM in data:
            return None
        approval = approval_from_json(data)
        shown, left_out = arguments_excerpt(self._arguments(approval.arguments_json))
        approval = replace(  # its groups as one entry already (`approval_from_json`)
            approval,
            reason=self._redactor.text(approval.reason, assignments=True),
            decision_reason=self._redactor.text(approval.decision_reason, assignments=True),
            arguments_json=shown,
            arguments_left_out=approval.arguments_left_out + left_out,
        )
        self.rewritten += 1
        if approval.state == "pending":
            self.pending.add(approval.id)
        return approval

    def _arguments(self, text: str) -> str:
        """As the gate redacts a call's arguments for an approver (`AuditLog.redact_arguments`)."""
        try:
            arguments = orjson.loads(text) if text else {}
        except orjson.JSONDecodeError:  # cut short, or not JSON
            return self._redactor.text(text, assignments=True)
        return orjson.dumps(self._redactor.value(arguments, assignments=True)).decode()


_FIELD_KINDS: dict[str, type] = {
    **dict.fromkeys(
        ("id", "call_id", "principal", "tool", "args_sha256", "arguments_json", "reason", "rule", "state",
         "instance", "decided_by", "decision_reason", "args_key"),
        str,
    ),
    **dict.fromkeys(("created_ms", "expires_ms", "decided_ms", "used_ms", "arguments_left_out"), int),
    "waiting": bool,
}  # fmt: skip
"""The type each stored field must have (`approval_from_json`)."""


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


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (psycopg's span several), for a log line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class _Repeats:
    """One refusal to decide (an approval, who, approve or deny, why) and its repeats not yet recorded."""

    approval: Approval
    recorded_at: float
    """Event-loop time of the last record of it."""
    unrecorded: int = 0
    timer: asyncio.TimerHandle | None = None


@dataclass(frozen=True, slots=True)
class Approval:
    id: str
    call_id: str
    principal: str
    tool: str
    args_sha256: str
    """HMAC-SHA256 of the canonical arguments under `args_key` (see the module's docstring)."""
    arguments_json: str
    """The call's arguments, redacted, for the approver to read: at most ARGUMENTS_SHOWN_BYTES of
    them (`arguments_left_out` says how many bytes follow)."""
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
    waiting: bool = True
    """A call still waits for the decision; False once that call ended (the caller gave up, its
    deadline passed): a restart then has no call to fail, and a retry may still use it."""
    arguments_left_out: int = 0
    """Bytes of the redacted arguments after the excerpt in `arguments_json`."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "call_id": self.call_id,
            "principal": self.principal,
            "tool": self.tool,
            "args_sha256": self.args_sha256,
            "arguments": self.arguments_json,
            "arguments_left_out": self.arguments_left_out,
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

    async def list_approvals(self, states: tuple[ApprovalState, ...]) -> list[Approval]:
        """Every approval in `states`, oldest first."""
        ...

    async def page_approvals(
        self, states: tuple[ApprovalState, ...], after: tuple[int, str] | None, limit: int
    ) -> list[Approval]:
        """At most `limit` approvals in `states`, ordered by (created_ms, id), after that position."""
        ...

    async def count_pending(self, principal: str, now_ms: int) -> int:
        """How many of `principal`'s approvals are pending and not yet past their expiry."""
        ...

    async def prune_approvals(self, states: tuple[ApprovalState, ...], expired_before_ms: int) -> int:
        """Delete the approvals in `states` whose expiry is before that time; returns how many."""
        ...


class ApprovalChanges(Protocol):
    """Approvals as any hub sharing the store changes them, in the order they change."""

    def __aiter__(self) -> AsyncIterator[Approval]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class SharedApprovalStore(Protocol):
    """A store several hubs share (PostgreSQL): it tells each of them about every change."""

    async def listen_approvals(self) -> ApprovalChanges:
        """Changes from now on (the returned object listens already)."""
        ...


class ApprovalBook:
    """Creates, decides, waits for, uses and expires approvals; emits the audit events through
    `on_event(kind, approval, **fields)` (`call_id=` files the record under another call)."""

    def __init__(
        self,
        store: ApprovalStore,
        instance: str,
        on_event: Any = None,
        redact: Callable[[str], str] | None = None,
        *,
        max_pending_per_principal: int = MAX_PENDING_PER_PRINCIPAL,
        keep_s: float = KEEP_S,
    ) -> None:
        self._store = store
        self._max_pending = max_pending_per_principal
        self._keep_s = keep_s
        self._creating = asyncio.Lock()
        """Counting a principal's pending approvals and adding one are one step (see `create`)."""
        self._pruner: asyncio.Task[None] | None = None
        self._instance = instance
        self._waiters: dict[str, asyncio.Future[Approval]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._on_event = on_event or (lambda kind, approval, **extra: None)
        self._redact = redact or (lambda text: text)
        self._watchers: set[asyncio.Queue[Approval | None]] = set()
        self._shared = store if isinstance(store, SharedApprovalStore) else None
        self._listener: asyncio.Task[None] | None = None
        self._listening: asyncio.Future[None] | None = None
        self._published: dict[str, ApprovalState] = {}
        self._expiries: list[tuple[int, str]] = []
        """A heap of (expires_ms, id) of this instance's approvals that may still expire."""
        self._expiry_changed = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None
        self._chores: set[asyncio.Task[None]] = set()
        self._refusals: dict[tuple[str, str, bool, str], _Repeats] = {}
        self.call_stopped: Callable[[], bool] = lambda: False
        """Set by the hub: is the call whose wait is being cancelled one that the hub's stop
        ended (`InFlight.stopping`)? Its approval then expires: no caller waits for it any more."""
        self._unread = 0
        """Failed reads of the poller not yet logged (`_poll_failed`)."""
        self._unread_warned: float | None = None
        """When the poller last warned that it cannot read the store; None while it can."""

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
        arguments_bytes: int = 0,
    ) -> Approval:
        """A pending approval for the call; raises TooManyPending when `principal` already has
        `max_pending_per_principal` of them (nothing is stored then). `arguments_bytes`: the size
        of the call's arguments when `arguments_json` is only their start (redacted)."""
        shown, left_out = arguments_excerpt(arguments_json)
        if arguments_bytes:
            left_out = max(left_out, arguments_bytes - len(shown.encode("utf-8", "surrogatepass")))
        # Counted and added under one lock: calls of one principal arriving together would all
        # count before any was added, and pass the cap together.
        async with self._creating:
            now = _now_ms()
            pending = await self._store.count_pending(principal, now)
            if pending >= self._max_pending:
                raise TooManyPending(
                    f"too many calls of yours await approval: principal {principal!r} has {pending} "
                    f"pending, the most one principal may have (approvals.max_pending_per_principal); "
                    "wait until approvers decide them or they expire, then call again"
                )
            key = secrets.token_hex(32)
            approval = Approval(
                id="apr_" + secrets.token_urlsafe(9),
                call_id=call_id,
                principal=principal,
                tool=tool,
                args_sha256=arguments_digest(arguments, key),
                args_key=key,
                arguments_json=shown,
                arguments_left_out=left_out,
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
        self._schedule(approval)
        return approval

    async def wait(self, approval: Approval) -> Approval:
        """Until approved, denied or expired (a timeout expires it). A cancelled wait (the caller
        gave up) leaves it pending, for a retry, until it expires; one the hub's stop ended
        (`call_stopped`) expires it, as the next start would after a crash: its caller was told
        the call stopped, and a pending approval nobody waits for would count against the
        principal's `max_pending_per_principal` until its time ran out."""
        future: asyncio.Future[Approval] = asyncio.get_running_loop().create_future()
        self._waiters[approval.id] = future
        self._ensure_poller()
        remaining = max(0.0, approval.expires_ms / 1000 - time.time())
        try:
            return await asyncio.wait_for(asyncio.shield(future), remaining)
        except TimeoutError:
            # A decision made on another replica just before the deadline may not have woken
            # this wait yet: an approval that is no longer pending is not expired here.
            return await self.expire(approval.id, NO_DECISION, pending_only=True)
        except asyncio.CancelledError:
            if self.call_stopped():
                self._chore(self._expire_stopped(approval.id))
            else:
                self._chore(self._caller_gone(approval.id))
            raise
        finally:
            self._waiters.pop(approval.id, None)

    async def _expire_stopped(self, approval_id: str) -> None:
        await self.expire(approval_id, STOPPED, pending_only=True)

    async def _caller_gone(self, approval_id: str) -> None:
        current = await self._store.get_approval(approval_id)
        if current is not None and current.state == "pending" and current.waiting:
            await self._store.swap_approval("pending", replace(current, waiting=False))

    async def expire(self, approval_id: str, why: str, *, pending_only: bool = False) -> Approval:
        """Expire a pending or (unless `pending_only`) approved approval; one in another state
        is returned as it is."""
        current = await self._store.get_approval(approval_id)
        if current is None:
            raise ToolNotFound(f"no approval {approval_id}")
        if current.state not in (("pending",) if pending_only else ("pending", "approved")):
            return current
        expired = replace(current, state="expired", args_key="")
        if current.state == "pending":
            expired = replace(expired, decided_ms=_now_ms(), decision_reason=why)
        if await self._store.swap_approval(current.state, expired):
            # An approved one keeps who approved it; the record says why it expired.
            self._on_event("expired", expired, reason=why, at_ms=_now_ms())
            self._publish(expired)
            return expired
        return await self._store.get_approval(approval_id) or expired

    async def decide(self, approval_id: str, approver: Principal, approve: bool, reason: str) -> Approval:
        current = await self._store.get_approval(approval_id)
        if not approver.has_role("approver"):
            refusal = f"principal {approver.name!r} does not have the approver role"
        elif current is None:
            raise ToolNotFound(f"no approval {approval_id!r}")
        elif approver.name == current.principal:
            refusal = "an approval cannot be granted or denied by the principal that asked for it"
        else:
            missing = missing_approver_groups(current.approvers, approver.groups)
            refusal = (
                f"approval {approval_id} needs an approver in {describe_approver_groups(current.approvers)}; "
                f"{approver.name!r} is in {', '.join(sorted(approver.groups)) or 'no group'}"
                if missing
                else ""
            )
        if refusal:
            if current is not None:
                self._refused(current, approver.name, approve, refusal)
            raise PermissionDenied(refusal)
        assert current is not None
        if current.state == "pending" and current.expires_ms <= _now_ms():
            current = await self.expire(approval_id, NO_DECISION)
        if current.state != "pending":
            conflict = f"approval {approval_id} is already {current.state}"
            self._refused(current, approver.name, approve, conflict)
            raise Conflict(conflict)
        decided = replace(
            current,
            state="approved" if approve else "denied",
            decided_by=approver.name,
            decided_ms=_now_ms(),
            # The caller, the store, watchers and the log all get it: an approver may paste a secret.
            decision_reason=self._redact(reason),
            args_key=current.args_key if approve else "",
        )
        if not await self._store.swap_approval("pending", decided):
            latest = await self._store.get_approval(approval_id)
            conflict = f"approval {approval_id} is already {latest.state if latest else 'gone'}"
            self._refused(latest or current, approver.name, approve, conflict)
            raise Conflict(conflict)
        self._on_event("decided", decided)
        self._publish(decided)
        waiter = self._waiters.get(approval_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(decided)
        return decided

    def _refused(self, approval: Approval, by: str, approve: bool, why: str) -> None:
        """Record a refused attempt to decide, with the call it was about.

        A caller repeating a refused attempt would fill the log at no cost (500 in 0.8 s), and
        one record for all of them would hide how many there were. So the first is recorded at
        once (`attempts: 1`), and its repeats are counted: REPEATS_RECORDED_AFTER_S after the
        last record of it, one record carries how many came since (`attempts: N`). The log then
        holds every attempt, in at most one record a minute per (approval, who, what, why)."""
        key = (approval.id, by, approve, why)
        repeats = self._refusals.get(key)
        loop = asyncio.get_running_loop()
        if repeats is None:
            if len(self._refusals) >= REFUSALS_KEPT:
                self._record_all_repeats()
            self._refusals[key] = _Repeats(approval, loop.time())
            self._on_event("refused", approval, by=by, approve=approve, why=why, attempts=1)
            return
        repeats.unrecorded += 1
        if repeats.timer is None:
            due = repeats.recorded_at + REPEATS_RECORDED_AFTER_S
            repeats.timer = loop.call_at(due, self._record_repeats, key)

    def _record_repeats(self, key: tuple[str, str, bool, str]) -> None:
        repeats = self._refusals.get(key)
        if repeats is None:
            return
        repeats.timer = None
        if not repeats.unrecorded:
            return
        count, repeats.unrecorded = repeats.unrecorded, 0
        repeats.recorded_at = asyncio.get_running_loop().time()
        _, by, approve, why = key
        try:
            self._on_event("refused", repeats.approval, by=by, approve=approve, why=why, attempts=count)
        except Exception as exc:  # the log is stopping: the hub's log says what it could not record
            logger.warning("could not record %d refused attempts to decide %s: %s", count, key[0], exc)

    def _record_all_repeats(self) -> None:
        """Record every count not yet recorded, and forget the refusals."""
        for key, repeats in list(self._refusals.items()):
            if repeats.timer is not None:
                repeats.timer.cancel()
            self._record_repeats(key)
        self._refusals.clear()

    async def use(
        self,
        approval_id: str,
        principal: str,
        tool: str,
        arguments: Mapping[str, Any],
        call_id: str,
        *,
        check: Callable[[Approval], str] | None = None,
    ) -> tuple[Approval | None, str]:
        """Spend an approved approval on call `call_id`; returns it, or None and why it cannot be used.

        The call that waited for it may use it however late the decision came; a retry (another
        call) only before it expires. `check` says why the approval, otherwise usable, is not (""
        when it is): the hub's own reasons (its approver revoked since, say), asked before the
        approval is spent, so a refusal leaves it approved."""
        current = await self._store.get_approval(approval_id)
        if current is None:
            return None, "there is no such approval"
        if (current.principal, current.tool) != (principal, tool):
            return None, "it was granted for another principal or tool"
        retry = call_id != current.call_id
        if retry and current.state == "approved" and current.expires_ms <= _now_ms():
            current = await self.expire(approval_id, NOT_USED)
        if current.state == "expired":
            if current.expires_ms > _now_ms() and current.decision_reason:
                # Ended before its time (its call was waiting when the hub stopped): say why.
                return None, (
                    f"it ended early: {current.decision_reason}; calling again without it asks for a new "
                    "approval"
                )
            return None, (
                f"it expired at {_utc(current.expires_ms)} (an approval must be used before it expires); "
                "calling again without it asks for a new approval"
            )
        if current.state == "approved" and not _matches(current, arguments):
            return None, "the arguments changed since it was granted (changed arguments need a new approval)"
        if current.state == "used":
            return None, "it was already used (an approval is good for one call)"
        if current.state != "approved":
            return None, f"it is {current.state}, not approved"
        refusal = check(current) if check is not None else ""
        if refusal:
            return None, refusal
        used = replace(current, state="used", used_ms=_now_ms(), args_key="")
        if not await self._store.swap_approval("approved", used):
            return None, "it was already used (an approval is good for one call)"
        self._on_event("used", used, call_id=call_id)
        self._publish(used)
        return used, ""

    async def fail_pending_on_restart(self) -> list[Approval]:
        """This instance's approvals from its previous run. Those a call was still waiting for
        can wake no call any more: they are expired now, and returned. The others (their caller
        had given up, or they were approved) keep their time for a retry, and expire when it passes."""
        failed = []
        for approval in await self._store.list_approvals(("pending", "approved")):
            if approval.instance != self._instance:
                continue
            if approval.state == "pending" and approval.waiting:
                failed.append(await self.expire(approval.id, RESTARTED))
            else:
                self._schedule(approval)
        return failed

    async def listing(self, states: tuple[ApprovalState, ...]) -> list[Approval]:
        return await self._store.list_approvals(states)

    async def page(
        self, states: tuple[ApprovalState, ...], after: tuple[int, str] | None, limit: int
    ) -> list[Approval]:
        """Oldest first, at most `limit`, after position (created_ms, id) `after`."""
        return await self._store.page_approvals(states, after, limit)

    async def start_pruning(self) -> None:
        """Drop settled approvals `keep_s` after they expired: now, before the hub serves, then
        every PRUNE_EVERY_S."""
        await self._prune_once()
        if self._pruner is None or self._pruner.done():
            self._pruner = asyncio.get_running_loop().create_task(self._prune_hourly())

    async def prune(self) -> int:
        """Delete denied, expired and used approvals whose expiry is more than `keep_s` ago; the
        audit log keeps their records. Returns how many."""
        dropped = await self._store.prune_approvals(SETTLED, _now_ms() - int(self._keep_s * 1000))
        if dropped:
            logger.info(
                "dropped %d settled approvals that expired more than %g days ago (the audit log keeps "
                "their records)",
                dropped,
                self._keep_s / 86400,
            )
        return dropped

    async def _prune_once(self) -> None:
        try:
            await self.prune()
        except Exception as exc:  # the store is down: the next round tries again
            logger.warning("could not drop old approvals (trying again in %g s): %s", PRUNE_EVERY_S, exc)

    async def _prune_hourly(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_EVERY_S)
            await self._prune_once()

    async def watch(self) -> asyncio.Queue[Approval | None]:
        """A queue of every change from now on; with a shared store, changes made by other hubs too.
        None in it: no change, but the watcher must check its caller again (`wake_watchers`)."""
        queue: asyncio.Queue[Approval | None] = asyncio.Queue(1024)
        self._watchers.add(queue)
        if self._shared is not None:
            if self._listener is None or self._listener.done():
                self._listening = asyncio.get_running_loop().create_future()
                self._listener = asyncio.get_running_loop().create_task(
                    self._listen(self._shared, self._listening), name="mcphub-approval-listener"
                )
            assert self._listening is not None
            try:
                await asyncio.shield(self._listening)
            except BaseException:
                self.unwatch(queue)
                raise
        return queue

    def wake_watchers(self) -> None:
        """The principals were reloaded: each watcher checks its caller now, not at the next change
        (a revoked approver's watch ends at once, however quiet the approvals are)."""
        for queue in list(self._watchers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    def unwatch(self, queue: asyncio.Queue[Approval | None]) -> None:
        self._watchers.discard(queue)
        if not self._watchers and self._listener is not None:
            self._listener.cancel()
            self._listener = None

    def _publish(self, approval: Approval) -> None:
        if self._shared is None:  # with a shared store, every hub's changes come through `_listen`
            self._deliver(approval)

    def _deliver(self, approval: Approval) -> None:
        for queue in list(self._watchers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(approval)

    async def _listen(self, store: SharedApprovalStore, ready: asyncio.Future[None]) -> None:
        """Every hub's changes, to this hub's watchers. A lost connection (the server restarted, the
        session was cut off) is made again, after a delay doubling up to LISTEN_RETRY_MAX_S; the
        changes announced meanwhile were missed, so they are read from the store and delivered."""
        try:
            changes = await store.listen_approvals()
        except Exception as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        delay = LISTEN_RETRY_S
        while True:
            lost_ms = _now_ms()
            try:
                try:
                    async for approval in changes:
                        delay = LISTEN_RETRY_S
                        self._deliver_change(approval)
                finally:
                    await changes.aclose()
                why = "the connection ended"
            except Exception as exc:  # any failure of the connection: the watchers must not go silent
                why = _one_line(exc)
            logger.warning("approval watch: lost the store's notices (%s); listening again", why)
            while True:
                await asyncio.sleep(delay)
                delay = min(delay * 2, LISTEN_RETRY_MAX_S)
                try:
                    changes = await store.listen_approvals()
                    missed = await self._missed_since(lost_ms)
                except Exception as exc:
                    logger.warning(
                        "approval watch: cannot listen to the store (%s); trying again in %.1f s",
                        _one_line(exc),
                        delay,
                    )
                    with contextlib.suppress(Exception):
                        await changes.aclose()
                    continue
                break
            logger.info("approval watch: listening again; %d changes caught up", len(missed))
            for approval in missed:
                self._deliver_change(approval)

    def _deliver_change(self, approval: Approval) -> None:
        waiter = self._waiters.get(approval.id)
        if waiter is not None and not waiter.done() and approval.state in ("approved", "denied", "expired"):
            waiter.set_result(approval)  # a decision on another replica wakes its call at once
        # A change that keeps the state (the caller gave up waiting) is no news to a watcher.
        if self._published.get(approval.id) == approval.state:
            return
        self._published[approval.id] = approval.state
        while len(self._published) > 4096:
            del self._published[next(iter(self._published))]
        self._deliver(approval)

    async def _missed_since(self, lost_ms: int) -> list[Approval]:
        """The approvals that may have changed while notices were not heard: those created,
        decided or used since (with a second of slack for clocks), and those last delivered
        pending or approved, which may have been decided, used or expired since."""
        since = lost_ms - 1000
        open_ids = {i for i, state in self._published.items() if state in ("pending", "approved")}
        missed = [
            replace(a, args_key="")
            for a in await self._store.list_approvals(_ALL_STATES)
            if a.id in open_ids or max(a.created_ms, a.decided_ms, a.used_ms) >= since
        ]
        return [a for a in missed if self._published.get(a.id) != a.state]

    def _schedule(self, approval: Approval) -> None:
        """Expire this instance's approval when its time passes (`_sweep`)."""
        if approval.instance != self._instance:
            return
        heapq.heappush(self._expiries, (approval.expires_ms, approval.id))
        if self._expiries[0][1] == approval.id:
            self._expiry_changed.set()
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep(), name="mcphub-approval-expiry"
            )

    async def _sweep(self) -> None:
        """Sleeps until the next of this instance's approvals expires, and expires it: one timer
        for all of them, and a store read only for an approval whose time has come."""
        while True:
            now = _now_ms()
            while self._expiries and self._expiries[0][0] <= now:
                _, approval_id = heapq.heappop(self._expiries)
                if approval_id in self._waiters:
                    # Its call waits here and settles it (a decision that came in time is used
                    # however late the call gets to it); looked at again later in case it ends.
                    heapq.heappush(self._expiries, (now + 1000, approval_id))
                    break
                try:
                    current = await self._store.get_approval(approval_id)
                    if current is not None and current.state in ("pending", "approved"):
                        await self.expire(
                            approval_id, NO_DECISION if current.state == "pending" else NOT_USED
                        )
                except Exception:
                    logger.exception("could not expire approval %s; trying again in a minute", approval_id)
                    heapq.heappush(self._expiries, (now + 60_000, approval_id))
                    break
            self._expiry_changed.clear()
            wait_s = (self._expiries[0][0] - _now_ms()) / 1000 if self._expiries else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._expiry_changed.wait(), wait_s)

    def _chore(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

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
                try:
                    current = await self._store.get_approval(approval_id)
                except Exception as exc:  # the store is down: the calls wait on; try again next tick
                    self._poll_failed(approval_id, exc)
                    break
                if self._unread_warned is not None:
                    self._poll_read_again()
                if (
                    current is not None
                    and current.state in ("approved", "denied", "expired")
                    and not waiter.done()
                ):
                    waiter.set_result(current)

    def _poll_failed(self, approval_id: str, exc: Exception) -> None:
        """Warn of the first failed read, then at most every STORE_WARNING_EVERY_S with a count:
        one line every POLL_INTERVAL_S for as long as the store is down drowned the log."""
        now = time.monotonic()
        self._unread += 1
        if self._unread_warned is not None and now - self._unread_warned < STORE_WARNING_EVERY_S:
            return
        since = self._unread_warned
        again = f" ({self._unread} reads failed in the last {now - since:.0f} s)" if since is not None else ""
        logger.warning(
            "cannot read approval %s from the store, trying again every %g s%s: %s",
            approval_id,
            POLL_INTERVAL_S,
            again,
            _one_line(exc),
        )
        self._unread, self._unread_warned = 0, now

    def _poll_read_again(self) -> None:
        if self._unread:
            logger.info("approvals read from the store again (%d more reads had failed)", self._unread)
        else:
            logger.info("approvals read from the store again")
        self._unread, self._unread_warned = 0, None

    async def close(self) -> None:
        self._record_all_repeats()
        if self._chores:
            await asyncio.wait(list(self._chores), timeout=5)
        for task in (self._poller, self._sweeper, self._listener, self._pruner):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


NO_DECISION = "no decision before the approval timed out"
NOT_USED = "approved, but not used before the approval timed out"
RESTARTED = "the hub restarted while the call was waiting"
STOPPED = "the hub stopped while the call was waiting"


def _utc(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))

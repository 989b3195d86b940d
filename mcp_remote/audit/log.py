"""The audit log's writer: one task, group commit, redaction before hashing, signed checkpoints.

Callers add records without waiting (`record`) and, where it matters, make them durable
(`commit`). The writer task takes everything queued since its last commit as one
transaction, so a busy hub pays one commit for many records.

A store that can commit without waiting on the event loop (SQLite: a local file, written on
the loop's thread either way) lets `commit` write the queue inline when nobody would share
the batch: the call then finishes in the step that produced its result instead of handing
over to the writer task and back. Whether anybody would is measured, not guessed: while
commits go to the writer, the number of commits each batch carried is averaged; while they
go inline, one in PROBE_EVERY goes to the writer to keep measuring. grpc.aio hands the hub
about one call per loop wake-up, so over gRPC batches carry one commit and commits go
inline; the bridge under concurrency finishes several calls per loop step, and batches.
Stores that wait on the network (PostgreSQL) always go through the writer. An inline commit
that fails leaves its records queued for the writer, which reports the failure and retries.

A store that makes records durable in a journal first (SQLite, see `sqlite.py`) is folded by
the writer task, off the calls' path: once FOLD_AT records wait, or FOLD_AFTER_S after the
first of them.

While the store cannot be written (it refuses, or has not finished a write in HUNG_WRITE_S),
the hub refuses calls before recording anything (`gate.py`) and counts them here instead
(`count_unrecorded`), in memory that does not grow with their number; the first write that
succeeds again queues one `unrecorded` record summing them up. A store on the network is also
probed when idle (IDLE_PROBE_S), so that health follows it without traffic.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, cast

import orjson

from mcp_local.content import (
    AudioContent,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
    ToolResult,
)
from mcp_local.errors import Unavailable
from mcp_local.redaction import Redactor

from .checkpoints import Checkpoint, CheckpointSigner, missing_checkpoints, read_checkpoint_file
from .records import AuditRecord, ChainHead, PendingRecord, canonical
from .store import AuditStore, AuditStoreRefused
from .threads import in_audit_thread

__all__ = ["AuditLog"]

logger = logging.getLogger(__name__)

RETRY_DELAY_S = 0.5
RETRY_DELAY_MAX_S = 5.0
"""A store that keeps failing is tried again after RETRY_DELAY_S, doubling up to this."""
HUNG_WRITE_S = 10.0
"""A write to the store (records or a checkpoint) that has neither succeeded nor failed after this
long counts as the store failing: a server that hangs (stopped, its disk stuck) instead of
refusing. Calls are refused from then until the write is done, and whoever waits on a record is
told now that it is not durable. Also the least a hub told to stop waits for such a write."""
HUNG_CHECK_S = 1.0
"""How often the writer's current write is compared with HUNG_WRITE_S (a timer, not a cost of
each write)."""
IDLE_PROBE_S = 5.0
"""A store on the network (PostgreSQL: its `ping`) that the writer has not written to for this
long is asked whether it answers, so that an idle hub's health says it cannot write before a
call finds out (the call's tool would run, and its result be withheld). A probe that hangs
counts as a write that hangs (HUNG_WRITE_S). A timer, not a cost of each write."""
MISSED_CHECKPOINTS = 10_000
"""Checkpoints the state directory's checkpoint file could not take (its directory not writable,
say), kept to add to it once it can be written: about 2 MB. Of more, the oldest are in the
store only."""
PROBE_EVERY = 64
"""While committing inline, every PROBE_EVERY-th commit goes to the writer to see whether
other commits would join its batch."""
SHARED_BATCH = 1.5
"""Commits per batch (moving average) from which batching beats committing inline."""
FOLD_AT = 64
"""Journaled records from which the writer folds them into the store: small enough that one
fold (one transaction) stays well under a millisecond on the event loop."""
FOLD_BACKLOG = 16 * FOLD_AT
"""Journaled records from which a fold no longer waits for a moment with no batch queued."""
FOLD_AFTER_S = 0.2
"""The latest a journaled record is folded when fewer than FOLD_AT wait."""
UNRECORDED_NAMES = 20
"""The principals and tools an `unrecorded` record names one by one; calls of any others are
counted together (`other_principals`, `other_tools`)."""
UNRECORDED_NAME_CHARS = 80
"""A name in an `unrecorded` record is cut to this many characters (after redaction): tool names
there are the callers' text, since calls of unknown tools are counted too."""


def last_stopped(records: list[AuditRecord], instance: str | None) -> int | None:
    """The seq of the last `stopped` record among `records` (of hub `instance`, when given)."""
    found = None
    for record in records:
        if record.kind != "hub" or b'"stopped"' not in record.body:
            continue
        try:
            body = orjson.loads(record.body)
        except orjson.JSONDecodeError:
            continue
        stop = isinstance(body, dict) and body.get("event") == "stopped"
        if stop and (instance is None or body.get("instance") == instance):
            found = record.seq if found is None else max(found, record.seq)
    return found


class _Journaled(Protocol):
    """A store that makes records durable in a journal and folds it into its tables later."""

    @property
    def unfolded(self) -> int: ...

    sync: bool
    """Appends reach the disk: they wait for it, so they run off the event loop."""

    def fold(self) -> None: ...


_FREE_TEXT = frozenset({"error", "detail", "reason", "why", "request_id"})
"""Record fields that may carry text from outside the hub (tool errors, callers' ids), so are
redacted; the others are the hub's own words (status, decision, rule names, ids, numbers)."""
_CALLERS_TEXT = frozenset({"error", "detail", "request_id"})
"""Of those, the ones that can quote what a caller wrote (a schema error or a tool's error
echoing an argument): secrets written as assignments (`--password=x`) are looked for there too.
A reason is the policy's (the operator's words) or an approver's (redacted by the book)."""


MAX_ARGUMENT_BYTES = 64 * 1024
"""Arguments longer than this (`audit.max_argument_bytes`) are recorded by their size and short
values only: a file written through `fs_write`, or a caller filling the hub's disk."""
UNAUTHENTICATED_ARGUMENT_BYTES = 1024
"""The same for a call whose caller named no principal: anyone who reaches the port."""
APPROVER_TEXT_BYTES = 128 * 1024
"""Of arguments longer than this, an approver is shown the start, redacted as text."""
MAX_NAME_CHARS = 256
"""A tool name longer than this (no tool has one) is cut in its records."""
MAX_TEXT_CHARS = 4096
"""An error, a reason or a request id longer than this is cut in its record."""


def omitted_arguments(arguments_json: bytes) -> dict[str, Any]:
    """What a record keeps of arguments too long to keep: their size. Not their digest: an
    unkeyed SHA-256 of arguments whose redacted secret sits among guessable text (a password
    beside a known file) lets whoever reads the log confirm guesses of the secret."""
    return {"bytes": len(arguments_json)}


SMALL_VALUE_CHARS = 256


def _small_values(arguments_json: bytes) -> dict[str, Any]:
    """The short values at the top level of arguments too long to keep (`fs_write`'s path, not
    its content), each name with a value of a few words, a number or a truth value."""
    try:
        parsed = orjson.loads(arguments_json)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    small = {}
    for name, value in list(parsed.items())[:64]:
        if len(name) <= 64 and (
            isinstance(value, bool | int | float)
            or (isinstance(value, str) and len(value) <= SMALL_VALUE_CHARS)
        ):
            small[name] = value
    return small


def _cut(text: str, limit: int, length: int | None = None) -> str:
    """`text` (the start of one `length` long) cut to `limit`, saying how much was left out."""
    length = len(text) if length is None else length
    return text if length <= limit else f"{text[:limit]}... ({length - limit} more characters)"


def _result_digest(result: ToolResult, keyed: hmac.HMAC | None) -> tuple[int, str | None]:
    """The result's size, and its HMAC-SHA256 under the hub's output key (`keyed`, copied;
    None without a signing key: the size alone).

    Keyed: an unkeyed digest let any reader of the log confirm a guess of a whole output, and
    with it of a short secret in a predictable one (`DB_PASSWORD=...`). Equal outputs of one
    hub still have equal digests, and whoever holds the signing key can check a copy."""
    digest = keyed.copy() if keyed is not None else None
    size = 0
    for block in result.content:
        if isinstance(block, TextContent):
            data = block.text.encode()
        elif isinstance(block, ImageContent | AudioContent):
            data = block.data
        elif isinstance(block, EmbeddedResource):
            data = block.text.encode() if block.text is not None else block.blob or b""
        elif isinstance(block, ResourceLink):
            data = block.uri.encode()
        else:  # pragma: no cover - every content type is listed above
            data = b""
        size += len(data)
        if digest is not None:
            digest.update(data)
    if result.structured is not None:
        data = canonical(dict(result.structured))
        size += len(data)
        if digest is not None:
            digest.update(data)
    return size, digest.hexdigest() if digest is not None else None


class _Unrecorded:
    """Calls refused while the log could not be written, summed up for one record: how many,
    when, by whom, of what, and how each ended, in bounded memory however many there are."""

    def __init__(self, instance: str | None) -> None:
        self.instance = instance
        """The hub that refused them: replicas sharing a log each write their own."""
        self.calls = 0
        self.first_ms = 0
        self.last_ms = 0
        self.principals: dict[str, int] = {}
        self.tools: dict[str, int] = {}
        self.statuses: dict[str, int] = {}
        self.other_principals = 0
        self.other_tools = 0

    def add(self, principal: str, tool: str, status: str, now_ms: int) -> None:
        self.calls += 1
        self.first_ms = self.first_ms or now_ms
        self.last_ms = now_ms
        self.other_principals += not _count(self.principals, principal)
        self.other_tools += not _count(self.tools, tool)
        _count(self.statuses, status)

    def fields(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "calls": self.calls,
            "first_ms": self.first_ms,
            "last_ms": self.last_ms,
            "principals": self.principals,
            "other_principals": self.other_principals or None,
            "tools": self.tools,
            "other_tools": self.other_tools or None,
            "statuses": self.statuses,
            "why": "the audit log could not be written, so these calls were refused and left no records",
        }


def _count(table: dict[str, int], name: str) -> bool:
    """Count one for `name`; False when the table is full and does not name it already."""
    if name in table:
        table[name] += 1
    elif len(table) < UNRECORDED_NAMES:
        table[name] = 1
    else:
        return False
    return True


def _fail(batch: asyncio.Future[None]) -> None:
    """Tell the callers waiting on `batch` that its records are not durable (if not told yet)."""
    if not batch.done():
        batch.set_exception(Unavailable("the audit log cannot be written"))
        batch.add_done_callback(lambda f: f.exception())


def _append_durably(path: Path, line: bytes) -> None:
    with path.open("a+b") as f:
        # A line an earlier append left without its newline (the hub died in it) is skipped
        # by readers; appended to, or ended, it would become a line that is no checkpoint and
        # no hub would start again. It was never a checkpoint: it goes.
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n":  # only after a crash in an append: read it whole, then
                f.seek(0)
                f.truncate(f.read().rfind(b"\n") + 1)
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


class AuditLog:
    def __init__(
        self,
        store: AuditStore,
        redactor: Redactor,
        signer: CheckpointSigner | None,
        *,
        checkpoint_every: int = 1000,
        checkpoint_interval_s: float = 60.0,
        checkpoint_file: Path | None = None,
        max_argument_bytes: int = MAX_ARGUMENT_BYTES,
        instance: str | None = None,
    ) -> None:
        self.store = store
        self._instance = instance
        """The hub's name among replicas, in the records the log writes about the hub itself
        (`unrecorded`); not in a call's records, which its call id identifies."""
        self._max_arguments = max_argument_bytes
        self._redactor = redactor
        self._signer = signer
        self._output_hmac = hmac.new(signer.output_key(), digestmod="sha256") if signer is not None else None
        self._output_key_id = signer.key_id if signer is not None else ""
        self._every = checkpoint_every
        self._interval = checkpoint_interval_s
        self._checkpoint_file = checkpoint_file
        self._file_missed: collections.deque[Checkpoint] = collections.deque(maxlen=MISSED_CHECKPOINTS)
        """Checkpoints the file could not take yet, oldest first (`_add_to_file`)."""
        self._file_missed_count = 0
        self._pending: list[tuple[int, str, str, str, str, Mapping[str, Any]]] = []
        self._wake = asyncio.Event()
        self._batch: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._tick_due = False
        self._checkpoint_due = False
        self._kick_scheduled = False
        self._head = ChainHead(0, "")
        self._checkpointed_seq = 0
        self._signed_this_run = False
        # A store writing through to the disk (`audit.sync`) appends in a thread, from the
        # writer task only: a call's commit never waits for the disk on the event loop, and
        # calls that commit while one write is on its way share the next.
        self._off_loop = bool(getattr(store, "sync", False))
        self._append_now = None if self._off_loop else getattr(store, "append_now", None)
        self._writing = False
        self._sent: asyncio.Future[None] | None = None
        """The batch whose write is under way: its callers' wait ends when the store hangs."""
        self._busy_since: float | None = None
        """When the writer began waiting for the store (a write or a checkpoint), or None."""
        self._hung_since: float | None = None
        """When the store was found hanging (HUNG_WRITE_S), until it answers."""
        self._hung_timer: asyncio.TimerHandle | None = None
        self._ping = getattr(store, "ping", None)
        """The store's liveness probe, for a store on the network (`_probe`); None for a file."""
        self._probe_timer: asyncio.TimerHandle | None = None
        self._probe_due = False
        self._probed_head = self._head
        """The head at the last probe tick: unchanged at the next, nothing was written meanwhile."""
        self.active = 0
        """Calls inside the audit trail (kept by `AuditTrail`): while others run, commit together."""
        self._deferred = 0
        self._per_batch = 1.0
        self._inline_count = 0
        self.healthy = True
        self.lost = 0
        """Records that were still not written when the log stopped (`mcphub serve` exits 3)."""
        self._journaled = cast(_Journaled, store) if hasattr(store, "fold") else None
        self._fold_due = False
        self._fold_timer: asyncio.TimerHandle | None = None
        self._retry_delay = RETRY_DELAY_S
        self._failures = 0
        self._unrecorded = _Unrecorded(instance)

    async def start(self) -> None:
        await self.store.open()
        self._head = await self.store.head()
        existing = await self.store.checkpoints()
        self._checkpointed_seq = max((c.seq for c in existing), default=0)
        signed, where = self._checkpointed_seq, "the store"
        file_checkpoints: list[Checkpoint] = []
        if self._checkpoint_file is not None:
            try:
                file_checkpoints = read_checkpoint_file(self._checkpoint_file)
            except ValueError as exc:
                await self.store.close()
                raise AuditStoreRefused(f"{exc}; the hub will not sign checkpoints after it") from None
            in_file = max((c.seq for c in file_checkpoints), default=0)
            if in_file > signed:
                signed, where = in_file, str(self._checkpoint_file)
        try:
            self._check_last_checkpoints(existing, file_checkpoints)
            await self._check_missing_checkpoints(existing + file_checkpoints)
        except (AuditStoreRefused, OSError):
            await self.store.close()
            raise
        if signed > self._head.seq:
            # A hub writing on would chain new records onto the cut and sign over it.
            await self.store.close()
            path = getattr(self.store, "path", None)  # SQLite's file; PostgreSQL's is a database
            aside = str(path) if isinstance(path, Path) else "the old log (its database)"
            if self._checkpoint_file is not None:
                aside += f" and {self._checkpoint_file}"
            raise AuditStoreRefused(
                f"the audit log ends at record {self._head.seq}, but {where} holds a signed checkpoint "
                f"of record {signed}: records were deleted, or this is not the log those checkpoints "
                "were signed for (`mcphub audit verify` reports it). To start a new log on purpose, "
                f"move {aside} aside"
            )
        self._loop = asyncio.get_running_loop()
        self._batch = self._loop.create_future()
        self._task = self._loop.create_task(self._run(), name="mcphub-audit-writer")
        self._hung_timer = self._loop.call_later(HUNG_CHECK_S, self._check_hung)
        if self._ping is not None:
            self._probe_timer = self._loop.call_later(IDLE_PROBE_S, self._probe_tick)

    async def _check_missing_checkpoints(self, checkpoints: list[Checkpoint]) -> None:
        """Refuse a log that lacks checkpoints a hub must have signed (`missing_checkpoints`): its
        signed checkpoints deleted, from the store and the file, hide a rewrite or a cut."""
        signer = self._signer
        if signer is None or not signer.preexisting:
            return  # a new log, or one no hub that signs checkpoints has written
        shared = getattr(self.store, "shared", False)
        problem = missing_checkpoints(
            checkpoints,
            self._head.seq,
            None if shared else signer.published,  # a shared log is not the state directory's
            signer.key_dir / "signing.pub",
        )
        if problem is not None:
            raise AuditStoreRefused(
                f"{problem[1]}. The hub will not sign over it; to start a new log on purpose, move "
                f"{getattr(self.store, 'path', None) or 'the log'} and the audit/checkpoints*.jsonl and "
                "signing.pub files aside"
            )

    def _check_last_checkpoints(self, stored: list[Checkpoint], in_file: list[Checkpoint]) -> None:
        """The last checkpoint of the state directory's file and of the store must be this key's
        (or a key kept beside it), with signatures that hold: a hub signing on after a forged one,
        or with a key that is not the log's, would bury the problem under checkpoints of its
        own. The last ones only: `mcphub audit verify` checks every one."""
        if self._signer is None:
            return
        if in_file and self._checkpoint_file is not None:
            self._signer.check_last(max(in_file, key=lambda c: c.seq), str(self._checkpoint_file))
        if stored:
            last = max(stored, key=lambda c: c.seq)
            # In a store several hubs share, the last checkpoint may be another hub's: only its own
            # are checked (in its file, above, and here).
            if not getattr(self.store, "shared", False) or last.key_id == self._signer.key_id:
                where = getattr(self.store, "path", None)
                self._signer.check_last(last, f"{where or 'the store'} (its checkpoints table)")

    def record(
        self, kind: str, call_id: str, principal: str, tool: str, fields: Mapping[str, Any]
    ) -> asyncio.Future[None]:
        """Queue a record; the returned future is done when the record is durable."""
        if self._batch is None or self._closing:
            raise Unavailable("the audit log is not running")
        # The tool name is the caller's text: a secret sent as a name is redacted like the rest,
        # and a name as long as a request can carry is not kept whole (nor searched whole).
        if len(tool) > MAX_NAME_CHARS:
            tool = _cut(
                self._redactor.text(tool[: 8 * MAX_NAME_CHARS], assignments=True), MAX_NAME_CHARS, len(tool)
            )
        else:
            tool = self._redactor.text(tool, assignments=True)
        self._pending.append((int(time.time() * 1000), call_id, kind, principal, tool, fields))
        if not self._kick_scheduled:
            # Wake the writer after this step, not now: a call that commits inline before
            # yielding leaves it nothing to do, and waking it would cost the call a task switch.
            self._kick_scheduled = True
            self._loop.call_soon(self._kick)
        return self._batch

    def count_unrecorded(self, principal: str, tool: str, status: str) -> None:
        """Count a call refused without records while the log cannot be written (`gate.py`); the
        first successful write queues one `unrecorded` record of all of them."""
        # Redacted before it is cut (a cut secret would no longer be recognised), from a start
        # cut generously first: a name can be as long as a request.
        tool = self._redactor.text(tool[: 8 * MAX_NAME_CHARS], assignments=True)[:UNRECORDED_NAME_CHARS]
        self._unrecorded.add(principal, tool, status, int(time.time() * 1000))

    def _record_unrecorded(self) -> None:
        unrecorded, self._unrecorded = self._unrecorded, _Unrecorded(self._instance)
        if not unrecorded.calls:
            return
        logger.warning(
            "%s refused while the audit store could not be written; one `unrecorded` audit record sums %s up",
            "1 call was" if unrecorded.calls == 1 else f"{unrecorded.calls} calls were",
            "it" if unrecorded.calls == 1 else "them",
        )
        # Queued directly, not through `record`: a hub stopping still writes it.
        self._pending.append((int(time.time() * 1000), "-", "unrecorded", "-", "-", unrecorded.fields()))
        self._wake.set()

    def _kick(self) -> None:
        self._kick_scheduled = False
        if self._pending:
            self._wake.set()

    def commit(
        self, kind: str, call_id: str, principal: str, tool: str, fields: Mapping[str, Any]
    ) -> asyncio.Future[None] | None:
        """Queue a record and make the queue durable: None when that is already done (the store
        committed inline), else the future to await."""
        batch = self.record(kind, call_id, principal, tool, fields)
        if self._batch_alone() and self._commit_now():
            return None
        self._deferred += 1
        return batch

    def _batch_alone(self) -> bool:
        """Would this commit's batch carry only itself?"""
        if self.active or self._deferred or self._per_batch >= SHARED_BATCH:
            return False
        self._inline_count += 1
        return self._inline_count % PROBE_EVERY != 0

    def _commit_now(self) -> bool:
        append_now = self._append_now
        if append_now is None or self._writing or not self.healthy:
            return False
        queued, self._pending = self._pending, []
        if not queued:
            return True
        try:
            self._head = append_now(self._records(queued))
        except Exception:  # the writer retries, reports and fails the batch
            self._pending[:0] = queued
            return False
        batch, self._batch = self._batch, self._loop.create_future()
        assert batch is not None
        batch.set_result(None)
        if self._signer is not None and self._head.seq - self._checkpointed_seq >= self._every:
            self._checkpoint_due = True
            self._wake.set()
        self._schedule_fold()
        return True

    def _schedule_fold(self) -> None:
        journaled = self._journaled
        if journaled is None or self._fold_due:
            return
        if journaled.unfolded >= FOLD_AT:
            self._fold_due = True
            self._wake.set()
        elif self._fold_timer is None and journaled.unfolded:
            self._fold_timer = self._loop.call_later(FOLD_AFTER_S, self._fold_tick)

    def _journaled_backlog(self) -> bool:
        return self._journaled is not None and self._journaled.unfolded >= FOLD_BACKLOG

    def _fold_tick(self) -> None:
        self._fold_timer = None
        self._fold_due = True
        self._wake.set()

    def _fold(self) -> None:
        """Fold the journal into the store. A failure loses nothing (the records stay durable
        in the journal, and readers read it); it is reported and tried again later."""
        self._fold_due = False
        if self._fold_timer is not None:
            self._fold_timer.cancel()
            self._fold_timer = None
        assert self._journaled is not None
        try:
            # On the loop even with `audit.sync` (its commit then waits for the disk): the
            # approvals share the store's SQLite connection, and a fold is one transaction.
            self._journaled.fold()
        except Exception as exc:
            logger.error("could not fold the audit journal into the store, will retry: %s", exc)
            self._fold_timer = self._loop.call_later(RETRY_DELAY_S, self._fold_tick)

    def _records(
        self, queued: list[tuple[int, str, str, str, str, Mapping[str, Any]]]
    ) -> list[PendingRecord]:
        return [
            PendingRecord(ts, call, kind, who, tool, self._body(f)) for ts, call, kind, who, tool, f in queued
        ]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self._interval, self._tick)
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                # Calls already woken add their records before this batch is taken: one commit
                # then covers them all.
                await asyncio.sleep(0)
                if self._pending:
                    await self._write()
                elif self._checkpoint_due:
                    self._checkpoint_due = False
                    await self._maybe_checkpoint(force=False)
                elif self._probe_due:
                    self._probe_due = False
                    await self._probe()
                if self._fold_due:
                    # The calls this batch woke answer first; a batch that queued meanwhile is
                    # written before the fold (a fold is not what anybody waits for) unless the
                    # journal has grown long.
                    await asyncio.sleep(0)
                    if not self._pending or self._journaled_backlog():
                        self._fold()
                    else:
                        self._wake.set()
                if self._tick_due:
                    self._tick_due = False
                    await self._maybe_checkpoint(force=True)
                    timer = loop.call_later(self._interval, self._tick)
                if self._closing and not self._pending:
                    return
        finally:
            timer.cancel()

    def _tick(self) -> None:
        self._tick_due = True
        self._wake.set()

    def _probe_tick(self) -> None:
        """Every IDLE_PROBE_S: has the writer written nothing since the last tick, with nothing
        queued? Then the store is probed (by the writer task, between its writes)."""
        self._probe_timer = self._loop.call_later(IDLE_PROBE_S, self._probe_tick)
        if self._head is not self._probed_head:
            self._probed_head = self._head
        elif not self._pending and not self._writing:
            self._probe_due = True
            self._wake.set()

    async def _probe(self) -> None:
        """Ask an idle store whether it answers (`ping`). One that does not makes the log unhealthy
        (health checks say so, calls are refused before their tools run) until a later probe, or
        write, finds it answering again."""
        assert self._ping is not None
        if self._pending or self._head is not self._probed_head:
            return  # written or queued since the tick: the writes tell
        self._busy_since = self._loop.time()  # a probe that hangs is found by `_check_hung`
        try:
            await self._ping()
        except Exception as exc:
            self._answered("it refuses (below)")
            if self.healthy:
                logger.error("the audit store does not answer, refusing calls until it does: %s", exc)
            self.healthy = False
            return
        self._answered("it answers a probe")
        if not self.healthy and not self._pending:
            self.healthy = True
            logger.warning("the audit store answers again; calls are taken")
            self._record_unrecorded()

    def _check_hung(self) -> None:
        """Has the store not answered the writer for HUNG_WRITE_S? Then it is failing: psycopg,
        say, waits without limit for a server that is stopped but whose kernel keeps the
        connection open. The write goes on (it may yet be done, and is then not sent twice);
        meanwhile calls are refused, and those waiting on a record are told it is not durable
        (the trail records their results undelivered), each check again."""
        self._hung_timer = self._loop.call_later(HUNG_CHECK_S, self._check_hung)
        since = self._busy_since
        if since is None or self._loop.time() - since < HUNG_WRITE_S:
            return
        if self._hung_since is None:
            self._hung_since = since
            self.healthy = False
            logger.error(
                "the audit store has not answered a write for %.0f s (it hangs: neither done nor failed); "
                "refusing calls until it answers",
                self._loop.time() - since,
            )
        if self._sent is not None:
            _fail(self._sent)
        if self._pending:
            batch, self._batch = self._batch, self._loop.create_future()
            if batch is not None:
                _fail(batch)

    def _answered(self, outcome: str) -> None:
        """The store answered the writer (done or failed): a hang, if there was one, is over."""
        self._busy_since = None
        if self._hung_since is not None:
            logger.warning(
                "the audit store answered again after %.0f s: %s",
                self._loop.time() - self._hung_since,
                outcome,
            )
            self._hung_since = None

    def _checkpoint_answered(self, healthy: bool) -> None:
        """The store answered a checkpoint: the log is as healthy as before it (a hang in it
        refused calls; the next write of records tells whether the store takes them)."""
        if self._hung_since is not None:
            self.healthy = healthy
            self._answered("calls are taken" if healthy else "calls stay refused until a write succeeds")
        self._busy_since = None

    async def _write(self) -> None:
        queued, self._pending = self._pending, []
        batch, self._batch = self._batch, self._loop.create_future()
        assert batch is not None
        self._writing = True
        self._sent = batch
        self._busy_since = self._loop.time()
        if self._deferred:
            self._per_batch = (self._per_batch + self._deferred) / 2
            self._deferred = 0
        try:
            self._head = await self.store.append(self._records(queued))
        except (
            BaseException
        ) as exc:  # the store is gone (disk full, database down): refuse calls until it is back
            self._pending[:0] = queued
            # The call waiting says what this means for it (`gate.py`): refused, or its result withheld.
            _fail(batch)
            if not isinstance(exc, Exception):  # cancelled by `stop`: the records stay queued, to be counted
                raise
            self._answered("the write failed (below)")
            self.healthy = False
            self._failures += 1
            logger.error(
                "audit store write failed, refusing calls until it recovers (trying again in %.1f s): %s",
                self._retry_delay,
                exc,
            )
            await asyncio.sleep(self._retry_delay)
            self._retry_delay = min(self._retry_delay * 2, RETRY_DELAY_MAX_S)
            self._wake.set()
            return
        finally:
            self._writing = False
            self._sent = None
        self._answered("the records are written; calls are taken")
        if self._failures:
            logger.warning(
                "audit store written again after %d failed attempts; calls are taken", self._failures
            )
            self._failures = 0
        self._retry_delay = RETRY_DELAY_S
        self.healthy = True
        if not batch.done():  # else its callers were told, the store hanging, that it was not durable
            batch.set_result(None)
        self._record_unrecorded()
        self._schedule_fold()
        # The first write of each run is checkpointed at once: a `started` record (and whatever an
        # older hub left unsigned) is covered from the start, not only a checkpoint interval later.
        await self._maybe_checkpoint(force=not self._signed_this_run)

    def _body(self, fields: Mapping[str, Any]) -> bytes:
        """The record's JSON; values it cannot encode are dropped and said so, never raised.

        An exception here would look like a failing store to the writer, which keeps the
        record and retries: one call with arguments nested too deeply for the encoder
        (orjson writes at most 254 levels) used to stop every call and shutdown for good.
        """
        try:
            return self._encode(fields)
        except (TypeError, ValueError, RecursionError) as exc:
            reason = f"{type(exc).__name__}: {str(exc)[:120]}"
            logger.warning(
                "an audit record's arguments cannot be encoded (%s); recorded without them", reason
            )
            raw = fields.get("arguments_json") or b""
            kept = {k: v for k, v in fields.items() if k != "arguments_json"}
            kept["arguments_unrecorded"] = f"{len(raw)} bytes of arguments that cannot be encoded ({reason})"
            try:
                return self._encode(kept)
            except (TypeError, ValueError, RecursionError):  # pragma: no cover - only arguments nest
                return canonical({"unrecordable": reason})

    def _encode(self, fields: Mapping[str, Any]) -> bytes:
        redactor = self._redactor
        out: dict[str, Any] = {}
        for key, value in fields.items():
            if value is None:
                continue
            if key == "arguments_json":
                if len(value) > self._max_arguments:
                    out["arguments_omitted"] = omitted_arguments(value)
                    small = _small_values(value)
                    if small:
                        out["arguments"] = redactor.value(small, assignments=True)
                    continue
                try:
                    arguments = orjson.loads(value) if value else {}
                except orjson.JSONDecodeError:
                    out["arguments_unparsed"] = redactor.text(
                        bytes(value).decode(errors="replace"), assignments=True
                    )
                    continue
                out["arguments"] = redactor.value(arguments, assignments=True)
            elif key == "result":
                assert isinstance(value, ToolResult)
                out["output_bytes"], digest = _result_digest(value, self._output_hmac)
                if digest is not None:
                    out["output_hmac_sha256"], out["output_key"] = digest, self._output_key_id
            elif key in _FREE_TEXT:
                if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
                    cut = redactor.text(value[: 4 * MAX_TEXT_CHARS], assignments=True)
                    value = _cut(cut, MAX_TEXT_CHARS, len(value))
                out[key] = redactor.value(value, assignments=key in _CALLERS_TEXT)
            else:
                out[key] = value
        return canonical(out)

    def redact_arguments(self, arguments_json: bytes) -> str:
        """Arguments as JSON text with secrets redacted, for showing to an approver (who is shown
        the first 64 KiB: longer arguments are redacted as text, their start only, so that a
        caller's megabytes cost the event loop no more than that)."""
        if len(arguments_json) > APPROVER_TEXT_BYTES:
            start = arguments_json[:APPROVER_TEXT_BYTES].decode(errors="ignore")
            return self._redactor.text(start, assignments=True)
        try:
            arguments = orjson.loads(arguments_json) if arguments_json else {}
        except orjson.JSONDecodeError:
            return self._redactor.text(arguments_json.decode(errors="replace"), assignments=True)
        return orjson.dumps(self._redactor.value(arguments, assignments=True)).decode()

    async def _maybe_checkpoint(self, *, force: bool) -> None:
        head = self._head
        if self._signer is None or head.seq <= self._checkpointed_seq:
            return
        if not force and head.seq - self._checkpointed_seq < self._every:
            return
        sync_to_disk = getattr(self.store, "sync_to_disk", None)
        self._busy_since = self._loop.time()  # a store that hangs here holds the writer too
        healthy = self.healthy
        try:
            if sync_to_disk is not None:
                await sync_to_disk()  # a checkpoint vouches only for records on the disk
            checkpoint = self._signer.sign(head.seq, head.hash, int(time.time() * 1000))
            await self.store.add_checkpoint(checkpoint)
        except Exception as exc:  # a missed checkpoint is retried at the next one
            self._checkpoint_answered(healthy)
            logger.error("could not store an audit checkpoint: %s", exc)
            return
        self._checkpoint_answered(healthy)
        if self._checkpoint_file is not None:
            await self._add_to_file(self._checkpoint_file, checkpoint)
        self._checkpointed_seq = head.seq
        self._signed_this_run = True
        try:
            self._signer.publish()  # once its key has a checkpoint in the log (`missing_checkpoints`)
        except (AuditStoreRefused, OSError) as exc:
            logger.error("could not write the signing key's public half: %s", exc)

    async def _add_to_file(self, path: Path, checkpoint: Checkpoint) -> None:
        """Append `checkpoint` to the state directory's copy, after those it could not take before:
        the copy is what notices a log cut at the next start, so it must not stop at an outage.
        A file that cannot be written is reported once, not at every checkpoint (a busy hub signs
        many a second), and once more when it takes them again. The store has them either way."""
        missed = self._file_missed
        lines = b"".join(orjson.dumps(c.as_dict()) + b"\n" for c in (*missed, checkpoint))
        try:
            await in_audit_thread(_append_durably, path, lines)
        except OSError as exc:
            if not missed:
                logger.error(
                    "could not add the audit checkpoint to %s: %s; the store has it, and the file gets "
                    "the checkpoints it misses once the hub can write it (not reported again till then)",
                    path,
                    exc,
                )
            missed.append(checkpoint)
            self._file_missed_count += 1
            return
        if missed:
            left_out = self._file_missed_count - len(missed)
            logger.warning(
                "the audit checkpoint file %s is written again: added the %d checkpoints it missed%s",
                path,
                len(missed),
                f" (the {left_out} before them are in the store only)" if left_out else "",
            )
            missed.clear()
            self._file_missed_count = 0

    async def flush(self) -> None:
        """Wait until everything queued so far is durable."""
        if self._pending and self._batch is not None and not self._commit_now():
            await asyncio.shield(self._batch)

    async def stop(self, grace: float = 5.0) -> None:
        """Write what is queued, sign a last checkpoint and close the store. A store that cannot be
        written gets `grace` seconds to come back (a write that hangs, at least HUNG_WRITE_S);
        what is still queued then is reported as not written, and the hub stops all the same."""
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        task, loop = self._task, self._loop
        deadline = loop.time() + grace
        while not task.done():
            await asyncio.wait({task}, timeout=max(0.1, deadline - loop.time()))
            if task.done() or loop.time() < deadline:
                continue
            since = self._busy_since
            hung = since is not None and loop.time() - since > max(grace, HUNG_WRITE_S)
            if not self.healthy or hung:
                task.cancel()
                await asyncio.wait({task})
        with contextlib.suppress(BaseException):
            task.result()
        if self._hung_timer is not None:
            self._hung_timer.cancel()
            self._hung_timer = None
        if self._probe_timer is not None:
            self._probe_timer.cancel()
            self._probe_timer = None
        if self._fold_timer is not None:
            self._fold_timer.cancel()
            self._fold_timer = None
        if self._pending:
            # Not claimed written: a batch cut off in its commit may be in the log, or not.
            logger.error(
                "the audit store could not be written before the hub stopped: %d audit records are "
                "not in the log (or not confirmed in it)",
                len(self._pending),
            )
            self.lost = len(self._pending)
            self._pending.clear()
        if self._unrecorded.calls:
            logger.error(
                "%s refused while the audit store could not be written %s not counted in the log",
                "1 call" if self._unrecorded.calls == 1 else f"{self._unrecorded.calls} calls",
                "is" if self._unrecorded.calls == 1 else "are",
            )
        if self.healthy:
            # A store that hangs now would hold the hub's stop for good: the checkpoint is let go
            # (the next start signs one); psycopg then takes up to 10 s more to give up its query.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HUNG_WRITE_S):
                    await self._maybe_checkpoint(force=True)
        with contextlib.suppress(Exception):
            await self.store.close()
        self._task = None

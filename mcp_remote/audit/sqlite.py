"""The default audit store: SQLite in WAL mode in the hub's state directory, behind a journal.

A call's records are made durable by one `write` to an append-only journal file next to the
database (`audit.journal`, a line of JSON per record, already chained and hashed). The audit
log's writer task folds the journal into SQLite in batches, off the calls' path, and empties
it; a hub that starts folds in whatever a killed one left. Readers (`mcphub audit verify`,
`tail`, `query`) read SQLite and then the journal, so they see every record either way.

Why a journal and not a commit per call: on the hub's event loop, between gRPC's own work,
SQLite's BEGIN + INSERT + COMMIT for one call's records cost ~80 us; the journal's write costs
a few. The guarantee is the one SQLite gave with `synchronous=NORMAL` in WAL mode: a record
whose write returned survives the hub process dying (SIGKILL included), because it is in the
kernel's page cache; only a power loss could lose the last records (neither fsyncs per call).
With `sync` (config `audit.sync: true`) the journal is written with O_DSYNC and SQLite runs
`synchronous=FULL`: a record whose write returned is on the disk, and so is every fold
before the journal is emptied. The journal write then runs in a thread (`append`), from the
audit writer task only, so the event loop does not wait for the disk.

Fold order keeps a crash harmless: the records are committed to SQLite first and the journal
emptied after, so a journal may repeat records SQLite already has (they are skipped by
sequence number) but never hold the only copy of a record that it no longer lists.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from ..approvals import OLDER_FORM, Approval, ApprovalState, approval_from_json, arguments_excerpt
from .checkpoints import Checkpoint
from .records import GENESIS, AuditRecord, ChainHead, PendingRecord, chain, verify_record
from .store import AuditStoreRefused, RecordQuery
from .threads import in_audit_thread

__all__ = ["AuditStoreRefused", "JournalError", "SQLiteStore", "StoreInUse"]

INSERT = "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"

WAL_CHECKPOINT_EVERY = 4096
"""Records folded between two checkpoints of SQLite's write-ahead log (about 2 MB of it), or
WAL_CHECKPOINT_BYTES of their bodies, whichever comes first.

SQLite would checkpoint by itself inside a COMMIT once the log reaches 1,000 pages: it
copies the pages into the database and syncs it, which takes milliseconds, on the event
loop. The store turns that off and checkpoints from a thread on its own connection
instead (SQLite lets one checkpointer run beside the writer, and releases the GIL)."""

WAL_CHECKPOINT_BYTES = 8 * 1024 * 1024
WAL_SIZE_LIMIT = 64 * 1024 * 1024
"""The write-ahead log is cut back to this once checkpointed: without it, it keeps the size of
its largest burst (SQLite reuses the file from its start, never shrinking it)."""

START_CHECK_BYTES = 64 * 1024 * 1024
"""A database up to this size is checked whole when a hub starts (SQLite's `quick_check` reads
every page: about 1.3 ms per MB here, so under a tenth of a second). A larger one is checked
in what a start reads (the checkpoints and approvals tables, and the records since the last
checkpoint): checking a 1 GB log whole would hold the start for seconds. `mcphub audit
verify` reads every record of any log."""

START_CHECK_RECORDS = 65536
"""At most this many records after the last signed checkpoint have their hashes and chain
recomputed at start (checkpoints come every `audit.checkpoint_every`, 1000 by default)."""

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, call_id TEXT NOT NULL, kind TEXT NOT NULL,
    principal TEXT NOT NULL, tool TEXT NOT NULL, body BLOB NOT NULL, prev TEXT NOT NULL, hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_call ON records (call_id);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER NOT NULL, hash TEXT NOT NULL, ts_ms INTEGER NOT NULL,
    key_id TEXT NOT NULL, signature TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS approvals (id TEXT PRIMARY KEY, state TEXT NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS approvals_state ON approvals (state);
"""
APPROVAL_COLUMNS = (
    ("principal", "TEXT NOT NULL DEFAULT ''"),
    ("created_ms", "INTEGER NOT NULL DEFAULT 0"),
    ("expires_ms", "INTEGER NOT NULL DEFAULT 0"),
)
"""Copies of fields of an approval's `data`, for listing by page, counting a principal's pending
approvals and pruning without reading every row; added to a log made before them (`_approval_columns`)."""
APPROVAL_INDEXES = """
CREATE INDEX IF NOT EXISTS approvals_listed ON approvals (state, created_ms, id);
CREATE INDEX IF NOT EXISTS approvals_principal ON approvals (principal, state);
"""


_OLDER_ROWS = "SELECT id FROM approvals WHERE instr(data, ?) = 0"
"""Rows an older hub stored (`OLDER_FORM`)."""

UNREADABLE = "unreadable"
"""The state an approval row whose data cannot be read is set aside in (`_set_aside_unreadable_approvals`)."""


def _record(row: tuple[Any, ...]) -> AuditRecord:
    """A row as a record, whatever an editor left in its columns (verify must report, not crash)."""
    seq, ts_ms, call_id, kind, principal, tool, body, prev, hash_ = row
    data = bytes(body) if isinstance(body, bytes | memoryview) else str(body).encode()
    return AuditRecord(
        seq, ts_ms, str(call_id), str(kind), str(principal), str(tool), data, str(prev), str(hash_)
    )


class JournalError(AuditStoreRefused):
    """The journal holds a line that is not a record: somebody edited it."""


class StoreInUse(AuditStoreRefused):
    """Another hub process is writing this audit log."""


def _journal_line(r: AuditRecord) -> bytes:
    # orjson escapes control characters, so a record is always exactly one line. The body is
    # canonical JSON (UTF-8), so it round-trips exactly through a JSON string.
    body = r.body.decode()
    return orjson.dumps([r.seq, r.ts_ms, r.call_id, r.kind, r.principal, r.tool, body, r.prev, r.hash])


def _row(r: AuditRecord) -> tuple[Any, ...]:
    return (r.seq, r.ts_ms, r.call_id, r.kind, r.principal, r.tool, r.body, r.prev, r.hash)


def read_journal(path: Path) -> list[AuditRecord | int]:
    """The journal's records in file order; a line that is not a record is given as its line
    number. A last line without its newline is a write the hub died in (never acknowledged)
    and is left out."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return _journal_records(data)


def _journal_records(data: bytes) -> list[AuditRecord | int]:
    lines = data.split(b"\n")
    out: list[AuditRecord | int] = []
    for number, line in enumerate(lines[:-1], start=1):  # lines[-1]: after the last newline
        try:
            seq, ts_ms, call_id, kind, principal, tool, body, prev, hash_ = orjson.loads(line)
            texts = (call_id, kind, principal, tool, body, prev, hash_)
            numbers_ok = isinstance(seq, int) and isinstance(ts_ms, int)
            if not numbers_ok or not all(isinstance(t, str) for t in texts):
                raise ValueError("wrong types")
            out.append(AuditRecord(seq, ts_ms, call_id, kind, principal, tool, body.encode(), prev, hash_))
        except (ValueError, TypeError):  # orjson.JSONDecodeError is a ValueError
            out.append(number)
    return out


def _on_read_only_media(path: Path) -> bool:
    try:
        return bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY)
    except OSError:
        return False


_approval_from = approval_from_json


def _approval_data(approval: Approval) -> bytes:
    # orjson writes a dataclass as `asdict` would, without its deep copy (most of the time of
    # rewriting an older hub's 100,005 approvals).
    return orjson.dumps(approval)


def _approval_row(approval: Approval) -> tuple[Any, ...]:
    """The values of an approval's row after its id: state, data, principal, created_ms, expires_ms."""
    data = _approval_data(approval)
    return (approval.state, data, approval.principal, approval.created_ms, approval.expires_ms)


def _trimmed(approval: Approval) -> Approval:
    """An approval stored before approvals kept an excerpt of the arguments, with the excerpt."""
    shown, left_out = arguments_excerpt(approval.arguments_json)
    if not left_out:
        return approval
    return replace(approval, arguments_json=shown, arguments_left_out=approval.arguments_left_out + left_out)


class SQLiteStore:
    def __init__(
        self,
        path: Path,
        *,
        read_only: bool = False,
        sync: bool = False,
        upgrade: Callable[[bytes], Approval | None] | None = None,
    ) -> None:
        self.path = path
        self.upgrade = upgrade
        """Rewrites an approval row an older hub stored, as the hub opens the store (`ApprovalUpgrade`)."""
        self.journal_path = path.with_suffix(".journal")
        self.read_only = read_only
        self.sync = sync
        self._db: sqlite3.Connection | None = None
        self._head = ChainHead(0, GENESIS)
        self._journal = -1
        self._journal_size = 0
        self._unfolded: list[AuditRecord] = []
        self._since_wal_checkpoint = 0
        self._wal_bytes = 0
        self._wal_checkpoint: asyncio.Future[None] | None = None
        self._checkpointer: sqlite3.Connection | None = None
        self._sync_fds: dict[str, int] = {}
        """Descriptors of the database and its write-ahead log for `fsync`, held until SQLite has
        closed them (see `_fsync_files`)."""

    checkpoint_file_name = "checkpoints.jsonl"
    """The state directory's copy of this log's signed checkpoints (`audit/<name>`)."""

    async def sync_to_disk(self) -> None:
        """Every record so far on the disk, before a checkpoint vouches for them: with
        `synchronous=NORMAL` a fold's commit reaches the disk only at the next checkpoint of
        the write-ahead log, and a power loss could leave a signed checkpoint past the end of
        the log (then no hub starts on it). Rare (one per checkpoint), so off the loop."""
        self.fold()
        if not self.sync:
            await in_audit_thread(self._fsync_files)

    def _fsync_files(self) -> None:
        # The descriptors stay open until the store closes: closing any descriptor of a file
        # drops every POSIX lock this process holds on it, SQLite's included. Another process
        # then closing its connection to the log (a second hub refused, an `sqlite3` shell, a
        # reader) takes itself for the last one, checkpoints and deletes the write-ahead log,
        # and this hub goes on committing into a deleted file: records lost, and a log shorter
        # than its signed checkpoints, on which no hub starts again.
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            fd = self._sync_fds.get(path.name)
            if fd is None:
                try:
                    fd = self._sync_fds[path.name] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
            os.fsync(fd)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the audit store is not open")
        return self._db

    async def open(self) -> None:
        if self.read_only:  # verify, tail and query: they report what SQLite says themselves
            self._open()
            return
        try:
            self._open()
            # Off the event loop: an older hub's 100,005 approvals took 5 s to rewrite, and the
            # stall watch blamed a tool handler for it. Nothing else uses the store meanwhile.
            await in_audit_thread(self._open_approvals)
        except sqlite3.Error as exc:
            if self._db is not None:
                self._db.close()
                self._db = None
            raise AuditStoreRefused(f"{self.path}: the audit database cannot be used: {exc}") from None

    def _open(self) -> None:
        if self.read_only:
            # Opened first by itself: SQLite says "unable to open database file" for a file this
            # user may not read as for a damaged one, and verify would call the log broken.
            try:
                os.close(os.open(self.path, os.O_RDONLY | os.O_CLOEXEC))
            except FileNotFoundError:
                raise FileNotFoundError(f"no audit log at {self.path}") from None
            self._db = self._connect_read_only()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.path.chmod(0o600)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL" if self.sync else "PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA wal_autocheckpoint=0")  # see WAL_CHECKPOINT_EVERY
            self._db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            self._db.executescript(SCHEMA)
            self._recover_journal()
        row = self.db.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        self._head = ChainHead(row[0], row[1]) if row else ChainHead(0, GENESIS)

    def _connect_read_only(self) -> sqlite3.Connection:
        """A reader's connection. SQLite reads a database in WAL mode through its shared-memory
        index (`audit.db-shm`), which it must create when a hub stopped cleanly took it away:
        on read-only media (a snapshot, a backup mounted read-only) it cannot, and says "unable
        to open database file". Nobody writes a log there, so it is read as immutable, unless a
        write-ahead log holds records the database does not (SQLite would not read them)."""
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
        try:
            db.execute("PRAGMA schema_version").fetchone()
            return db
        except sqlite3.OperationalError as exc:
            db.close()
            if exc.sqlite_errorcode != sqlite3.SQLITE_CANTOPEN or not _on_read_only_media(self.path):
                raise
        wal = self.path.with_name(self.path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            from mcp_local.errors import ConfigError

            raise ConfigError(
                f"{self.path}: its write-ahead log {wal.name} cannot be read on read-only media; "
                "copy the state directory to writable storage and read the copy"
            )
        return sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True, isolation_level=None)

    def _open_approvals(self) -> None:
        """The approvals table as this version reads it (`_approval_columns`), its unreadable rows
        set aside; once the journal's lock says no other hub writes here. In a thread."""
        self._approval_columns()
        self._set_aside_unreadable_approvals()

    def _approval_columns(self) -> None:
        """Give an approvals table made before APPROVAL_COLUMNS those columns, filled from each
        row's data, and cut the arguments of rows stored before approvals kept an excerpt (six
        such rows made every listing larger than gRPC carries); rewrite the rows an older hub
        stored in this version's form (`upgrade`, `ApprovalUpgrade`), in the same transaction.
        A row that is no approval is left as it is (`_set_aside_unreadable_approvals`)."""
        db = self.db
        have = {row[1] for row in db.execute("PRAGMA table_info(approvals)")}
        missing = [(name, kind) for name, kind in APPROVAL_COLUMNS if name not in have]
        older = self.upgrade is not None and db.execute(_OLDER_ROWS + " LIMIT 1", (OLDER_FORM,)).fetchone()
        if missing or older:
            db.execute("BEGIN IMMEDIATE")
            try:
                for name, kind in missing:
                    db.execute(f"ALTER TABLE approvals ADD COLUMN {name} {kind}")
                if missing:
                    ids = [row[0] for row in db.execute("SELECT id FROM approvals")]
                else:
                    ids = [row[0] for row in db.execute(_OLDER_ROWS, (OLDER_FORM,))]
                for approval_id in ids:
                    row = db.execute("SELECT data FROM approvals WHERE id = ?", (approval_id,)).fetchone()
                    try:
                        approval = self.upgrade(row[0]) if self.upgrade is not None else None
                        approval = _trimmed(approval or _approval_from(row[0]))
                    except (ValueError, TypeError, KeyError):  # orjson.JSONDecodeError is a ValueError
                        continue
                    db.execute(
                        "UPDATE approvals SET state = ?, data = ?, principal = ?, created_ms = ?, "
                        "expires_ms = ? WHERE id = ?",
                        (*_approval_row(approval), approval_id),
                    )
                db.execute("COMMIT")
            except BaseException:
                _roll_back(db)
                raise
        db.executescript(APPROVAL_INDEXES)
        rewritten = getattr(self.upgrade, "rewritten", 0)
        if rewritten:
            logger.info(
                "%s: rewrote %d approvals an older mcphub stored in this version's form (approver "
                "groups as one entry per rule; reasons and arguments redacted as now)",
                self.path,
                rewritten,
            )

    def _set_aside_unreadable_approvals(self) -> None:
        """Give the approvals a hub reads at start (pending and approved) that cannot be read
        the state UNREADABLE, with a warning naming each: no state the hub lists, counts, uses
        or prunes, so the row stays as it is for the operator to look at.

        Set aside rather than refusing the start: the approvals table is working state, not the
        record (the audit log keeps every approval's records, and verify checks them), a row
        that cannot be read lets no call run, and its waiting call ended with the hub that
        stopped. Refusing would leave the operator editing SQL by hand before any hub ran."""
        db = self.db
        rows = db.execute("SELECT id, data FROM approvals WHERE state IN ('pending', 'approved')").fetchall()
        for approval_id, data in rows:
            try:
                _approval_from(data)
            except (ValueError, TypeError, KeyError) as exc:  # orjson.JSONDecodeError is a ValueError
                db.execute("UPDATE approvals SET state = ? WHERE id = ?", (UNREADABLE, approval_id))
                logger.warning(
                    "%s: approval %r cannot be read (%s): set aside as state %r, so that no hub uses "
                    "or lists it; its records are in the audit log. Delete such rows once looked at: "
                    "sqlite3 %s \"DELETE FROM approvals WHERE state = '%s'\"",
                    self.path,
                    str(approval_id)[:100],
                    str(exc)[:200] or type(exc).__name__,
                    UNREADABLE,
                    self.path,
                    UNREADABLE,
                )

    def _recover_journal(self) -> None:
        """Take the journal (one writer per log: a second hub folding and emptying it could
        drop the first one's records), fold in what a hub that died left in it, and keep it
        open for appending."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | (os.O_DSYNC if self.sync else 0)
        journal = os.open(self.journal_path, flags, 0o600)
        if self.sync:  # the journal's directory entry is on the disk too
            directory = os.open(self.journal_path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        try:
            fcntl.flock(journal, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(journal)
            raise StoreInUse(
                f"another hub is writing the audit log in {self.path.parent} "
                "(each hub needs its own state directory, or a shared PostgreSQL audit store)"
            ) from None
        try:
            problem = self._start_problem()
        except sqlite3.DatabaseError as exc:
            problem = f"SQLite says: {exc}"
        if problem is not None:
            os.close(journal)
            raise AuditStoreRefused(
                f"{self.path}: the audit database is damaged ({problem}); `mcphub audit verify` "
                "reports what it can read. Restore the state directory's audit/ from a backup, or move "
                "it aside to start a new log; the hub will not write on this one"
            )
        data = self.journal_path.read_bytes()
        found = _journal_records(data)
        bad = next((item for item in found if isinstance(item, int)), None)
        if bad is not None:
            os.close(journal)
            raise JournalError(
                f"{self.journal_path}, line {bad}: not an audit record (was the file edited?). "
                "`mcphub audit verify` shows the first bad record; the hub will not write after it."
            )
        records = [r for r in found if isinstance(r, AuditRecord)]
        problem = self._journal_problem(records)
        if problem is not None:
            os.close(journal)
            raise JournalError(
                f"{self.journal_path}: {problem} (was the file edited?). "
                "`mcphub audit verify` shows the first bad record; the hub will not write after it."
            )
        torn = len(data) - (data.rfind(b"\n") + 1)
        if torn:  # emptied with the journal at the fold below
            logger.warning(
                "%s: dropped %d bytes of an unfinished last record (a write the hub died in, never "
                "acknowledged to its caller)",
                self.journal_path,
                torn,
            )
        row = self.db.execute("SELECT max(seq) FROM records").fetchone()
        stored = row[0] or 0
        self._unfolded = [r for r in records if r.seq > stored]
        self._journal = journal
        self._journal_size = os.fstat(journal).st_size
        self.fold()

    def _start_problem(self) -> str | None:
        """What is wrong with the database, as far as a start can tell cheaply, or None.

        SQLite checks the pages it reads: all of them for a database up to START_CHECK_BYTES,
        else those of the small tables. The chain is recomputed from the last checkpoint on (at
        most START_CHECK_RECORDS records): the record the checkpoint names must hold its hash,
        and each after it continue the chain. Whether the checkpoint's signature holds is
        `AuditLog.start`'s to check; one past the end of the log is too."""
        db = self.db
        small = os.stat(self.path).st_size <= START_CHECK_BYTES
        for table in ("",) if small else ("checkpoints", "approvals"):
            found = db.execute(f"PRAGMA quick_check{f'({table})' if table else ''}").fetchall()
            if found != [("ok",)]:
                return "SQLite's check says: " + "; ".join(str(row[0]) for row in found[:3])
        last = db.execute("SELECT seq, hash FROM checkpoints ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (last[0], None) if last else (1, GENESIS)
        rows = db.execute(
            "SELECT * FROM records WHERE seq >= ? ORDER BY seq LIMIT ?", (seq, START_CHECK_RECORDS)
        ).fetchall()
        for row in rows:
            record = _record(row)
            if prev is None:  # the checkpoint's record: the rest of the chain before it is verify's
                if record.seq != seq:
                    return None  # the log ends before it: `AuditLog.start` says so
                if record.hash != last[1]:
                    return f"record {seq} does not match its signed checkpoint"
                prev = record.prev
            why = verify_record(record, seq, prev)
            if why is not None:
                return f"record {record.seq}: {why}"
            seq, prev = record.seq + 1, record.hash
        return None

    def _journal_problem(self, records: Sequence[AuditRecord]) -> str | None:
        """Why the journal's records are not the stored chain's continuation, or None.

        A journal may repeat records SQLite has (a hub died between a fold's commit and
        emptying the journal): those must be the stored ones, field for field. The rest must
        continue the chain from the stored head, each hash recomputed, or folding them in
        would bury an edit under records chained and checkpointed after it."""
        row = self.db.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        head = ChainHead(row[0], row[1]) if row else ChainHead(0, GENESIS)
        for number, record in enumerate(records, start=1):
            if record.seq <= head.seq:
                stored = self.db.execute("SELECT * FROM records WHERE seq = ?", (record.seq,)).fetchone()
                if stored is None or _record(stored) != record:
                    return f"record {record.seq} (line {number}) differs from the stored one"
                continue
            why = verify_record(record, head.seq + 1, head.hash)
            if why is not None:
                return f"record {record.seq} (line {number}): {why}"
            head = ChainHead(record.seq, record.hash)
        return None

    async def close(self) -> None:
        if self._journal >= 0:
            try:
                self.fold()
            finally:
                os.close(self._journal)
                self._journal = -1
        if self._wal_checkpoint is not None:
            await asyncio.wait([self._wal_checkpoint])
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        if self._db is not None:
            self._db.close()
            self._db = None
        for fd in self._sync_fds.values():  # only now: SQLite holds no lock to lose
            os.close(fd)
        self._sync_fds.clear()

    async def append(self, pending: Sequence[PendingRecord]) -> ChainHead:
        if self.sync:  # the write waits for the disk: not on the event loop (see `AuditLog`)
            return await in_audit_thread(self.append_now, pending)
        return self.append_now(pending)

    def append_now(self, pending: Sequence[PendingRecord]) -> ChainHead:
        """Chain `pending` and make it durable without yielding to the event loop (see
        `AuditLog.commit`): one write to the journal."""
        records = chain(self._head, pending)
        if not records:
            return self._head
        data = b"\n".join(_journal_line(r) for r in records) + b"\n"
        try:
            written = os.write(self._journal, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, "the audit journal could not be written in full")
        except OSError:
            # Take back a partial line so the journal stays a list of whole records.
            os.ftruncate(self._journal, self._journal_size)
            raise
        self._journal_size += written
        self._unfolded.extend(records)
        self._head = ChainHead(records[-1].seq, records[-1].hash)
        return self._head

    @property
    def unfolded(self) -> int:
        """Records in the journal not yet in SQLite."""
        return len(self._unfolded)

    def fold(self) -> None:
        """Move the journal's records into SQLite in one transaction, then empty the journal."""
        if self._unfolded:
            db = self.db
            db.execute("BEGIN")
            try:
                db.executemany(INSERT, [_row(r) for r in self._unfolded])
                db.execute("COMMIT")
            except BaseException:
                _roll_back(db)
                raise
            self._since_wal_checkpoint += len(self._unfolded)
            self._wal_bytes += sum(len(r.body) for r in self._unfolded)
            self._unfolded = []
            if self._since_wal_checkpoint >= WAL_CHECKPOINT_EVERY or self._wal_bytes >= WAL_CHECKPOINT_BYTES:
                self._start_wal_checkpoint()
        if self._journal_size:
            os.ftruncate(self._journal, 0)
            self._journal_size = 0

    def _start_wal_checkpoint(self) -> None:
        if self._wal_checkpoint is not None and not self._wal_checkpoint.done():
            return  # the one running will take these pages too
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop (a tool's synchronous use): SQLite's own checkpoint at close
            return
        self._since_wal_checkpoint = self._wal_bytes = 0
        self._wal_checkpoint = in_audit_thread(self._checkpoint_wal)

    def _checkpoint_wal(self) -> None:
        """In a thread: copy the log's pages into the database (PASSIVE: the writer is never blocked)."""
        try:
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                self._checkpointer.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:  # the next fold tries again; the records are safe in the log
            logger.warning("could not checkpoint the audit database's write-ahead log: %s", exc)

    async def head(self) -> ChainHead:
        return self._head

    async def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        self.fold()  # a checkpoint in SQLite covers records that are in SQLite
        self.db.execute(
            "INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?)",
            (checkpoint.seq, checkpoint.hash, checkpoint.ts_ms, checkpoint.key_id, checkpoint.signature),
        )

    async def checkpoints(self) -> list[Checkpoint]:
        rows = self.db.execute(
            "SELECT seq, hash, ts_ms, key_id, signature FROM checkpoints ORDER BY seq"
        ).fetchall()
        return [Checkpoint(*row) for row in rows]

    async def scan(self) -> AsyncIterator[AuditRecord]:
        # The journal is read before SQLite: a fold in between moves records into SQLite
        # (seen there) and never takes one out of both.
        journal = read_journal(self.journal_path)
        last = 0
        stored: dict[int, str] = {}
        wanted = {r.seq for r in journal if isinstance(r, AuditRecord)}
        cursor = self.db.execute("SELECT * FROM records ORDER BY seq")
        while rows := cursor.fetchmany(1000):
            for row in rows:
                record = _record(row)
                if record.seq in wanted:
                    stored[record.seq] = record.hash
                last = record.seq if isinstance(record.seq, int) else last
                yield record
        for item in journal:
            if isinstance(item, int):
                # Shown where it stands in the chain, with no valid fields: verify names it.
                yield _record((last + 1, None, "", "", "", "", b"", "", ""))
                return
            if item.seq > last:
                last = item.seq
                yield item
            elif stored.get(item.seq, item.hash) != item.hash:
                yield item  # the journal disagrees with SQLite about a record: out of order

    async def query(self, query: RecordQuery) -> list[AuditRecord]:
        journal = [r for r in read_journal(self.journal_path) if isinstance(r, AuditRecord)]
        db = self.db
        db.execute("BEGIN")  # one snapshot for both statements
        try:
            found = [_record(row) for row in db.execute(*query.select("records", "?")).fetchall()]
            stored = db.execute("SELECT max(seq) FROM records").fetchone()[0] or 0
        finally:
            db.execute("COMMIT")
        found += [r for r in journal if r.seq > stored and query.matches(r)]
        found.sort(key=lambda r: r.seq, reverse=query.newest_first)
        return found[: query.limit]

    async def put_approval(self, approval: Approval) -> None:
        self.db.execute(
            "INSERT INTO approvals (id, state, data, principal, created_ms, expires_ms) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (approval.id, *_approval_row(approval)),
        )

    async def get_approval(self, approval_id: str) -> Approval | None:
        row = self.db.execute("SELECT data FROM approvals WHERE id = ?", (approval_id,)).fetchone()
        return _approval_from(row[0]) if row else None

    async def swap_approval(self, expected: ApprovalState, approval: Approval) -> bool:
        cursor = self.db.execute(
            "UPDATE approvals SET state = ?, data = ?, principal = ?, created_ms = ?, expires_ms = ? "
            "WHERE id = ? AND state = ?",
            (*_approval_row(approval), approval.id, expected),
        )
        return cursor.rowcount == 1

    async def list_approvals(self, states: tuple[ApprovalState, ...]) -> list[Approval]:
        marks = ",".join("?" * len(states))
        rows = self.db.execute(
            f"SELECT data FROM approvals WHERE state IN ({marks}) ORDER BY created_ms, id",  # noqa: S608 - placeholders only
            states,
        ).fetchall()
        return [_approval_from(r[0]) for r in rows]

    async def page_approvals(
        self, states: tuple[ApprovalState, ...], after: tuple[int, str] | None, limit: int
    ) -> list[Approval]:
        created, approval_id = after if after is not None else (-(2**63), "")
        marks = ",".join("?" * len(states))
        rows = self.db.execute(
            f"SELECT data FROM approvals WHERE state IN ({marks}) "  # noqa: S608 - placeholders only
            "AND (created_ms > ? OR (created_ms = ? AND id > ?)) ORDER BY created_ms, id LIMIT ?",
            (*states, created, created, approval_id, limit),
        ).fetchall()
        return [_approval_from(r[0]) for r in rows]

    async def count_pending(self, principal: str, now_ms: int) -> int:
        row = self.db.execute(
            "SELECT count(*) FROM approvals WHERE principal = ? AND state = 'pending' AND expires_ms > ?",
            (principal, now_ms),
        ).fetchone()
        return int(row[0])

    async def prune_approvals(self, states: tuple[ApprovalState, ...], expired_before_ms: int) -> int:
        marks = ",".join("?" * len(states))
        cursor = self.db.execute(
            f"DELETE FROM approvals WHERE state IN ({marks}) AND expires_ms < ?",  # noqa: S608 - placeholders only
            (*states, expired_before_ms),
        )
        return cursor.rowcount


def _roll_back(db: sqlite3.Connection) -> None:
    """ROLLBACK the transaction a failure left open, if SQLite has not already: on a full disk it
    has, and a ROLLBACK then fails with "no transaction is active" in place of the real cause."""
    if db.in_transaction:
        db.execute("ROLLBACK")

"""`mcphub audit verify`: recompute the chain and check every signed checkpoint against it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .checkpoints import (
    Checkpoint,
    missing_checkpoints,
    read_checkpoint_file,
    uncovered_stop,
    verify_checkpoint,
)
from .log import last_stopped
from .records import GENESIS, verify_record
from .store import AuditStore

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["VerifyReport", "read_checkpoint_file", "verify_log"]


@dataclass
class VerifyReport:
    records: int = 0
    checkpoints: int = 0
    first_bad: int | None = None
    """The first record that is, or may be, bad."""
    bad_range: tuple[int, int] | None = None
    """When the bad record is not known exactly, the records it is among (first, last)."""
    problem: str | None = None
    head_hash: str = GENESIS
    notes: list[str] = field(default_factory=list)
    unknown_keys: list[str] = field(default_factory=list)
    """Keys that signed checkpoints but were not given: those checkpoints vouch for nothing."""

    @property
    def broken(self) -> bool:
        """The log itself is bad, not only checked in part (`unknown_keys`)."""
        return self.problem is not None and not (self.unknown_keys and self.first_bad is None)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "checkpoints": self.checkpoints,
            "first_bad_record": self.first_bad,
            "bad_range": (
                {"first": self.bad_range[0], "last": self.bad_range[1]} if self.bad_range else None
            ),
            "problem": self.problem,
            "head_hash": self.head_hash,
            "unknown_keys": self.unknown_keys,
            "notes": self.notes,
        }


async def verify_log(
    store: AuditStore,
    keys: dict[str, Ed25519PublicKey],
    extra_checkpoints: list[Checkpoint] = (),  # type: ignore[assignment]
    *,
    signed: tuple[str | None, object] | None = None,
    instance: str | None = None,
) -> VerifyReport:
    """`signed`: when a hub that signs checkpoints has written this log, the key its `signing.pub`
    names (None if there is none, or the log is not the state directory's) and that file; a log
    then lacking checkpoints it must have (`missing_checkpoints`) is broken. `instance`: in a log
    several hubs share, only that hub's `stopped` records are held to it (the others' checkpoints
    are in their own state directories)."""
    report = VerifyReport()
    stored = await store.checkpoints()
    every, seen = [], set()
    for c in (*stored, *extra_checkpoints):
        if (c.seq, c.hash, c.signature) not in seen:
            seen.add((c.seq, c.hash, c.signature))
            every.append(c)
    report.checkpoints = len(every)
    checkpoints = []
    for checkpoint in every:
        if checkpoint.key_id not in keys:
            # Reported as unknown, after the chain is checked: it vouches for nothing meanwhile.
            if checkpoint.key_id not in report.unknown_keys:
                report.unknown_keys.append(checkpoint.key_id)
            continue
        problem = verify_checkpoint(checkpoint, keys)
        if problem is not None:
            report.first_bad, report.problem = checkpoint.seq, problem
            return report
        checkpoints.append(checkpoint)
    wanted = {c.seq for c in checkpoints}
    stopped: int | None = None
    hashes_at: dict[int, str] = {}
    expected_seq, prev = 1, GENESIS
    async for record in store.scan():
        problem = verify_record(record, expected_seq, prev)
        if problem is not None:
            report.first_bad = expected_seq if record.seq > expected_seq else record.seq
            if record.seq > expected_seq:
                problem = f"record {expected_seq} is missing ({problem})"
            report.problem = f"record {report.first_bad}: {problem}"
            return report
        if record.seq in wanted:
            hashes_at[record.seq] = record.hash
        if record.kind == "hub":
            stopped = last_stopped([record], instance) or stopped
        report.records += 1
        expected_seq, prev = record.seq + 1, record.hash
    report.head_hash = prev
    last = expected_seq - 1
    vouched = 0  # the last record a checkpoint has vouched for
    for checkpoint in sorted(checkpoints, key=lambda c: c.seq):
        if checkpoint.seq > last:
            report.first_bad = last + 1
            report.problem = (
                f"the log was cut: a signed checkpoint covers record {checkpoint.seq} "
                f"but the log ends at record {last}"
            )
            return report
        if hashes_at.get(checkpoint.seq) != checkpoint.hash:
            # The chain holds, so whoever changed a record recomputed every hash after it: the
            # change is somewhere after the last record a checkpoint vouches for, not
            # necessarily in the record this checkpoint names.
            first = vouched + 1
            report.first_bad = first
            report.problem = f"record {checkpoint.seq} does not match its signed checkpoint"
            if first < checkpoint.seq:
                report.bad_range = (first, checkpoint.seq)
                report.problem = (
                    f"a record in {first}-{checkpoint.seq} was changed, removed or added and the "
                    f"hashes after it recomputed: {report.problem}"
                )
            return report
        vouched = checkpoint.seq
    if signed is not None:
        missing = missing_checkpoints(every, report.records, signed[0], signed[1])
        if missing is not None:
            report.first_bad, report.problem = missing
            if report.first_bad <= last:
                report.bad_range = (report.first_bad, last)
            return report
    stop_note = uncovered_stop(checkpoints, stopped)
    if stop_note is not None:
        report.notes.append(stop_note)
    if report.unknown_keys:
        count = sum(1 for c in every if c.key_id in report.unknown_keys)
        report.problem = (
            f"{count} of the {len(every)} checkpoints are signed by an unknown key "
            f"({', '.join(report.unknown_keys)}; not given): the chain holds, but they vouch for nothing "
            "(if it is a key the log was signed with, give its public key: --public-key FILE)"
        )
        return report
    if not checkpoints:
        report.notes.append("no signed checkpoint yet: a cut at the end of the log could not be detected")
    elif max(c.seq for c in checkpoints) < last:
        report.notes.append(
            f"records after {max(c.seq for c in checkpoints)} are not yet covered by a checkpoint"
        )
    return report

"""`mcphub audit verify`: recompute the chain and check every signed checkpoint against it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .checkpoints import Checkpoint, read_checkpoint_file, verify_checkpoint
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
            "notes": self.notes,
        }


async def verify_log(
    store: AuditStore,
    keys: dict[str, Ed25519PublicKey],
    extra_checkpoints: list[Checkpoint] = (),  # type: ignore[assignment]
) -> VerifyReport:
    report = VerifyReport()
    stored = await store.checkpoints()
    seen = {(c.seq, c.hash, c.signature) for c in stored}
    checkpoints = stored + [c for c in extra_checkpoints if (c.seq, c.hash, c.signature) not in seen]
    report.checkpoints = len(checkpoints)
    for checkpoint in checkpoints:
        problem = verify_checkpoint(checkpoint, keys)
        if problem is not None:
            report.first_bad, report.problem = checkpoint.seq, problem
            return report
    wanted = {c.seq for c in checkpoints}
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
    if not checkpoints:
        report.notes.append("no signed checkpoint yet: a cut at the end of the log could not be detected")
    elif max(c.seq for c in checkpoints) < last:
        report.notes.append(
            f"records after {max(c.seq for c in checkpoints)} are not yet covered by a checkpoint"
        )
    return report

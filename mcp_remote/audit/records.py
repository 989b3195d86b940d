"""Audit records: canonical JSON, the hash chain, and what a record holds. Pure functions, no I/O.

A record's hash covers the previous record's hash, its own header fields and its body:

    hash = sha256( prev_hash "\\n" canonical([seq, ts_ms, call_id, kind, principal, tool]) "\\n" body )

where `body` is the record's canonical JSON (keys sorted, no whitespace, UTF-8), redacted before
it is hashed, and stored exactly so `mcphub audit verify` can recompute every hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["GENESIS", "AuditRecord", "ChainHead", "PendingRecord", "canonical", "chain", "record_hash"]

GENESIS = "0" * 64
"""The `prev` of the first record."""


def canonical(value: Any) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, UTF-8, non-string keys refused."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def record_hash(
    prev: str, seq: int, ts_ms: int, call_id: str, kind: str, principal: str, tool: str, body: bytes
) -> str:
    header = canonical([seq, ts_ms, call_id, kind, principal, tool])
    return hashlib.sha256(prev.encode() + b"\n" + header + b"\n" + body).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainHead:
    seq: int
    hash: str


@dataclass(frozen=True, slots=True)
class PendingRecord:
    """A record before it has its place in the chain (body already canonical and redacted)."""

    ts_ms: int
    call_id: str
    kind: str
    principal: str
    tool: str
    body: bytes


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    ts_ms: int
    call_id: str
    kind: str
    principal: str
    tool: str
    body: bytes
    prev: str
    hash: str

    def body_json(self) -> dict[str, Any]:
        value = orjson.loads(self.body)
        return value if isinstance(value, dict) else {"value": value}

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts_ms": self.ts_ms,
            "call_id": self.call_id,
            "kind": self.kind,
            "principal": self.principal,
            "tool": self.tool,
            "body": self.body_json(),
            "prev": self.prev,
            "hash": self.hash,
        }


def chain(head: ChainHead, pending: Iterable[PendingRecord]) -> list[AuditRecord]:
    """Give `pending` their places after `head`: sequence numbers and hashes."""
    out: list[AuditRecord] = []
    seq, prev = head.seq, head.hash
    for p in pending:
        seq += 1
        digest = record_hash(prev, seq, p.ts_ms, p.call_id, p.kind, p.principal, p.tool, p.body)
        out.append(AuditRecord(seq, p.ts_ms, p.call_id, p.kind, p.principal, p.tool, p.body, prev, digest))
        prev = digest
    return out


def verify_record(record: AuditRecord, expected_seq: int, expected_prev: str) -> str | None:
    """Why `record` does not continue the chain, or None."""
    if not isinstance(record.seq, int) or not isinstance(record.ts_ms, int):
        return "its sequence number or time is not an integer (the record was edited)"
    if record.seq != expected_seq:
        return (
            f"expected record {expected_seq} next but found {record.seq} (a record was deleted or reordered)"
        )
    if record.prev != expected_prev:
        return "its prev hash does not match the record before it (records were reordered or replaced)"
    digest = record_hash(
        record.prev,
        record.seq,
        record.ts_ms,
        record.call_id,
        record.kind,
        record.principal,
        record.tool,
        record.body,
    )
    if digest != record.hash:
        return "its contents do not match its hash (the record was edited)"
    return None


def body(fields: Mapping[str, Any]) -> bytes:
    return canonical({k: v for k, v in fields.items() if v is not None})

"""The tamper-evident audit log: hash-chained records, redacted before hashing, with signed checkpoints."""

from __future__ import annotations

from .checkpoints import Checkpoint, CheckpointSigner, load_public_keys
from .log import AuditLog
from .records import GENESIS, AuditRecord, ChainHead, PendingRecord, canonical
from .store import AuditStore, RecordQuery
from .verify import VerifyReport, read_checkpoint_file, verify_log

__all__ = [
    "GENESIS",
    "AuditLog",
    "AuditRecord",
    "AuditStore",
    "ChainHead",
    "Checkpoint",
    "CheckpointSigner",
    "PendingRecord",
    "RecordQuery",
    "VerifyReport",
    "canonical",
    "load_public_keys",
    "read_checkpoint_file",
    "verify_log",
]

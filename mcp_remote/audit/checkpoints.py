"""Ed25519-signed checkpoints of the audit chain: a signature over (seq, hash) at a point in time.

The key lives in the hub's state directory (`audit/signing.key`, mode 0600); its public half
(`audit/signing.pub`) is what `mcphub audit verify` trusts. A checkpoint lets verify notice a
log cut after it: the record it names must still be there with the same hash.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .records import canonical

__all__ = ["Checkpoint", "CheckpointSigner", "load_public_keys", "verify_checkpoint"]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    hash: str
    ts_ms: int
    key_id: str
    signature: str

    def payload(self) -> bytes:
        return canonical({"seq": self.seq, "hash": self.hash, "ts_ms": self.ts_ms, "key_id": self.key_id})

    def as_dict(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "hash": self.hash,
            "ts_ms": self.ts_ms,
            "key_id": self.key_id,
            "signature": self.signature,
        }


def key_id(public: Ed25519PublicKey) -> str:
    return hashlib.sha256(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:16]


class CheckpointSigner:
    def __init__(self, key_dir: Path) -> None:
        key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_path = key_dir / "signing.key"
        if key_path.exists():
            self._key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(key_path.read_text()))
        else:
            self._key = Ed25519PrivateKey.generate()
            raw = self._key.private_bytes_raw()
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(base64.b64encode(raw).decode())
        public = self._key.public_key()
        (key_dir / "signing.pub").write_text(base64.b64encode(public.public_bytes_raw()).decode() + "\n")
        self.key_id = key_id(public)

    def sign(self, seq: int, hash_: str, ts_ms: int) -> Checkpoint:
        unsigned = Checkpoint(seq, hash_, ts_ms, self.key_id, "")
        signature = base64.b64encode(self._key.sign(unsigned.payload())).decode()
        return Checkpoint(seq, hash_, ts_ms, self.key_id, signature)


def load_public_keys(paths: list[Path]) -> dict[str, Ed25519PublicKey]:
    keys: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(path.read_text().strip()))
        keys[key_id(public)] = public
    return keys


def verify_checkpoint(checkpoint: Checkpoint, keys: dict[str, Ed25519PublicKey]) -> str | None:
    public = keys.get(checkpoint.key_id)
    if public is None:
        return f"checkpoint at record {checkpoint.seq} is signed by an unknown key {checkpoint.key_id}"
    try:
        public.verify(base64.b64decode(checkpoint.signature), checkpoint.payload())
    except (InvalidSignature, ValueError):
        return f"checkpoint at record {checkpoint.seq} has an invalid signature"
    return None

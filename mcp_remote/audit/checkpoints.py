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
from typing import TYPE_CHECKING

import orjson

from .ed25519 import load_private_key, new_private_key
from .records import canonical

if TYPE_CHECKING:  # verification is the CLI's: the hub itself never imports `cryptography`
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["Checkpoint", "CheckpointSigner", "load_public_keys", "read_checkpoint_file", "verify_checkpoint"]


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


def read_checkpoint_file(path: Path) -> list[Checkpoint]:
    """The checkpoints a hub appended to `path` (none if it does not exist); a whole line that
    is not a checkpoint is a ValueError naming it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    found = []
    # A last line without its newline is an append the hub died in (or a full disk cut): no
    # checkpoint was completed there, as no journal record is by a line cut short.
    for number, line in enumerate(data.split(b"\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            raw = orjson.loads(line)
            checkpoint = Checkpoint(raw["seq"], raw["hash"], raw["ts_ms"], raw["key_id"], raw["signature"])
            if not isinstance(checkpoint.seq, int) or not isinstance(checkpoint.hash, str):
                raise TypeError
        except (ValueError, TypeError, KeyError):
            why = f"{path}, line {number}: not a signed checkpoint (was the file edited?)"
            raise ValueError(why) from None
        found.append(checkpoint)
    return found


def key_id(public: bytes) -> str:
    """The id a checkpoint names its key by: the first 16 hex digits of SHA-256 of the raw public key."""
    return hashlib.sha256(public).hexdigest()[:16]


class CheckpointSigner:
    def __init__(self, key_dir: Path) -> None:
        key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_path = key_dir / "signing.key"
        if key_path.exists():
            raw = base64.b64decode(key_path.read_text())
        else:
            raw = new_private_key()
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(base64.b64encode(raw).decode())
        self._key = load_private_key(raw)
        public = self._key.public_bytes()
        (key_dir / "signing.pub").write_text(base64.b64encode(public).decode() + "\n")
        self.key_id = key_id(public)

    def sign(self, seq: int, hash_: str, ts_ms: int) -> Checkpoint:
        unsigned = Checkpoint(seq, hash_, ts_ms, self.key_id, "")
        signature = base64.b64encode(self._key.sign(unsigned.payload())).decode()
        return Checkpoint(seq, hash_, ts_ms, self.key_id, signature)


def load_public_keys(paths: list[Path]) -> dict[str, Ed25519PublicKey]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    keys: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        raw = base64.b64decode(path.read_text().strip())
        keys[key_id(raw)] = Ed25519PublicKey.from_public_bytes(raw)
    return keys


def verify_checkpoint(checkpoint: Checkpoint, keys: dict[str, Ed25519PublicKey]) -> str | None:
    from cryptography.exceptions import InvalidSignature

    public = keys.get(checkpoint.key_id)
    if public is None:
        return f"checkpoint at record {checkpoint.seq} is signed by an unknown key {checkpoint.key_id}"
    try:
        public.verify(base64.b64decode(checkpoint.signature), checkpoint.payload())
    except (InvalidSignature, ValueError):
        return f"checkpoint at record {checkpoint.seq} has an invalid signature"
    return None

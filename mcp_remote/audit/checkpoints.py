"""Ed25519-signed checkpoints of the audit chain: a signature over (seq, hash) at a point in time.

The key lives in the hub's state directory (`audit/signing.key`, mode 0600); its public half
(`audit/signing.pub`) is what `mcphub audit verify` trusts. A checkpoint lets verify notice a
log cut after it: the record it names must still be there with the same hash.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import orjson

from .ed25519 import PRIVATE_KEY_BYTES, load_private_key, new_private_key
from .records import canonical

if TYPE_CHECKING:  # verification is the CLI's: the hub itself never imports `cryptography`
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = [
    "Checkpoint",
    "CheckpointSigner",
    "load_public_keys",
    "missing_checkpoints",
    "read_checkpoint_file",
    "uncovered_stop",
    "verify_checkpoint",
    "write_new_file",
]


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


def write_new_file(path: Path, data: bytes, mode: int = 0o600) -> bool:
    """Create `path` holding `data`, whole or not at all, and never over a file already there.

    A secret the hub makes once (its signing key, the operator's token) is written to a
    temporary file in the same directory, synced, and only then linked into place: a full
    disk or a crash part way leaves no empty or half-written file that every later start
    would take for the secret. Returns False, touching nothing, when `path` exists (another
    process made it first)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            # A file system without hard links: a rename cannot refuse to replace, so look first.
            if path.exists():
                return False
            os.rename(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(directory)  # the new name is on the disk too
    finally:
        os.close(directory)
    return True


def read_secret_file(path: Path) -> bytes:
    """The bytes of a secret the hub made (its signing key, the operator's token), refused as a
    StateError when other users may read it: the hub writes them 0600, so a wider mode is a
    restore from a backup or a `chmod` that gave the secret away, and using it would hide that.
    An empty file holds no secret and is returned as it is. FileNotFoundError passes through."""
    from ..statedir import StateError

    with open(path, "rb") as file:
        mode = os.fstat(file.fileno()).st_mode
        data = file.read()
        if mode & 0o077 and data.strip():
            raise StateError(
                f"{path}: readable or writable by other users (mode {stat.S_IMODE(mode):04o}); "
                f"a secret must be the owner's only: chmod 600 {path}, and replace the secret if "
                "someone else may have read it"
            )
        return data


def _read_key(
    path: Path, size: int, what: str, remedy: str, *, secret: bool = False, given: bool = False
) -> bytes | None:
    """The `size` raw bytes of a key file holding them in base64: None if the file does not
    exist, empty if it is empty (a start that failed on a full disk left it so: no key was
    ever in it). A file that holds something else is a StateError naming it, and `remedy` (a
    ConfigError for a file the command line `given`); so is a `secret` one other users may
    read (`read_secret_file`)."""
    from mcp_local.errors import ConfigError

    from ..statedir import StateError

    try:
        text = (read_secret_file(path) if secret else path.read_bytes()).strip()
    except FileNotFoundError:
        return None
    if not text:
        return b""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != size:
        raise (ConfigError if given else StateError)(f"{path}: not {what} ({size} bytes in base64); {remedy}")
    return raw


_RESTORE_KEY = "restore it from a backup"
_PUBLIC_KEY_BYTES = 32


def _refuse(why: str) -> NoReturn:
    from .store import AuditStoreRefused  # it imports this module

    raise AuditStoreRefused(why)


def _new_key_help(key_dir: Path, old: bytes, restore: str) -> str:
    """What an operator can do when the key that signed the log is not the one at hand."""
    aside = key_dir / f"signing.pub.{key_id(old)}"
    return (
        f"{restore}, or move signing.pub aside (mv {key_dir / 'signing.pub'} {aside}) to sign with "
        "a new key from now on (`mcphub audit verify` reads the old key there too, beside the new one)"
    )


class CheckpointSigner:
    """The hub's signing key, made at its first start. `signing.pub` is never written over: it
    is how an operator learns which key signed the log's checkpoints, and the copy verify trusts.
    With it and without the key (lost, or a backup restored in part), the hub refuses to start
    rather than sign on with a new key under which the whole history would fail to verify."""

    def __init__(self, key_dir: Path) -> None:
        key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_path, pub_path = key_dir / "signing.key", key_dir / "signing.pub"
        self.key_dir, self.key_path = key_dir, key_path
        raw = _read_key(key_path, PRIVATE_KEY_BYTES, "an Ed25519 signing key", _RESTORE_KEY, secret=True)
        existed = bool(raw)
        signed_by = _read_key(
            pub_path,
            _PUBLIC_KEY_BYTES,
            "an Ed25519 public key",
            "restore it from a backup, or delete it and the hub writes it again from signing.key",
        )
        if not raw:
            if signed_by:
                _refuse(
                    f"{key_path} is {'empty' if raw is not None else 'missing'}, but {pub_path} says "
                    f"this log's checkpoints are signed by key {key_id(signed_by)}: "
                    + _new_key_help(key_dir, signed_by, "restore signing.key from a backup")
                )
            if raw is not None:  # empty: what an older hub left on a full disk
                key_path.unlink(missing_ok=True)
            raw = new_private_key()
            if not write_new_file(key_path, base64.b64encode(raw)):  # another process made one
                raw = _read_key(
                    key_path, PRIVATE_KEY_BYTES, "an Ed25519 signing key", _RESTORE_KEY, secret=True
                )
                if not raw:
                    raise OSError(errno.EEXIST, "another process is making this file", str(key_path))
        self.published = key_id(signed_by) if signed_by else None
        """The key `signing.pub` names, when there is one: a key that signed checkpoints of this log."""
        self.preexisting = existed or bool(signed_by)
        """A key was there before this start: a hub that signs checkpoints has run on this log."""
        self._key = load_private_key(raw)
        self._raw = raw
        public = self._key.public_bytes()
        self.key_id = key_id(public)
        if signed_by and signed_by != public:
            _refuse(
                f"{key_path} is key {self.key_id}, but {pub_path} says this log's checkpoints are "
                f"signed by key {key_id(signed_by)}: "
                + _new_key_help(key_dir, signed_by, f"restore the signing.key of {key_id(signed_by)}")
            )
        self._unpublished = None if signed_by else (pub_path, signed_by is not None, public)

    def publish(self) -> None:
        """Write signing.pub when there is none, once this key's first checkpoint is stored (and the
        log's last checkpoints were found to be this key's, `check_last`): written first, a key
        that signed none of them would leave a signing.pub under which verify finds every
        checkpoint "signed by an unknown key", and a signing.pub with no checkpoint of its key in
        the log could not tell a hub that never signed from checkpoints deleted
        (`missing_checkpoints`)."""
        if self._unpublished is None:
            return
        pub_path, empty, public = self._unpublished
        if empty:  # what an older hub left on a full disk
            pub_path.unlink(missing_ok=True)
        if not write_new_file(pub_path, base64.b64encode(public) + b"\n", mode=0o644):
            _refuse(f"{pub_path} appeared as this hub started: another hub is starting on this state dir")
        self._unpublished = None
        self.published = self.key_id

    def check_last(self, checkpoint: Checkpoint, where: str) -> None:
        """Refuse (AuditStoreRefused) to sign on after `checkpoint`, the last one in `where`, when
        this key did not sign it: its signature was edited, or signing.key was replaced (with
        signing.pub deleted too, the key in hand would otherwise have written a new signing.pub,
        and every checkpoint after would be "signed by an unknown key").

        One checkpoint, so O(1) whatever the log's size: Ed25519 signatures are deterministic,
        so this key signing the same payload again gives the same signature, and the hub needs
        no verifying code. A checkpoint of a key kept beside this one as `signing.pub.<id>` (the
        documented way to sign with a new key from then on) is verified with that key."""
        if checkpoint.key_id == self.key_id:
            if self.sign(checkpoint.seq, checkpoint.hash, checkpoint.ts_ms).signature == checkpoint.signature:
                return
            problem = f"has an invalid signature for key {self.key_id} ({self.key_path})"
        else:
            kept = self.key_dir / f"signing.pub.{checkpoint.key_id}"
            if not kept.exists():
                _refuse(
                    f"{where}: the last checkpoint (record {checkpoint.seq}) is signed by key "
                    f"{checkpoint.key_id}, but {self.key_path} is key {self.key_id}: restore the "
                    f"signing.key of {checkpoint.key_id}, or, to sign with this key from now on, keep "
                    f"the public key of {checkpoint.key_id} beside it as {kept} (`mcphub audit verify` "
                    "reads it there)"
                )
            from mcp_local.errors import ConfigError

            from ..statedir import StateError

            try:
                if verify_checkpoint(checkpoint, load_public_keys([kept])) is None:
                    return
            except ConfigError as exc:
                raise StateError(str(exc)) from None
            problem = f"has an invalid signature for key {checkpoint.key_id} ({kept})"
        _refuse(
            f"{where}: the last checkpoint (record {checkpoint.seq}) {problem}: it was edited, or is "
            "not this log's (`mcphub audit verify` reports it). Restore it from a backup; the hub "
            "will not sign checkpoints after it"
        )

    def output_key(self) -> bytes:
        """The key of the records' output digests (`output_hmac_sha256`): derived from the
        signing key, so nothing more to keep or back up, and unknown to a reader of the log."""
        return hmac.new(self._raw, b"mcphub audit output digest v1", hashlib.sha256).digest()

    def sign(self, seq: int, hash_: str, ts_ms: int) -> Checkpoint:
        unsigned = Checkpoint(seq, hash_, ts_ms, self.key_id, "")
        signature = base64.b64encode(self._key.sign(unsigned.payload())).decode()
        return Checkpoint(seq, hash_, ts_ms, self.key_id, signature)


def load_public_keys(paths: list[Path]) -> dict[str, Ed25519PublicKey]:
    """The keys in `paths` by id; a file that holds no public key is a ConfigError naming it."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from mcp_local.errors import ConfigError

    remedy = "give the signing.pub of the hub that signed the log (--public-key FILE)"
    keys: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        raw = _read_key(path, _PUBLIC_KEY_BYTES, "an Ed25519 public key", remedy, given=True)
        if raw is None:
            raise ConfigError(f"no public key at {path} (pass --public-key FILE)")
        try:
            if not raw:
                raise ValueError("empty")
            keys[key_id(raw)] = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError:
            raise ConfigError(f"{path}: not an Ed25519 public key (32 bytes in base64); {remedy}") from None
    return keys


def missing_checkpoints(
    checkpoints: list[Checkpoint], records: int, published: str | None, pub_path: object
) -> tuple[int, str] | None:
    """(the first record concerned, why) when a log of `records` records lacks checkpoints a hub
    must have signed, else None: the state directory's `signing.pub` (`pub_path`, of key
    `published`; None for a log the directory does not hold, PostgreSQL) is written only once its
    key's first checkpoint is stored, and a hub checkpoints its first write at once, so a log
    with records and no checkpoint at all beside it had them deleted. (Any key's: a key replaced
    later signs on after the old one's.)"""
    if published is not None and records and not checkpoints:
        return 1, (
            f"{pub_path} exists (key {published}), but the log has {records} records and no signed "
            "checkpoint: signing.pub is written only once its key has signed one, so the checkpoints "
            "were deleted (and the records may have been rewritten). Compare with a copy of the "
            "checkpoints kept elsewhere (`mcphub audit verify --checkpoints FILE`)"
        )
    return None


def uncovered_stop(checkpoints: list[Checkpoint], last_stopped: int | None) -> str | None:
    """A note when the log's last `stopped` record (a clean stop writes it, then signs a
    checkpoint of the head) is past every checkpoint: the checkpoints after it were deleted, or
    the stop could not store its last checkpoint (its log said "could not store an audit
    checkpoint"). Not a failure: the second happens to a sound log, when its store fails as the
    hub stops."""
    last = max((c.seq for c in checkpoints), default=0)
    if last_stopped is None or last_stopped <= last:
        return None
    covered = f"the last signed checkpoint is of record {last}" if last else "the log has none"
    return (
        f"record {last_stopped} is a `stopped` record and {covered}: a clean stop signs a checkpoint "
        "of it, so either it could not (its store failed as the hub stopped) or the checkpoints after "
        "it were deleted; compare with a copy kept elsewhere (`mcphub audit verify --checkpoints FILE`)"
    )


def verify_checkpoint(checkpoint: Checkpoint, keys: dict[str, Ed25519PublicKey]) -> str | None:
    from cryptography.exceptions import InvalidSignature

    public = keys.get(checkpoint.key_id)
    if public is None:
        return (
            f"checkpoint at record {checkpoint.seq} is signed by an unknown key {checkpoint.key_id} "
            "(if it is a key the log was signed with before, give its public key: --public-key FILE)"
        )
    try:
        public.verify(base64.b64decode(checkpoint.signature), checkpoint.payload())
    except (InvalidSignature, ValueError):
        return f"checkpoint at record {checkpoint.seq} has an invalid signature"
    return None

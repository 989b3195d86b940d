"""Ed25519 signing for audit checkpoints, through the OpenSSL the Python runtime already loaded.

The `cryptography` package carries its own OpenSSL: importing it costs a hub about 7.5 MB of
resident memory (its Rust extension, mostly) for one signature a minute. The `libcrypto` that
`hashlib` and `ssl` use is in memory anyway, and OpenSSL 1.1.1 and later sign Ed25519
(RFC 8032: the private key is 32 random bytes, the signature deterministic). Where that library
cannot be found or lacks a function, `cryptography` signs instead. Verification
(`mcphub audit verify`) always uses `cryptography`: a second implementation checks the first.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any, Protocol

__all__ = ["PRIVATE_KEY_BYTES", "Ed25519Key", "load_private_key", "new_private_key"]

PRIVATE_KEY_BYTES = 32
_PUBLIC_KEY_BYTES = 32
_SIGNATURE_BYTES = 64
_EVP_PKEY_ED25519 = 1087  # NID_ED25519, the same in every OpenSSL that has it


class Ed25519Key(Protocol):
    def public_bytes(self) -> bytes: ...
    def sign(self, message: bytes) -> bytes: ...


def new_private_key() -> bytes:
    """A new private key: 32 bytes from the kernel's CSPRNG (RFC 8032, section 5.1.5)."""
    return os.urandom(PRIVATE_KEY_BYTES)


def load_private_key(raw: bytes) -> Ed25519Key:
    """The key for the 32 private bytes `raw`: OpenSSL's in-process library where it can, else
    `cryptography`."""
    if len(raw) != PRIVATE_KEY_BYTES:
        raise ValueError(f"an Ed25519 private key is {PRIVATE_KEY_BYTES} bytes, not {len(raw)}")
    lib = _libcrypto()
    if lib is not None:
        return _OpenSSLKey(lib, raw)
    return _CryptographyKey(raw)


class _OpenSSLKey:
    def __init__(self, lib: Any, raw: bytes) -> None:
        self._lib = lib
        self._pkey = lib.EVP_PKEY_new_raw_private_key(_EVP_PKEY_ED25519, None, raw, len(raw))
        if not self._pkey:
            raise ValueError("OpenSSL refused the Ed25519 private key")

    def __del__(self) -> None:
        if getattr(self, "_pkey", None):
            self._lib.EVP_PKEY_free(self._pkey)
            self._pkey = None

    def public_bytes(self) -> bytes:
        out = ctypes.create_string_buffer(_PUBLIC_KEY_BYTES)
        size = ctypes.c_size_t(_PUBLIC_KEY_BYTES)
        if self._lib.EVP_PKEY_get_raw_public_key(self._pkey, out, ctypes.byref(size)) != 1:
            raise RuntimeError("OpenSSL could not give the Ed25519 public key")
        return out.raw[: size.value]

    def sign(self, message: bytes) -> bytes:
        ctx = self._lib.EVP_MD_CTX_new()
        if not ctx:
            raise MemoryError("OpenSSL could not allocate a signing context")
        try:
            if self._lib.EVP_DigestSignInit(ctx, None, None, None, self._pkey) != 1:
                raise RuntimeError("OpenSSL could not start an Ed25519 signature")
            out = ctypes.create_string_buffer(_SIGNATURE_BYTES)
            size = ctypes.c_size_t(_SIGNATURE_BYTES)
            if self._lib.EVP_DigestSign(ctx, out, ctypes.byref(size), message, len(message)) != 1:
                raise RuntimeError("OpenSSL could not make the Ed25519 signature")
            return out.raw[: size.value]
        finally:
            self._lib.EVP_MD_CTX_free(ctx)


class _CryptographyKey:
    def __init__(self, raw: bytes) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self._key = Ed25519PrivateKey.from_private_bytes(raw)

    def public_bytes(self) -> bytes:
        return self._key.public_key().public_bytes_raw()

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


_loaded: list[Any] = []


def _libcrypto() -> Any:
    """The libcrypto `_hashlib` is linked against, with the signatures declared; None if this
    runtime has none (a static build) or it is older than 1.1.1."""
    if not _loaded:
        _loaded.append(_find_libcrypto())
    return _loaded[0]


def _find_libcrypto() -> Any:
    try:
        import _hashlib  # noqa: F401 - maps the runtime's libcrypto, if it has a shared one

        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {line.split()[-1] for line in maps if "/libcrypto.so" in line}
        if len(paths) != 1:
            return None
        lib = ctypes.CDLL(paths.pop())
        p, size_p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)
        lib.EVP_PKEY_new_raw_private_key.restype = p
        lib.EVP_PKEY_new_raw_private_key.argtypes = [ctypes.c_int, p, ctypes.c_char_p, ctypes.c_size_t]
        lib.EVP_PKEY_get_raw_public_key.restype = ctypes.c_int
        lib.EVP_PKEY_get_raw_public_key.argtypes = [p, ctypes.c_char_p, size_p]
        lib.EVP_PKEY_free.restype = None
        lib.EVP_PKEY_free.argtypes = [p]
        lib.EVP_MD_CTX_new.restype = p
        lib.EVP_MD_CTX_new.argtypes = []
        lib.EVP_MD_CTX_free.restype = None
        lib.EVP_MD_CTX_free.argtypes = [p]
        lib.EVP_DigestSignInit.restype = ctypes.c_int
        lib.EVP_DigestSignInit.argtypes = [p, p, p, p, p]
        lib.EVP_DigestSign.restype = ctypes.c_int
        lib.EVP_DigestSign.argtypes = [p, ctypes.c_char_p, size_p, ctypes.c_char_p, ctypes.c_size_t]
    except (ImportError, OSError, AttributeError):  # no shared libcrypto, or one without these
        return None
    return lib

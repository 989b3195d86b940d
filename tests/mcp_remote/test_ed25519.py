"""Checkpoint signatures through the runtime's OpenSSL are exactly `cryptography`'s (Ed25519 is
deterministic), and both give RFC 8032's own test vector."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mcp_remote.audit import ed25519

# RFC 8032, section 7.1, TEST 1 and TEST 2.
VECTORS = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
]


def test_this_runtime_signs_with_its_own_libcrypto() -> None:
    # Debian's Python links hashlib against a shared OpenSSL 3: the hub needs no other.
    assert ed25519._libcrypto() is not None
    assert isinstance(ed25519.load_private_key(ed25519.new_private_key()), ed25519._OpenSSLKey)


@pytest.mark.parametrize(("secret", "public", "message", "signature"), VECTORS)
def test_rfc_8032_vectors(secret: str, public: str, message: str, signature: str) -> None:
    raw = bytes.fromhex(secret)
    for key in (ed25519._OpenSSLKey(ed25519._libcrypto(), raw), ed25519._CryptographyKey(raw)):
        assert key.public_bytes().hex() == public
        assert key.sign(bytes.fromhex(message)).hex() == signature


def test_both_ways_sign_alike_and_verify() -> None:
    for size in (0, 1, 63, 64, 65, 1000, 100_000):
        raw, message = ed25519.new_private_key(), os.urandom(size)
        ours = ed25519._OpenSSLKey(ed25519._libcrypto(), raw)
        theirs = ed25519._CryptographyKey(raw)
        assert ours.public_bytes() == theirs.public_bytes()
        signature = ours.sign(message)
        assert signature == theirs.sign(message)
        Ed25519PublicKey.from_public_bytes(ours.public_bytes()).verify(signature, message)


def test_a_key_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes, not 31"):
        ed25519.load_private_key(b"x" * 31)

"""Ed25519 key files and bundle signatures, checked with PyNaCl directly."""

from __future__ import annotations

import base64
import hashlib
import stat
from pathlib import Path

import pytest
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from policyd.errors import KeyFileExistsError, SigningKeyError
from policyd.signing import generate_keypair, load_signing_key, load_verify_key, sign, verify

PAYLOAD = b'{"revision":7,"content_hash":"abc"}'


def test_keygen_writes_base64_seed_and_public_key_and_keeps_the_seed_private(
    tmp_path: Path,
) -> None:
    paths = generate_keypair(tmp_path / "keys")
    seed = base64.b64decode(paths.signing_key.read_bytes().strip(), validate=True)
    public = base64.b64decode(paths.public_key.read_bytes().strip(), validate=True)
    assert bytes(SigningKey(seed).verify_key) == public
    assert stat.S_IMODE(paths.signing_key.stat().st_mode) == 0o600


def test_keygen_refuses_to_overwrite_an_existing_key(tmp_path: Path) -> None:
    first = generate_keypair(tmp_path)
    with pytest.raises(KeyFileExistsError):
        generate_keypair(tmp_path)
    assert load_verify_key(first.public_key).encode() == base64.b64decode(
        first.public_key.read_bytes()
    )


def test_key_id_is_the_sha256_prefix_of_the_public_key(tmp_path: Path) -> None:
    paths = generate_keypair(tmp_path)
    public = base64.b64decode(paths.public_key.read_bytes())
    assert paths.key_id == hashlib.sha256(public).hexdigest()[:16]
    assert sign(PAYLOAD, load_signing_key(paths.signing_key)).key_id == paths.key_id


def test_signature_verifies_with_nacl_and_the_public_key_file(tmp_path: Path) -> None:
    paths = generate_keypair(tmp_path)
    envelope = sign(PAYLOAD, load_signing_key(paths.signing_key))
    public = VerifyKey(base64.b64decode(paths.public_key.read_bytes()))
    assert envelope.signature is not None
    assert public.verify(envelope.payload, envelope.signature) == PAYLOAD


def test_signature_fails_after_one_payload_byte_changes(tmp_path: Path) -> None:
    paths = generate_keypair(tmp_path)
    envelope = sign(PAYLOAD, load_signing_key(paths.signing_key))
    tampered = bytearray(envelope.payload)
    tampered[12] ^= 0x01
    assert envelope.signature is not None
    with pytest.raises(BadSignatureError):
        load_verify_key(paths.public_key).verify(bytes(tampered), envelope.signature)


def test_verify_rejects_another_keys_signature(tmp_path: Path) -> None:
    mine = generate_keypair(tmp_path / "mine")
    theirs = generate_keypair(tmp_path / "theirs")
    envelope = sign(PAYLOAD, load_signing_key(theirs.signing_key))
    assert verify(envelope, load_verify_key(theirs.public_key))
    assert not verify(envelope, load_verify_key(mine.public_key))


def test_malformed_key_file_names_the_file_and_the_reason(tmp_path: Path) -> None:
    bad = tmp_path / "signing.key"
    bad.write_text(base64.b64encode(b"short").decode())
    with pytest.raises(SigningKeyError) as caught:
        load_signing_key(bad)
    assert str(caught.value) == f"{bad}: expected 32 bytes, got 5"

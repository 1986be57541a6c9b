"""Ed25519 bundle signatures: key files, key ids, signing and verification (PyNaCl).

Formats, kept simple so a sidecar (or anyone with libsodium) can verify without policyd:

- `signing.key`: base64 of the 32-byte Ed25519 seed, one line, mode 0600. Only policyd reads it.
- `signing.pub`: base64 of the 32-byte Ed25519 public key, one line. Sidecars mount this.
- key id: the first 16 hex characters of sha256(public key bytes); it names the key in the
  envelope so a rotation can be told apart from tampering.
- signature: the 64-byte detached Ed25519 signature over `Envelope.payload`, exactly the bytes
  the sidecar decodes into a `Bundle`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

import msgspec
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from policyd.bundle import Envelope
from policyd.errors import KeyFileExistsError, SigningKeyError

KEY_FILE = "signing.key"
PUB_FILE = "signing.pub"
_KEY_BYTES = 32


class KeyPaths(msgspec.Struct, frozen=True):
    signing_key: Path
    public_key: Path
    key_id: str


def key_id(verify_key: VerifyKey) -> str:
    return hashlib.sha256(bytes(verify_key)).hexdigest()[:16]


def generate_keypair(out_dir: Path) -> KeyPaths:
    """Write a fresh key pair into `out_dir`; never overwrites an existing key."""
    out_dir.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = out_dir / KEY_FILE, out_dir / PUB_FILE
    for path in (key_path, pub_path):
        if path.exists():
            raise KeyFileExistsError(path)
    signing_key = SigningKey.generate()
    seed = base64.b64encode(bytes(signing_key)) + b"\n"
    # O_EXCL + 0600 at creation: the seed is never readable by others, not even briefly.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(seed)
    verify_key = signing_key.verify_key
    pub_path.write_bytes(base64.b64encode(bytes(verify_key)) + b"\n")
    return KeyPaths(signing_key=key_path, public_key=pub_path, key_id=key_id(verify_key))


def _read_key_bytes(path: Path) -> bytes:
    try:
        text = path.read_bytes().strip()
    except OSError as exc:
        raise SigningKeyError(path, f"cannot read: {exc.strerror}") from exc
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise SigningKeyError(path, "not base64") from exc
    if len(raw) != _KEY_BYTES:
        raise SigningKeyError(path, f"expected {_KEY_BYTES} bytes, got {len(raw)}")
    return raw


def load_signing_key(path: Path) -> SigningKey:
    return SigningKey(_read_key_bytes(path))


def load_verify_key(path: Path) -> VerifyKey:
    return VerifyKey(_read_key_bytes(path))


def sign(payload: bytes, key: SigningKey) -> Envelope:
    signature = bytes(key.sign(payload).signature)
    return Envelope(payload=payload, signature=signature, key_id=key_id(key.verify_key))


def unsigned(payload: bytes) -> Envelope:
    """An envelope for local development only; sidecars reject it unless told otherwise."""
    return Envelope(payload=payload)


def verify(envelope: Envelope, key: VerifyKey) -> bool:
    """True when the envelope carries a valid signature by `key` over its exact payload."""
    if envelope.signature is None:
        return False
    try:
        key.verify(envelope.payload, envelope.signature)
    except BadSignatureError:
        return False
    return True

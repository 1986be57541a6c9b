"""Bundle verification, activation and persistence (sidecar/bundles.py), without NATS."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest
from sidecar_kit import Keys, compile_policy, new_keys, signed

from policyd.bundle import Bundle, Envelope, content_hash, encode_bundle, encode_envelope
from policyd.signing import generate_keypair, load_signing_key, sign
from sidecar.bundles import BundleRejected, PolicyState, Verifier
from sidecar.policy import CompiledBundle
from sidecar.settings import from_env

RULES = """
rules:
  - name: default
    models: {allow: [gpt-4o-mini]}
"""


@pytest.fixture
def bundle(tmp_path: Path) -> Bundle:
    return compile_policy(tmp_path / "policy", RULES, revision=3)


def state_for(keys: Keys, path: Path | None = None, **options: bool) -> PolicyState:
    return PolicyState(Verifier((keys.public,), **options), path)


def test_a_bundle_signed_by_any_configured_key_is_accepted(bundle: Bundle, keys: Keys) -> None:
    old, new = new_keys(), keys
    verifier = Verifier((old.public, new.public))
    assert verifier.open(signed(bundle, new)) == bundle
    assert verifier.open(signed(bundle, old)) == bundle


def test_an_unsigned_bundle_is_rejected(bundle: Bundle, keys: Keys) -> None:
    with pytest.raises(BundleRejected, match="unsigned") as caught:
        Verifier((keys.public,)).open(encode_envelope(Envelope(payload=encode_bundle(bundle))))
    assert caught.value.revision == 3


def test_an_unsigned_bundle_is_accepted_only_when_allowed(bundle: Bundle, keys: Keys) -> None:
    data = encode_envelope(Envelope(payload=encode_bundle(bundle)))
    assert Verifier((keys.public,), allow_unsigned=True).open(data) == bundle


def test_a_tampered_payload_is_rejected_naming_the_claimed_revision(
    bundle: Bundle, keys: Keys
) -> None:
    envelope = sign(encode_bundle(bundle), keys.signing)
    tampered = envelope.payload.replace(b"gpt-4o-mini", b"gpt-4o-maxi")
    data = encode_envelope(msgspec.structs.replace(envelope, payload=tampered))
    with pytest.raises(BundleRejected, match="bad signature") as caught:
        Verifier((keys.public,)).open(data)
    assert caught.value.revision == 3


def test_a_bundle_signed_by_an_unknown_key_is_rejected(bundle: Bundle, keys: Keys) -> None:
    with pytest.raises(BundleRejected, match="bad signature"):
        Verifier((keys.public,)).open(signed(bundle, new_keys()))


def test_a_truncated_signature_is_rejected_rather_than_raised(bundle: Bundle, keys: Keys) -> None:
    envelope = sign(encode_bundle(bundle), keys.signing)
    data = encode_envelope(msgspec.structs.replace(envelope, signature=envelope.signature[:10]))
    with pytest.raises(BundleRejected, match="malformed signature"):
        Verifier((keys.public,)).open(data)


def test_a_content_hash_that_does_not_match_the_content_is_rejected(
    bundle: Bundle, keys: Keys
) -> None:
    wrong = msgspec.structs.replace(bundle, content_hash="0" * 64)
    with pytest.raises(BundleRejected, match="content hash"):
        Verifier((keys.public,)).open(signed(wrong, keys))


def test_bytes_that_are_not_an_envelope_are_rejected(keys: Keys) -> None:
    with pytest.raises(BundleRejected, match="not a bundle envelope"):
        Verifier((keys.public,)).open(b"{not json")


def test_a_malformed_public_key_fails_at_start_with_its_position(keys: Keys) -> None:
    with pytest.raises(ValueError, match="public key #2"):
        Verifier((keys.public, "bm90IGEga2V5"))


def test_an_older_revision_is_rejected_and_the_active_bundle_stays(
    bundle: Bundle, keys: Keys
) -> None:
    state = state_for(keys)
    assert state.offer(signed(bundle, keys), origin="test")
    older = msgspec.structs.replace(bundle, revision=2)
    assert not state.offer(signed(older, keys), origin="test")
    assert state.active is not None and state.active.revision == 3
    assert state.rejection is not None
    assert state.rejection.reason == "revision 2 is not newer than active 3"


def test_the_same_bundle_offered_again_changes_nothing(bundle: Bundle, keys: Keys) -> None:
    state = state_for(keys)
    assert state.offer(signed(bundle, keys), origin="disk")
    first = state.active
    assert not state.offer(signed(bundle, keys), origin="nats:1")
    assert state.active is first
    assert state.rejection is None


def test_a_newer_good_bundle_clears_an_earlier_rejection(bundle: Bundle, keys: Keys) -> None:
    state = state_for(keys)
    state.offer(signed(bundle, keys), origin="test")
    state.offer(b"garbage", origin="test")
    assert state.rejection is not None
    newer = msgspec.structs.replace(bundle, revision=4)
    assert state.offer(signed(newer, keys), origin="test")
    assert state.rejection is None


def test_a_bundle_that_cannot_be_compiled_is_rejected_not_raised(
    bundle: Bundle, keys: Keys
) -> None:
    # Signed and hashed correctly, but the model points at a provider that does not exist.
    model = msgspec.structs.replace(
        bundle.models["gpt-4o"],
        deployments=(
            msgspec.structs.replace(bundle.models["gpt-4o"].deployments[0], provider="x"),
        ),
    )
    broken = msgspec.structs.replace(bundle, models={**bundle.models, "gpt-4o": model})
    broken = msgspec.structs.replace(broken, content_hash=content_hash(broken))
    state = state_for(keys)
    assert not state.offer(signed(broken, keys), origin="test")
    assert state.rejection is not None and "inconsistent" in state.rejection.reason


def test_an_activated_bundle_is_persisted_and_enforced_after_a_restart(
    bundle: Bundle, keys: Keys, tmp_path: Path
) -> None:
    path = tmp_path / "state" / "bundle.json"
    state_for(keys, path).offer(signed(bundle, keys), origin="nats:1")
    restarted = state_for(keys, path)
    assert restarted.load_persisted()
    assert restarted.active is not None and restarted.active.revision == 3


def test_a_rejected_bundle_is_not_persisted(bundle: Bundle, keys: Keys, tmp_path: Path) -> None:
    path = tmp_path / "bundle.json"
    state = state_for(keys, path)
    state.offer(signed(bundle, keys), origin="nats:1")
    state.offer(signed(msgspec.structs.replace(bundle, revision=9), new_keys()), origin="nats:2")
    assert Verifier((keys.public,)).open(path.read_bytes()).revision == 3


def test_without_a_persisted_bundle_the_sidecar_has_nothing_active(
    keys: Keys, tmp_path: Path
) -> None:
    state = state_for(keys, tmp_path / "missing.json")
    assert not state.load_persisted()
    assert state.active is None


async def test_listeners_hear_activations_and_rejections(bundle: Bundle, keys: Keys) -> None:
    state = state_for(keys)
    queue: asyncio.Queue[CompiledBundle | BundleRejected] = asyncio.Queue()
    state.listeners.append(queue)
    state.offer(signed(bundle, keys), origin="test")
    state.offer(b"garbage", origin="test")
    first, second = queue.get_nowait(), queue.get_nowait()
    assert isinstance(first, CompiledBundle) and first.revision == 3
    assert isinstance(second, BundleRejected)


def test_public_keys_come_from_the_list_and_the_key_file_so_keys_can_rotate(
    tmp_path: Path,
) -> None:
    old, new, extra = new_keys(), new_keys(), new_keys()
    key_file = tmp_path / "keys.pub"
    key_file.write_text(f"{new.public}\n\n{extra.public}\n")
    settings = from_env(
        {"SIDEGATE_PUBLIC_KEYS": f" {old.public} ,", "SIDEGATE_PUBLIC_KEYS_FILE": str(key_file)}
    )
    assert settings.public_keys == (old.public, new.public, extra.public)
    assert len(Verifier(settings.public_keys).keys) == 3


def test_a_sidecar_given_the_keygen_public_key_file_accepts_what_policyd_signs(
    bundle: Bundle, tmp_path: Path
) -> None:
    paths = generate_keypair(tmp_path / "keys")  # `sidegate policy keygen --out keys`
    settings = from_env({"SIDEGATE_PUBLIC_KEYS_FILE": str(paths.public_key)})
    envelope = sign(encode_bundle(bundle), load_signing_key(paths.signing_key))
    assert Verifier(settings.public_keys).open(encode_envelope(envelope)) == bundle

"""Publishing to JetStream KV on a real nats-server: revisions, CAS, rollback, diff, status."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import msgspec
import nats
import pytest
from nacl.signing import SigningKey, VerifyKey
from nats.aio.client import Client as NATS
from policy_samples import BASE, WriteFiles

from policyd.bundle import KV_BUCKET, KV_KEY, STATUS_BUCKET, Bundle, decode_bundle, decode_envelope
from policyd.compiler import compile_dir
from policyd.errors import SigningKeyError
from policyd.problems import Invalid
from policyd.publisher import NotFound, PolicyStore, Published, Unchanged
from policyd.status import SidecarStatus, encode_status, status_key
from sidegate.natsd import NatsServer


def bundle_with_tier(folder: Path, tier: str) -> Bundle:
    (folder / "a.yaml").write_text(BASE.replace("tier: cheap", f"tier: {tier}"))
    result = compile_dir(folder)
    assert isinstance(result, Bundle)
    return result


async def test_first_publish_is_revision_one_and_a_change_makes_two(
    store: PolicyStore, write_files: WriteFiles
) -> None:
    folder = write_files(**{"a.yaml": BASE})
    first = await store.publish(folder)
    write_files(**{"a.yaml": BASE + "aliases: {fast: gpt-4o-mini}\n"})
    second = await store.publish(folder)
    assert isinstance(first, Published)
    assert isinstance(second, Published)
    assert (first.revision, second.revision) == (1, 2)
    latest = await store.latest()
    assert latest is not None
    assert (latest.revision, latest.content_hash) == (2, second.content_hash)


async def test_publishing_unchanged_content_writes_nothing(
    store: PolicyStore, write_files: WriteFiles
) -> None:
    folder = write_files(**{"a.yaml": BASE})
    first = await store.publish(folder)
    again = await store.publish(folder)
    assert isinstance(first, Published)
    assert again == Unchanged(revision=1, content_hash=first.content_hash)
    assert len(await store.history()) == 1


async def test_invalid_folder_is_returned_with_its_problems_and_not_published(
    store: PolicyStore, write_files: WriteFiles
) -> None:
    folder = write_files(**{"a.yaml": BASE.replace("provider: openai", "provider: nobody")})
    result = await store.publish(folder)
    assert isinstance(result, Invalid)
    assert "unknown provider 'nobody'" in result.render()
    assert await store.latest() is None


async def test_concurrent_publishers_each_get_their_own_revision(
    nats_server: NatsServer, signing_key: SigningKey, tmp_path: Path
) -> None:
    # Four policyd replicas, each on its own connection, all reading "no bundle yet" at once.
    connections = [await nats.connect(nats_server.url) for _ in range(4)]
    try:
        replicas = [
            await PolicyStore.open(c.jetstream(), signing_key=signing_key) for c in connections
        ]
        bundles = []
        for i in range(4):
            (tmp_path / f"p{i}").mkdir()
            bundles.append(bundle_with_tier(tmp_path / f"p{i}", f"tier{i}"))
        results = await asyncio.gather(
            *(r.publish_bundle(b) for r, b in zip(replicas, bundles, strict=True))
        )
        history = await replicas[0].history()
    finally:
        for c in connections:
            await c.close()
    assert sorted(r.revision for r in results) == [1, 2, 3, 4]
    assert [s.revision for s in history] == [1, 2, 3, 4]
    assert {s.content_hash for s in history} == {b.content_hash for b in bundles}


async def test_rollback_republishes_old_content_as_a_new_revision(
    store: PolicyStore, tmp_path: Path
) -> None:
    old = bundle_with_tier(tmp_path, "cheap")
    await store.publish_bundle(old)
    await store.publish_bundle(bundle_with_tier(tmp_path, "budget"))
    result = await store.rollback(1)
    assert result == Published(revision=3, content_hash=old.content_hash, kv_revision=3)
    latest = await store.latest()
    assert latest is not None
    assert decode_bundle(latest.envelope.payload).models["gpt-4o-mini"].tier == "cheap"


async def test_rollback_to_a_revision_not_in_history_is_not_found(store: PolicyStore) -> None:
    assert await store.rollback(42) == NotFound(42)


async def test_diff_shows_the_changed_field_between_revisions(
    store: PolicyStore, tmp_path: Path
) -> None:
    await store.publish_bundle(bundle_with_tier(tmp_path, "cheap"))
    await store.publish_bundle(bundle_with_tier(tmp_path, "budget"))
    diff = await store.diff(1, 2)
    assert isinstance(diff, str)
    assert diff.startswith("--- revision 1\n+++ revision 2\n")
    assert '\n-      "tier": "cheap"\n' in diff
    assert '\n+      "tier": "budget"\n' in diff
    assert '\n-  "revision": 1,\n+  "revision": 2,\n' in diff


async def test_published_envelope_verifies_with_the_public_key(
    store: PolicyStore, nc: NATS, key_dir: Path, write_files: WriteFiles
) -> None:
    await store.publish(write_files(**{"a.yaml": BASE}))
    kv = await nc.jetstream().key_value(KV_BUCKET)
    raw = (await kv.get(KV_KEY)).value
    assert raw is not None
    envelope = decode_envelope(raw)
    public = VerifyKey(base64.b64decode((key_dir / "signing.pub").read_bytes().strip()))
    assert envelope.signature is not None
    assert public.verify(envelope.payload, envelope.signature) == envelope.payload
    assert decode_bundle(envelope.payload).revision == 1


async def test_publishing_without_a_key_is_refused_unless_insecure_is_explicit(
    nc: NATS, write_files: WriteFiles
) -> None:
    folder = write_files(**{"a.yaml": BASE})
    keyless = await PolicyStore.open(nc.jetstream())
    with pytest.raises(SigningKeyError):
        await keyless.publish(folder)
    insecure = await PolicyStore.open(nc.jetstream(), insecure_unsigned=True)
    assert isinstance(await insecure.publish(folder), Published)
    latest = await insecure.latest()
    assert latest is not None
    assert not latest.signed


async def test_revision_numbering_survives_a_deleted_key(
    store: PolicyStore, nc: NATS, tmp_path: Path
) -> None:
    await store.publish_bundle(bundle_with_tier(tmp_path, "cheap"))
    await (await nc.jetstream().key_value(KV_BUCKET)).delete(KV_KEY)
    result = await store.publish_bundle(bundle_with_tier(tmp_path, "budget"))
    assert isinstance(result, Published)
    assert result.revision == 2


async def test_status_shows_who_runs_the_latest_revision_and_who_is_stale(
    store: PolicyStore, nc: NATS, tmp_path: Path
) -> None:
    await store.publish_bundle(bundle_with_tier(tmp_path, "cheap"))
    second = await store.publish_bundle(bundle_with_tier(tmp_path, "budget"))
    now_ms = int(time.time() * 1000)
    kv = await nc.jetstream().key_value(STATUS_BUCKET)
    sidecars = [
        SidecarStatus(sidecar_id="shop/web-1", revision=2, content_hash=second.content_hash,
                      seen_at_ms=now_ms),
        SidecarStatus(sidecar_id="shop/web-2", revision=1, rejected_revision=2,
                      rejected_reason="bad signature", seen_at_ms=now_ms),
        SidecarStatus(sidecar_id="shop/gone", revision=2, seen_at_ms=now_ms - 600_000),
    ]  # fmt: skip
    for s in sidecars:
        await kv.put(status_key(s.sidecar_id), encode_status(s))
    await kv.put("garbage", b"not json")
    report = await store.status(stale_after_s=60, now_ms=now_ms)
    assert report.latest_revision == 2
    assert [(v.status.sidecar_id, v.current, v.stale) for v in report.sidecars] == [
        ("shop/gone", True, True),
        ("shop/web-1", True, False),
        ("shop/web-2", False, False),
    ]
    assert report.sidecars[2].status.rejected_reason == "bad signature"


def test_status_key_maps_characters_nats_keys_cannot_hold() -> None:
    assert status_key("shop/web-1") == "shop/web-1"
    assert status_key("shop web:1*") == "shop_web_1_"


async def test_history_lists_every_revision_oldest_first(
    store: PolicyStore, tmp_path: Path
) -> None:
    for tier in ("a", "b", "c"):
        await store.publish_bundle(bundle_with_tier(tmp_path, tier))
    history = await store.history()
    assert [(s.revision, s.kv_revision) for s in history] == [(1, 1), (2, 2), (3, 3)]
    assert all(s.signed for s in history)
    body = msgspec.json.decode(history[0].envelope.payload)
    assert body["models"]["gpt-4o-mini"]["tier"] == "a"

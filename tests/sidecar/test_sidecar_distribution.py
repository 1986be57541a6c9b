"""Distribution on a real nats-server: policyd publishes, sidecars follow, report and refuse."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path

import msgspec
import nats
import openai
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue
from sidecar_kit import (
    Keys,
    RunningSidecar,
    UsageTap,
    running_sidecar,
    sidecar_settings,
    wait_until,
    write_policy,
)

from fakeprovider.app import FakeProvider
from policyd.bundle import KV_BUCKET, KV_KEY, STATUS_BUCKET, decode_envelope, encode_envelope
from policyd.publisher import PolicyStore, Published
from policyd.status import decode_status, status_key
from sidecar.bundles import PolicyState, PolicyWatcher, Verifier
from sidecar.natslink import NatsLink
from sidecar.pipeline import WARNING_HEADER
from sidegate.natsd import NatsServer

HELLO = [{"role": "user", "content": "Say hello"}]
MINI_ONLY = """
rules:
  - name: mini-only
    models: {allow: [gpt-4o-mini]}
"""
BOTH = """
rules:
  - name: mini-only
    models: {allow: [gpt-4o-mini, gpt-4o]}
"""


async def publish(store: PolicyStore, folder: Path, rules: str, fake: FakeProvider | None) -> int:
    base_url = f"{fake.url}/v1" if fake else "http://fake.invalid/v1"
    result = await store.publish(write_policy(folder, rules, base_url=base_url))
    assert isinstance(result, Published), result
    return result.revision


def client_for(sidecar: RunningSidecar, **headers: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{sidecar.url}/v1", api_key="sk-app", max_retries=0, default_headers=headers
    )


async def policy_status(nats_url: str, *args: str) -> str:
    """`sidegate policy status`, run as an operator would."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidegate.cli", "policy", "status", "--nats-url", nats_url, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_a_policy_change_takes_effect_without_a_restart(
    tmp_path: Path, keys: Keys, fake: FakeProvider, nats_server: NatsServer, store: PolicyStore
) -> None:
    folder = tmp_path / "policy"
    await publish(store, folder, MINI_ONLY, fake)
    settings = sidecar_settings(tmp_path / "state", keys, nats_server.url)
    async with running_sidecar(settings) as sidecar:
        await sidecar.wait_for_revision(1)
        client = client_for(sidecar)
        with pytest.raises(openai.PermissionDeniedError):
            await client.chat.completions.create(model="gpt-4o", messages=HELLO)
        await publish(store, folder, BOTH, fake)
        await sidecar.wait_for_revision(2)
        await client.chat.completions.create(model="gpt-4o", messages=HELLO)
        await client.close()


MODES = """
rules:
  - name: loud-trial
    match: {tenant: acme}
    models: {allow: [gpt-4o-mini], mode: warn}
  - name: quiet-trial
    match: {tenant: globex}
    models: {allow: [gpt-4o-mini], mode: shadow}
"""


async def test_warn_and_shadow_decisions_travel_on_the_usage_record(
    tmp_path: Path,
    keys: Keys,
    fake: FakeProvider,
    nats_server: NatsServer,
    store: PolicyStore,
    usage: UsageTap,
) -> None:
    await publish(store, tmp_path / "policy", MODES, fake)
    settings = sidecar_settings(tmp_path / "state", keys, nats_server.url)
    async with running_sidecar(settings) as sidecar:
        await sidecar.wait_for_revision(1)
        warned = client_for(sidecar, **{"x-sidegate-tenant": "acme"})
        shadowed = client_for(sidecar, **{"x-sidegate-tenant": "globex"})
        loud = await warned.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HELLO
        )
        quiet = await shadowed.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HELLO
        )
        await wait_until(lambda: len(usage.records) == 2, what="two usage records")
        await warned.close()
        await shadowed.close()
    assert loud.status_code == quiet.status_code == 200
    assert loud.headers[WARNING_HEADER] == "models/loud-trial: model_not_allowed"
    assert WARNING_HEADER not in quiet.headers
    by_tenant = {r.tenant: r for r in usage.records}
    for tenant, rule, mode in (("acme", "loud-trial", "warn"), ("globex", "quiet-trial", "shadow")):
        record = by_tenant[tenant]
        assert (record.outcome, record.policy_revision) == ("ok", 1)
        [decision] = record.decisions
        assert (decision.rule, decision.mode, decision.outcome) == (rule, mode, "would_deny")
        assert "model `gpt-4o` is not allowed" in decision.reason


async def status_until(nats_url: str, wanted: str, *args: str) -> str:
    """Poll `sidegate policy status` until its output contains `wanted` (the write is async)."""
    for _ in range(50):
        out = await policy_status(nats_url, *args)
        if wanted in out:
            return out
        await asyncio.sleep(0.1)
    raise AssertionError(f"policy status never showed {wanted!r}: {out}")


async def test_policy_status_lists_the_revision_each_sidecar_runs(
    tmp_path: Path, keys: Keys, nats_server: NatsServer, store: PolicyStore
) -> None:
    await publish(store, tmp_path / "policy", MINI_ONLY, None)
    settings = sidecar_settings(tmp_path / "state", keys, nats_server.url)
    async with running_sidecar(settings) as sidecar:
        await sidecar.wait_for_revision(1)
        out = await status_until(nats_server.url, "sidecar-test-1", "--json")
    [view] = json.loads(out)["sidecars"]
    assert (view["current"], view["stale"]) == (True, False)
    status = view["status"]
    assert (status["revision"], status["app"], status["namespace"]) == (1, "billing", "acme")


async def test_the_status_is_rewritten_on_a_heartbeat_while_nothing_changes(
    tmp_path: Path, keys: Keys, nats_server: NatsServer, store: PolicyStore, nc: NATS
) -> None:
    await publish(store, tmp_path / "policy", MINI_ONLY, None)
    status_kv = await nc.jetstream().key_value(STATUS_BUCKET)
    settings = sidecar_settings(tmp_path / "state", keys, nats_server.url)  # 0.5 s beats
    async with running_sidecar(settings) as sidecar:
        await sidecar.wait_for_revision(1)
        seen: list[int] = []
        for _ in range(40):
            with contextlib.suppress(KeyNotFoundError):
                entry = await status_kv.get(status_key("sidecar-test-1"))
                status = decode_status(entry.value or b"")
                if not seen or status.seen_at_ms != seen[-1]:
                    seen.append(status.seen_at_ms)
            if len(seen) >= 3:
                break
            await asyncio.sleep(0.1)
    assert len(seen) >= 3, seen  # the first write, then at least two beats
    assert status.revision == 1 and status.rejected_revision is None


async def has_keys(kv: KeyValue) -> bool:
    try:
        return bool(await kv.keys())
    except NoKeysError:
        return False


async def test_a_clean_shutdown_removes_the_sidecar_from_policy_status(
    tmp_path: Path, keys: Keys, nats_server: NatsServer, store: PolicyStore, nc: NATS
) -> None:
    await publish(store, tmp_path / "policy", MINI_ONLY, None)
    status_kv = await nc.jetstream().key_value(STATUS_BUCKET)
    settings = sidecar_settings(tmp_path / "state", keys, nats_server.url)
    async with running_sidecar(settings) as sidecar:
        await sidecar.wait_for_revision(1)
        for _ in range(50):
            if await has_keys(status_kv):
                break
            await asyncio.sleep(0.1)
        assert await has_keys(status_kv)
    assert not await has_keys(status_kv)


async def test_a_tampered_bundle_is_refused_reported_and_the_old_one_stays(
    tmp_path: Path,
    keys: Keys,
    fake: FakeProvider,
    nats_server: NatsServer,
    store: PolicyStore,
    nc: NATS,
) -> None:
    await publish(store, tmp_path / "policy", MINI_ONLY, fake)
    settings = sidecar_settings(tmp_path / "state", keys, nats_server.url)
    async with running_sidecar(settings) as sidecar:
        await sidecar.wait_for_revision(1)
        kv = await nc.jetstream().key_value(KV_BUCKET)
        envelope = decode_envelope((await kv.get(KV_KEY)).value or b"")
        # Someone with write access to NATS but not the signing key widens the allowlist.
        payload = envelope.payload.replace(b'"revision":1', b'"revision":2').replace(
            b'"allow":["gpt-4o-mini"]', b'"allow":["*"]'
        )
        await kv.put(KV_KEY, encode_envelope(msgspec.structs.replace(envelope, payload=payload)))
        await wait_until(lambda: sidecar.state.rejection is not None, what="the rejection")
        assert sidecar.state.active is not None and sidecar.state.active.revision == 1
        client = client_for(sidecar)
        with pytest.raises(openai.PermissionDeniedError):
            await client.chat.completions.create(model="gpt-4o", messages=HELLO)
        await client.close()
        table = await status_until(nats_server.url, "rejected")
    assert "rejected 2: bad signature" in table


async def test_an_unsigned_bundle_is_refused_and_the_signed_one_stays(
    tmp_path: Path, keys: Keys, nats_server: NatsServer, store: PolicyStore, nc: NATS
) -> None:
    await publish(store, tmp_path / "policy", MINI_ONLY, None)
    settings = sidecar_settings(tmp_path / "state", keys, nats_server.url)
    async with running_sidecar(settings) as sidecar:
        await sidecar.wait_for_revision(1)
        unsigned = await PolicyStore.open(nc.jetstream(), insecure_unsigned=True)
        await publish(unsigned, tmp_path / "policy", BOTH, None)
        await wait_until(lambda: sidecar.state.rejection is not None, what="the rejection")
        assert sidecar.state.rejection is not None
        assert sidecar.state.rejection.reason.startswith("bundle is unsigned")
        assert sidecar.state.active is not None and sidecar.state.active.revision == 1


async def test_the_slow_timer_rereads_the_bundle_when_the_watch_is_silent(
    tmp_path: Path, keys: Keys, nats_server: NatsServer, store: PolicyStore
) -> None:
    folder = tmp_path / "policy"
    await publish(store, folder, MINI_ONLY, None)
    state = PolicyState(Verifier((keys.public,)), None)
    link = NatsLink(nats_server.url)
    watcher = PolicyWatcher(state, link, resync_interval_s=0.2)
    link.start()
    watcher.start()
    try:
        await wait_until(lambda: state.active is not None, what="revision 1")
        # A watch that stopped delivering, as one can after a server restart.
        assert watcher._watch is not None
        watcher._watch.cancel()
        await publish(store, folder, BOTH, None)
        await wait_until(
            lambda: state.active is not None and state.active.revision == 2, what="revision 2"
        )
    finally:
        await watcher.stop()
        await link.close()


async def test_a_bundle_published_after_a_nats_restart_reaches_the_sidecar(
    tmp_path: Path, keys: Keys, nats_server: NatsServer, store: PolicyStore, nc: NATS
) -> None:
    folder = tmp_path / "policy"
    await publish(store, folder, MINI_ONLY, None)
    settings = msgspec.structs.replace(
        sidecar_settings(tmp_path / "state", keys, nats_server.url), resync_interval_s=60.0
    )  # only the reconnect can bring the new bundle in time
    async with running_sidecar(settings) as sidecar:
        await sidecar.wait_for_revision(1)
        await nc.close()
        nats_server.stop()
        restarted = NatsServer(nats_server.store_dir, port=nats_server.port).start()
        try:
            policyd = await nats.connect(restarted.url)
            again = await PolicyStore.open(policyd.jetstream(), signing_key=keys.signing)
            await publish(again, folder, BOTH, None)
            await sidecar.wait_for_revision(2, timeout_s=15)
            await policyd.close()
        finally:
            restarted.stop()

"""Budgets end to end: policyd serving leases, sidecars, the fake provider, the openai SDK."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from decimal import Decimal
from functools import partial
from pathlib import Path

import aiohttp
import openai
from budget_kit import (
    HELLO,
    RunningSidecar,
    UsageTap,
    compiled,
    policyd_options,
    running_policyd,
    running_sidecar,
    sidecar_settings,
    wait_until,
    write_policy,
)
from nats.aio.client import Client as NATS
from prometheus_client.parser import text_string_to_metric_families

from fakeprovider.app import FakeProvider
from policyd.bundle import encode_bundle, encode_envelope
from policyd.quota import QuotaOwner, open_bucket
from policyd.quota_wire import period_key
from policyd.signing import generate_keypair, load_signing_key, sign
from sidecar.app import BUDGETS, STATE
from sidegate.natsd import NatsServer, free_port

D = Decimal
SHARED = """
rules:
  - name: team
    budgets:
      - {name: team-monthly, scope: tenant, limit_usd: "0.02", lease_usd: "0.002",
         safe_share_usd: "0.001"}
"""
LIMIT, SAFE_SHARE = D("0.02"), D("0.001")
# A request here (a dozen prompt tokens, max_tokens 50, gpt-4o) reserves about $0.00053.
WORST_CASE = D("0.00055")


@asynccontextmanager
async def sidecars(
    tmp_path: Path, nats_server: NatsServer, fake: FakeProvider, rules: str, count: int
) -> AsyncIterator[list[RunningSidecar]]:
    """policyd publishing `rules` and serving leases, and `count` sidecars following it."""
    folder = write_policy(tmp_path / "policy", rules, base_url=f"{fake.url}/v1")
    options = policyd_options(folder, nats_server.url)
    public = (tmp_path / "keys" / "signing.pub").read_text().strip()
    async with running_policyd(options), AsyncExitStack() as stack:
        running = []
        for i in range(count):
            settings = sidecar_settings(tmp_path / f"s{i}", public, nats_server.url, f"sc-{i}")
            running.append(await stack.enter_async_context(running_sidecar(settings)))
        for sidecar in running:
            await wait_until(partial(has_bundle, sidecar), what="the bundle")
        yield running


def has_bundle(sidecar: RunningSidecar) -> bool:
    return sidecar.app[STATE].active is not None


def client(sidecar: RunningSidecar) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{sidecar.url}/v1", api_key="sk-app", max_retries=0)


async def until_denied(ai: openai.AsyncOpenAI) -> tuple[int, openai.RateLimitError]:
    """Requests until one is refused with 429: how many were answered, and the refusal."""
    for done in range(500):
        try:
            await ai.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=50)
        except openai.RateLimitError as exc:
            return done, exc
    raise AssertionError("never refused")


async def spend_until_spent(ai: openai.AsyncOpenAI) -> tuple[int, openai.RateLimitError]:
    """Requests until the budget is spent; a slice still on its way is waited for."""
    total = 0
    while True:
        done, refused = await until_denied(ai)
        total += done
        if "is spent" in refused.message:
            return total, refused
        await asyncio.sleep(0.05)


async def test_sidecars_sharing_a_budget_spend_it_within_the_overshoot_bound(
    tmp_path: Path, nats_server: NatsServer, fake: FakeProvider, nc: NATS, usage: UsageTap
) -> None:
    async with sidecars(tmp_path, nats_server, fake, SHARED, 3) as running:
        clients = [client(s) for s in running for _ in range(3)]  # three callers per sidecar
        results = await asyncio.gather(*(spend_until_spent(c) for c in clients))
        answered = sum(done for done, _ in results)
        await wait_until(
            lambda: sum(r.outcome == "ok" for r in usage.records) == answered, what="records"
        )
    spent = sum((r.cost_usd or D(0) for r in usage.records), D(0))
    # At most one safe share per sidecar over; at most one request's worth each left over.
    assert LIMIT - 3 * WORST_CASE <= spent <= LIMIT + 3 * SAFE_SHARE
    # Every sidecar handed its slice back on shutdown: the owner's books match the records.
    owner = QuotaOwner(await open_bucket(nc.jetstream()))
    month = period_key("month", time.time())
    account = await owner.account("team-monthly", "tenant", "acme", month)
    assert account is not None
    assert (account.holders, account.committed()) == ({}, spent)


async def test_an_enforced_budget_answers_429_insufficient_quota_in_openai_format(
    tmp_path: Path, nats_server: NatsServer, fake: FakeProvider
) -> None:
    async with sidecars(tmp_path, nats_server, fake, SHARED, 1) as [sidecar]:
        _, denied = await spend_until_spent(client(sidecar))
    assert denied.status_code == 429
    assert (denied.type, denied.code) == ("insufficient_quota", "budget_exceeded")
    headers = denied.response.headers
    assert 0 < int(headers["retry-after"]) <= 31 * 86_400  # until the month is over
    assert headers["x-sidegate-budget"] == "team-monthly"
    assert headers["x-sidegate-budget-limit"] == "0.02"
    assert D(headers["x-sidegate-budget-remaining"]) < WORST_CASE


SHADOW = """
rules:
  - name: team
    budgets:
      - {name: trial, scope: tenant, limit_usd: "0.001", lease_usd: "0.001",
         safe_share_usd: "0.001", mode: shadow}
"""


async def test_a_shadow_budget_records_would_deny_and_serves_every_request(
    tmp_path: Path, nats_server: NatsServer, fake: FakeProvider, usage: UsageTap
) -> None:
    async with sidecars(tmp_path, nats_server, fake, SHADOW, 1) as [sidecar]:
        ask = client(sidecar).chat.completions.with_raw_response
        for _ in range(8):
            answer = await ask.create(model="gpt-4o", messages=HELLO, max_tokens=50)
            assert answer.status_code == 200
            assert "x-sidegate-budget" not in answer.headers
        await wait_until(lambda: len(usage.records) == 8, what="records")
    decisions = [d for r in usage.records for d in r.decisions]
    assert decisions, "the budget never would have denied"
    assert {(d.stage, d.rule, d.mode, d.outcome) for d in decisions} == {
        ("budget", "team", "shadow", "would_deny")
    }


async def test_without_the_quota_owner_the_safe_share_is_spent_then_requests_are_denied(
    tmp_path: Path, fake: FakeProvider
) -> None:
    async with offline_sidecar(tmp_path, fake) as sidecar:
        done, refused = await until_denied(client(sidecar))
        [account] = sidecar.app[BUDGETS].accounts()
    assert refused.code == "budget_exceeded"
    assert "until the quota owner answers" in refused.message
    assert done >= 1
    assert account.granted == 0
    # Reserved without a lease: as much of the safe share as whole requests could take.
    assert SAFE_SHARE - WORST_CASE < account.unleased <= SAFE_SHARE
    assert 0 < account.spent <= account.unleased


async def test_the_sidecar_exports_the_budget_left_and_its_lease_requests(
    tmp_path: Path, fake: FakeProvider
) -> None:
    async with offline_sidecar(tmp_path, fake) as sidecar:
        await client(sidecar).chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=50)
        await wait_until(lambda: bool(sidecar.app[BUDGETS].results), what="a lease attempt")
        async with aiohttp.ClientSession() as http, http.get(f"{sidecar.url}/metrics") as resp:
            text = await resp.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    left = samples[("sidegate_budget_remaining_usd", (("budget", "team-monthly"),))]
    assert float(LIMIT - WORST_CASE) < left < float(LIMIT)
    assert samples[("sidegate_budget_lease_requests_total", (("result", "unreachable"),))] >= 1
    assert "acme" not in text  # scope values are never labels


@asynccontextmanager
async def offline_sidecar(tmp_path: Path, fake: FakeProvider) -> AsyncIterator[RunningSidecar]:
    """A sidecar whose NATS never answers, enforcing SHARED from its persisted bundle."""
    keys = generate_keypair(tmp_path / "keys")
    bundle = compiled(tmp_path / "policy", SHARED, base_url=f"{fake.url}/v1").bundle
    public = keys.public_key.read_text().strip()
    settings = sidecar_settings(tmp_path / "state", public, f"nats://127.0.0.1:{free_port()}", "x")
    settings.bundle_path.parent.mkdir(parents=True)
    envelope = sign(encode_bundle(bundle), load_signing_key(keys.signing_key))
    settings.bundle_path.write_bytes(encode_envelope(envelope))
    async with running_sidecar(settings) as sidecar:
        yield sidecar

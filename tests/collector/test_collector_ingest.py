"""Batch decoding: the fast Arrow path declines or agrees exactly with the per-record path."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from collector.columns import SCHEMA
from collector.ingest import exact_prepare, fast_table, prepare
from collector.record import Decision, UsageRecord, record_encoder


def varied(n: int, seed: int = 7) -> list[UsageRecord]:
    """Records exercising every column type: text with accents and quotes, random floats,
    costs to the picodollar, decisions, optional fields set and unset."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        decisions = (
            [Decision(stage="caps", rule=f"r{i}", mode="warn", outcome="would_deny", reason='é"\\')]
            if i % 3 == 0
            else []
        )
        out.append(
            UsageRecord(
                id=f"{rnd.getrandbits(128):032x}",
                ts_ms=1_740_787_200_000 + rnd.randrange(10**9),
                tenant=rnd.choice(["acme", "globex", "ünïcødé", 'q"uote', "tab\there"]),
                user="" if i % 2 else f"user-{i}",
                stream=bool(i % 2),
                input_tokens=rnd.randrange(10**6),
                output_tokens=rnd.randrange(10**5),
                cached_input_tokens=rnd.randrange(100),
                reasoning_tokens=rnd.randrange(100),
                token_source=rnd.choice(["provider", "estimated", "none"]),
                cost_usd=None if i % 5 == 0 else Decimal(rnd.randrange(10**9)).scaleb(-12),
                outcome=rnd.choice(["ok", "error", "denied"]),
                error_class=None if i % 4 else "upstream_error",
                latency_ms=rnd.random() * 10 ** rnd.randrange(6),
                ttft_ms=None if i % 2 else rnd.random() * 1000,
                retries=rnd.randrange(3),
                decisions=decisions,
            )
        )
    return out


def payloads(records: list[UsageRecord]) -> list[bytes]:
    return [record_encoder.encode(r) for r in records]


ODD = [
    b'{"id":"a","ts_ms":1,"tenant":5}',
    b'{"id":"a","ts_ms":1,"input_tokens":1.0}',
    b'{"id":"a","ts_ms":"1"}',
    b'{"id":"a","ts_ms":1,"stream":1}',
    b'{"id":"a","ts_ms":1,"cost_usd":"0.0000000000125"}',
    b'{"id":"a","ts_ms":1,"cost_usd":"NaN"}',
    b'{"id":"a","ts_ms":99999999999999999999}',
    b'{"id":"\\ud800","ts_ms":1}',
    b'{"id":"\xff\xfe","ts_ms":1}',
    b'{"id":"a","id":"b","ts_ms":1}',
    b'{"id":"a","ts_ms":1,"decisions":[{"stage":"s"}]}',
    b'{"id":"a","ts_ms":1,"decisions":[{"stage":"s","rule":"r","mode":"m","outcome":"no",'
    b'"reason":"x"}]}',
    b'{"id":"a","ts_ms":1,"outcome":"weird"}',
    b'{"id":"a","ts_ms":1,"tenant":null}',
    b'{"id":"a","ts_ms":1,"cost_usd":null}',
    b'{"id":"","ts_ms":1}',
    b'{"ts_ms":1}',
    b'{"id":"a"}',
    b'{"id":"a","ts_ms":1}{"id":"b","ts_ms":2}',
    b"",
    b"   ",
    b"[1]",
    b'{"id":"a","ts_ms":1,"latency_ms":1e400}',
    b'{"id":"a","ts_ms":1,\n"tenant":"x"}',
    b'{"id":"a","ts_ms":1,"foo":{"bar":[null]}}',
    b'{"id":"a","ts_ms":1,"cost_usd":0.1,"latency_ms":3}',
    b'{"id":"a","ts_ms":1} ',
]


def test_the_fast_path_reads_well_formed_records_exactly_as_the_contract_decoder() -> None:
    batch = payloads(varied(500))
    fast = fast_table(batch)
    exact = exact_prepare(batch)
    assert exact.dead == []
    assert fast is not None, "well-formed records should not need the slow path"
    assert fast.equals(exact.table)
    assert fast.schema == SCHEMA


@pytest.mark.parametrize("odd", ODD, ids=range(len(ODD)))
def test_the_fast_path_declines_or_agrees_on_an_odd_payload(odd: bytes) -> None:
    batch = [*payloads(varied(5)), odd, *payloads(varied(5, seed=8))]
    fast = fast_table(batch)
    exact = exact_prepare(batch)
    if exact.dead:
        assert fast is None, f"fast path accepted what the contract rejects: {exact.dead}"
    elif fast is not None:
        assert fast.equals(exact.table)


def test_a_bad_record_is_named_and_its_batch_neighbours_stored() -> None:
    batch = [*payloads(varied(3)), b'{"id":"a","ts_ms":1,"outcome":"weird"}']
    prepared = prepare(batch)
    assert prepared.table.num_rows == 3
    assert [(i, reason.split(":")[0]) for i, reason in prepared.dead] == [(3, "undecodable")]


def test_invalid_utf8_is_dead_lettered_not_raised() -> None:
    prepared = prepare([b'{"id":"\xff","ts_ms":1}'])
    assert prepared.table.num_rows == 0
    assert prepared.dead[0][1].startswith("undecodable:")


def test_records_older_than_the_raw_retention_are_dead_lettered_as_expired() -> None:
    old, new = varied(2)
    old.ts_ms, new.ts_ms = 1_000, 5_000
    prepared = prepare(payloads([old, new]), min_ts_ms=2_000)
    assert prepared.table.column("id").to_pylist() == [new.id]
    assert prepared.dead == [(0, "expired: older than the raw retention (ts_ms < 2000)")]


def test_end_ms_is_the_request_start_plus_its_latency_rounded_up() -> None:
    (r,) = varied(1)
    r.ts_ms, r.latency_ms = 1_000, 2.25
    table = prepare(payloads([r])).table
    assert table.column("end_ms").to_pylist() == [1_003]

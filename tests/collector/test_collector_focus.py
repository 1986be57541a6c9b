"""FinOps FOCUS charges: specification columns, exact costs, list prices, CSV and Parquet."""

from __future__ import annotations

import csv
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from collector.focus import write_focus
from collector.prices import list_price, refresh_list_prices
from collector.record import UsageRecord
from collector.store import Store

MakeRecord = Callable[..., UsageRecord]
DAY_MS = 86_400_000
MARCH_1 = 1_740_787_200_000

# The columns FOCUS 1.x requires of every charge row that applies to usage-based billing.
FOCUS_COLUMNS = {
    "BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "BillingCurrency",
    "BillingAccountId", "BillingAccountName", "BillingPeriodStart", "BillingPeriodEnd",
    "ChargePeriodStart", "ChargePeriodEnd", "ChargeCategory", "ChargeClass", "ChargeFrequency",
    "ChargeDescription", "ConsumedQuantity", "ConsumedUnit", "PricingQuantity", "PricingUnit",
    "PricingCategory", "ListUnitPrice", "ContractedUnitPrice", "ProviderName", "PublisherName",
    "InvoiceIssuerName", "ServiceCategory", "ServiceName", "ResourceId", "ResourceName",
    "RegionId", "RegionName", "SkuId", "SkuPriceId", "SkuMeter", "SubAccountId",
    "SubAccountName", "Tags", "CommitmentDiscountId", "CommitmentDiscountStatus",
}  # fmt: skip


@pytest.fixture
def charged(store: Store, make_record: MakeRecord) -> Store:
    base = {
        "tenant": "acme", "app": "chat", "endpoint": "faq", "environment": "prod",
        "provider": "upstream", "provider_kind": "openai", "deployment": "upstream/gpt-4o-mini",
        "model_resolved": "gpt-4o-mini", "token_source": "provider",
    }  # fmt: skip
    store.insert(
        [
            make_record(1, **base, input_tokens=1000, cached_input_tokens=200, output_tokens=100,
                        cost_usd=Decimal("0.000345")),
            make_record(2, **base, input_tokens=500, output_tokens=50, cost_usd=Decimal("0.0001")),
            make_record(3, **{**base, "tenant": "globex"}, input_tokens=10, output_tokens=1,
                        cost_usd=Decimal("0.000002")),
            make_record(4, **{**base, "deployment": "upstream/unknown-model-x"},
                        input_tokens=7, output_tokens=3, cost_usd=None),
            make_record(5, tenant="acme", outcome="denied", error_class="permission"),
        ]
    )  # fmt: skip
    with store.cursor() as cur:
        refresh_list_prices(cur)
    return store


def rows(store: Store) -> list[dict[str, object]]:
    with store.cursor() as cur:
        found = cur.execute(
            "SELECT * EXCLUDE (BillingPeriodStart, BillingPeriodEnd, ChargePeriodStart, "
            "ChargePeriodEnd) FROM focus_charges ORDER BY SubAccountId, SkuId"
        )
        names = [d[0] for d in found.description or []]
        return [dict(zip(names, r, strict=True)) for r in found.fetchall()]


def test_a_charge_row_per_day_tenant_app_endpoint_and_deployment(charged: Store) -> None:
    found = rows(charged)
    assert [(r["SubAccountId"], r["SkuId"], r["x_Requests"]) for r in found] == [
        ("acme", "upstream/gpt-4o-mini", 2),
        ("acme", "upstream/unknown-model-x", 1),
        ("globex", "upstream/gpt-4o-mini", 1),
    ]  # the denied request reached no deployment: no charge
    acme = found[0]
    assert acme["BilledCost"] == acme["EffectiveCost"] == Decimal("0.000445")
    assert acme["ConsumedQuantity"] == 1650 and acme["ConsumedUnit"] == "Tokens"
    assert (acme["x_InputTokens"], acme["x_CachedInputTokens"]) == (1500, 200)
    assert acme["ChargeCategory"] == "Usage" and acme["ProviderName"] == "OpenAI"
    assert acme["Tags"] == '{"app":"chat","endpoint":"faq","environment":"prod"}'


def test_list_cost_prices_each_token_class_at_the_public_rate(charged: Store) -> None:
    price = list_price("openai", "gpt-4o-mini")
    assert price is not None
    acme = rows(charged)[0]
    expected = (
        1300 * price.input_usd + 200 * price.cached_input_usd + 150 * price.output_usd
    ).quantize(Decimal("1e-12"))
    assert acme["ListCost"] == expected
    unknown = rows(charged)[1]
    assert unknown["ListCost"] == unknown["BilledCost"] == 0
    assert unknown["x_UnpricedRequests"] == 1


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_the_export_carries_every_focus_column(charged: Store, tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"focus.{fmt}"
    with charged.cursor() as cur:
        written = write_focus(cur, path, fmt, MARCH_1, MARCH_1 + DAY_MS)  # type: ignore[arg-type]
    assert written == 3
    if fmt == "csv":
        with path.open() as f:
            header = next(csv.reader(f))
    else:
        header = [c[0] for c in duckdb.sql(f"DESCRIBE SELECT * FROM '{path}'").fetchall()]
    assert set(header) >= FOCUS_COLUMNS
    custom = [c for c in header if c not in FOCUS_COLUMNS and not c.startswith("x_")]
    assert set(custom) <= {"ServiceSubcategory", "ResourceType", "AvailabilityZone",
                           "CommitmentDiscountCategory", "CommitmentDiscountName",
                           "CommitmentDiscountType"}  # fmt: skip


def test_a_model_unknown_to_the_price_data_is_looked_up_once(charged: Store) -> None:
    with charged.cursor() as cur:
        assert refresh_list_prices(cur) == 0
        unknown = cur.execute(
            "SELECT input_usd, source FROM list_prices WHERE model = 'unknown-model-x'"
        ).fetchall()
    assert unknown == [(None, "")]

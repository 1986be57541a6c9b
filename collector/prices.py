"""Public list prices per deployment, from genai-prices, kept in the `list_prices` table.

The sidecar records what a request cost at the rates it was given (negotiated rates included).
FinOps also asks what the same tokens would cost at list price (FOCUS ListCost), and the top
movers report splits a group's spend into prompt and output parts by the list rates of each
token class. Both read this table: one row per (provider kind, upstream model) ever seen,
looked up once; a model genai-prices does not know gets a row with NULL rates, so it is not
looked up again.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

import duckdb
import genai_prices
import msgspec

from collector.schema import DAILY, PRICES, TABLE

# Which genai-prices providers price a Sidegate provider kind, in the order to try.
GENAI_PROVIDERS: Final[dict[str, tuple[str, ...]]] = {
    "openai": ("openai",),
    "openai_compatible": ("openai",),
    "azure": ("azure", "openai"),
    "anthropic": ("anthropic",),
    "gemini": ("google",),
    "bedrock": ("aws",),
}
SOURCE: Final = f"genai-prices@{genai_prices.__version__}"
_MILLION: Final = Decimal(1_000_000)
_UPSTREAM_MODEL: Final = "substr(deployment, strpos(deployment, '/') + 1)"


class ListPrice(msgspec.Struct, frozen=True):
    """USD per token of each class; cached and cache-write fall back to the input rate."""

    input_usd: Decimal
    cached_input_usd: Decimal
    cache_write_usd: Decimal
    output_usd: Decimal


def _rate(rates: Any, name: str) -> Decimal | None:
    value = getattr(rates, name, None)
    if value is None:
        return None
    if isinstance(value, genai_prices.types.TieredPrices):
        value = value.base  # the base tier covers all but very long prompts
    return Decimal(value) / _MILLION


def list_price(kind: str, model: str, *, at: datetime | None = None) -> ListPrice | None:
    """The list price of `model` served by a `kind` provider, or None when unknown."""
    when = at or datetime.now(tz=UTC)
    for provider_id in GENAI_PROVIDERS.get(kind, ()):
        try:
            found = genai_prices.calc_price(
                genai_prices.Usage(), model, provider_id=provider_id, genai_request_timestamp=when
            )
        except LookupError:
            continue
        rates = found.model_price
        inp = _rate(rates, "input_mtok")
        if inp is None:
            continue
        return ListPrice(
            input_usd=inp,
            cached_input_usd=_rate(rates, "cache_read_mtok") or inp,
            cache_write_usd=_rate(rates, "cache_write_mtok") or inp,
            output_usd=_rate(rates, "output_mtok") or Decimal(0),
        )
    return None


def refresh_list_prices(conn: duckdb.DuckDBPyConnection) -> int:
    """Look up every deployment not yet in `list_prices`; returns how many were added."""
    missing = conn.execute(
        f"""SELECT DISTINCT provider_kind, model FROM (
            SELECT provider_kind, {_UPSTREAM_MODEL} AS model FROM {TABLE} WHERE deployment <> ''
            UNION SELECT provider_kind, {_UPSTREAM_MODEL} FROM {DAILY} WHERE deployment <> ''
        ) m ANTI JOIN {PRICES} p USING (provider_kind, model)"""
    ).fetchall()
    rows = []
    for kind, model in missing:
        price = list_price(kind, model)
        if price is None:
            rows.append((kind, model, None, None, None, None, ""))
        else:
            rows.append((kind, model, *msgspec.structs.astuple(price), SOURCE))
    if rows:
        conn.executemany(f"INSERT OR IGNORE INTO {PRICES} VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    return len(rows)

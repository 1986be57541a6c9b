"""FinOps FOCUS 1.x export: one charge row per day, tenant, app, endpoint, environment and model.

FOCUS (the FinOps Open Cost and Usage Specification) is the column set FinOps tools ingest from
any cloud or SaaS bill. A Sidegate charge is the usage of one deployment (provider/model) on
one UTC day by one tenant's app and endpoint: SubAccountId is the tenant, SkuId the deployment,
ConsumedQuantity its tokens. BilledCost, EffectiveCost and ContractedCost are the recorded cost
(negotiated rates included); ListCost prices the same tokens at the public list price
(`list_prices`, from genai-prices), or equals BilledCost when no list price is known. Sidegate's
own measures ride along as `x_` columns, as the specification asks of custom columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal

import duckdb
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

FOCUS_VERSION: Final = "1.2"
PRICES: Final = "list_prices"
FocusFormat = Literal["csv", "parquet"]
_DAY_MS: Final = 86_400_000

# Provider kinds as the specification wants them named (ProviderName / PublisherName).
_PROVIDER_NAME: Final = """CASE g.provider_kind
        WHEN 'openai' THEN 'OpenAI' WHEN 'azure' THEN 'Microsoft'
        WHEN 'anthropic' THEN 'Anthropic' WHEN 'gemini' THEN 'Google'
        WHEN 'bedrock' THEN 'Amazon Web Services' ELSE g.provider END"""

# The price a list-priced token class pays per token, times the tokens of that class.
_LIST_COST: Final = """(
        GREATEST(g.input_tokens - g.cached_input_tokens - g.cache_write_tokens, 0) * p.input_usd
        + g.cached_input_tokens * p.cached_input_usd
        + g.cache_write_tokens * p.cache_write_usd
        + g.output_tokens * p.output_usd)"""

FOCUS_VIEW: Final = f"""CREATE OR REPLACE VIEW focus_charges AS
    WITH g AS (
        SELECT day, tenant, app, endpoint, environment, model, provider, provider_kind,
            deployment, substr(deployment, strpos(deployment, '/') + 1) AS upstream_model,
            SUM(requests) AS requests, COALESCE(SUM(spend_usd), 0) AS spend_usd,
            SUM(input_tokens) AS input_tokens, SUM(output_tokens) AS output_tokens,
            SUM(cached_input_tokens) AS cached_input_tokens,
            SUM(cache_write_tokens) AS cache_write_tokens,
            SUM(reasoning_tokens) AS reasoning_tokens,
            SUM(unpriced) AS unpriced, SUM(errors) AS errors
        FROM usage_facts
        WHERE deployment <> ''
        GROUP BY ALL
    )
    SELECT
        CAST(g.spend_usd AS DECIMAL(38, 12)) AS BilledCost,
        CAST(g.spend_usd AS DECIMAL(38, 12)) AS EffectiveCost,
        CAST(COALESCE({_LIST_COST}, g.spend_usd) AS DECIMAL(38, 12)) AS ListCost,
        CAST(g.spend_usd AS DECIMAL(38, 12)) AS ContractedCost,
        'USD' AS BillingCurrency,
        g.provider AS BillingAccountId,
        g.provider AS BillingAccountName,
        date_trunc('month', g.day)::TIMESTAMP AS BillingPeriodStart,
        (date_trunc('month', g.day) + INTERVAL 1 MONTH)::TIMESTAMP AS BillingPeriodEnd,
        g.day::TIMESTAMP AS ChargePeriodStart,
        (g.day + INTERVAL 1 DAY)::TIMESTAMP AS ChargePeriodEnd,
        'Usage' AS ChargeCategory,
        NULL::VARCHAR AS ChargeClass,
        'Usage-Based' AS ChargeFrequency,
        printf('%d requests to %s for %s/%s', g.requests, g.model, g.tenant, g.app)
            AS ChargeDescription,
        CAST(g.input_tokens + g.output_tokens AS DECIMAL(38, 0)) AS ConsumedQuantity,
        'Tokens' AS ConsumedUnit,
        CAST((g.input_tokens + g.output_tokens) / 1e6 AS DECIMAL(38, 6)) AS PricingQuantity,
        '1M Tokens' AS PricingUnit,
        'Standard' AS PricingCategory,
        NULL::DECIMAL(38, 12) AS ListUnitPrice,
        NULL::DECIMAL(38, 12) AS ContractedUnitPrice,
        {_PROVIDER_NAME} AS ProviderName,
        {_PROVIDER_NAME} AS PublisherName,
        {_PROVIDER_NAME} AS InvoiceIssuerName,
        'AI and Machine Learning' AS ServiceCategory,
        'Generative AI' AS ServiceSubcategory,
        g.provider_kind AS ServiceName,
        g.deployment AS ResourceId,
        g.model AS ResourceName,
        'Model' AS ResourceType,
        NULL::VARCHAR AS RegionId,
        NULL::VARCHAR AS RegionName,
        NULL::VARCHAR AS AvailabilityZone,
        g.deployment AS SkuId,
        g.deployment AS SkuPriceId,
        'Tokens' AS SkuMeter,
        g.tenant AS SubAccountId,
        g.tenant AS SubAccountName,
        json_object('app', g.app, 'endpoint', g.endpoint, 'environment', g.environment)::VARCHAR
            AS Tags,
        NULL::VARCHAR AS CommitmentDiscountCategory,
        NULL::VARCHAR AS CommitmentDiscountId,
        NULL::VARCHAR AS CommitmentDiscountName,
        NULL::VARCHAR AS CommitmentDiscountStatus,
        NULL::VARCHAR AS CommitmentDiscountType,
        g.app AS x_App,
        g.endpoint AS x_Endpoint,
        g.environment AS x_Environment,
        g.model AS x_Model,
        g.requests AS x_Requests,
        g.input_tokens AS x_InputTokens,
        g.cached_input_tokens AS x_CachedInputTokens,
        g.cache_write_tokens AS x_CacheWriteTokens,
        g.output_tokens AS x_OutputTokens,
        g.reasoning_tokens AS x_ReasoningTokens,
        g.errors AS x_ErrorRequests,
        g.unpriced AS x_UnpricedRequests,
        p.source AS x_ListPriceSource
    FROM g LEFT JOIN {{prices}} p
        ON p.provider_kind = g.provider_kind AND p.model = g.upstream_model"""

_SELECT: Final = (
    "SELECT * FROM focus_charges "
    "WHERE ChargePeriodStart >= epoch_ms($since)::TIMESTAMP "
    "AND ChargePeriodStart < epoch_ms($until)::TIMESTAMP "
    "ORDER BY ChargePeriodStart, SubAccountId, x_App, x_Endpoint, SkuId, x_Environment"
)


def focus_relation(
    conn: duckdb.DuckDBPyConnection, since_ms: int, until_ms: int
) -> duckdb.DuckDBPyRelation:
    """The FOCUS rows of every UTC day starting in [since, until), since widened to midnight."""
    start = since_ms // _DAY_MS * _DAY_MS
    return conn.sql(_SELECT, params={"since": start, "until": until_ms})


def write_focus(
    conn: duckdb.DuckDBPyConnection, path: Path, fmt: FocusFormat, since_ms: int, until_ms: int
) -> int:
    """Write the FOCUS rows as CSV or Parquet to `path`, atomically; returns the row count."""
    table = focus_relation(conn, since_ms, until_ms).to_arrow_table()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if fmt == "csv":
        pacsv.write_csv(table, tmp)
    else:
        pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)
    return int(table.num_rows)

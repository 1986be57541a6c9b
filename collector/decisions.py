"""The policy decisions report: requests denied, or that would have been, by stage, rule and mode.

Warn and shadow modes exist to answer "what would this rule deny if we enforced it?"; this
report is that answer, over the same time range, groups and filters as the usage report.
"""

from __future__ import annotations

import csv
import io
from typing import Any, Final

import duckdb
import msgspec

from collector.render import Format, table_lines, title
from collector.report import BUCKET_SQL, GROUP_SQL, ReportQuery, where_clause

# Outcomes worth a report line; "modified" (a clamp, a redaction) is not a denial.
_REPORTED: Final = ("denied", "would_deny")
_FIELDS: Final = ("stage", "rule", "mode", "decision")


class DecisionRow(msgspec.Struct, kw_only=True):
    group: dict[str, str]
    bucket: str | None = None
    stage: str
    rule: str
    mode: str  # enforce | warn | shadow
    decision: str  # denied | would_deny
    requests: int


class DecisionsResult(msgspec.Struct, kw_only=True):
    query: ReportQuery
    rows: list[DecisionRow]
    total_requests: int  # decisions counted; a request with two decisions counts twice


decisions_encoder = msgspec.json.Encoder()
decisions_decoder = msgspec.json.Decoder(DecisionsResult)


def build_decisions(conn: duckdb.DuckDBPyConnection, query: ReportQuery) -> DecisionsResult:
    """Count denied and would-deny decisions per group, bucket, stage, rule and mode."""
    groups = [f"{GROUP_SQL[name]} AS g{i}" for i, name in enumerate(query.group_by)]
    bucket = BUCKET_SQL[query.bucket] if query.bucket else "NULL::VARCHAR"
    select = [
        f"{bucket} AS bucket",
        *groups,
        "d.stage",
        "d.rule",
        "d.mode",
        "d.outcome",
        "COUNT(*) AS requests",
    ]
    order = ["bucket", "requests DESC", *(f"g{i}" for i in range(len(groups)))]
    order += ["d.stage", "d.rule", "d.mode", "d.outcome"]
    where, params = where_clause(query)
    placeholders = ", ".join("?" for _ in _REPORTED)
    sql = (
        f"SELECT {', '.join(select)} "
        f"FROM (SELECT *, UNNEST(decisions) AS d FROM usage WHERE {where}) "
        f"WHERE d.outcome IN ({placeholders}) "
        f"GROUP BY ALL ORDER BY {', '.join(order)}"
    )
    rows = [_row(query, v) for v in conn.execute(sql, [*params, *_REPORTED]).fetchall()]
    return DecisionsResult(query=query, rows=rows, total_requests=sum(r.requests for r in rows))


def _row(query: ReportQuery, values: tuple[Any, ...]) -> DecisionRow:
    n = len(query.group_by)
    stage, rule, mode, decision, requests = values[1 + n :]
    return DecisionRow(
        group={name: str(v) for name, v in zip(query.group_by, values[1 : 1 + n], strict=True)},
        bucket=values[0],
        stage=stage,
        rule=rule,
        mode=mode,
        decision=decision,
        requests=int(requests),
    )


def render_decisions(result: DecisionsResult, fmt: Format) -> str:
    if fmt == "json":
        return msgspec.json.format(decisions_encoder.encode(result), indent=2).decode() + "\n"
    keys = ([result.query.bucket] if result.query.bucket else []) + list(result.query.group_by)
    headers = [*keys, *_FIELDS, "requests"]
    cells = [
        [*_keys(result, row), row.stage, row.rule, row.mode, row.decision, str(row.requests)]
        for row in result.rows
    ]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(headers)
        writer.writerows(cells)
        return out.getvalue()
    total = ["TOTAL", *[""] * (len(headers) - 2), f"{result.total_requests:,}"]
    table = [[*c[:-1], f"{int(c[-1]):,}"] for c in cells]
    lines = table_lines(
        title("decisions", result.query), headers, table, total, left=len(headers) - 1
    )
    return "\n".join(lines) + "\n"


def _keys(result: DecisionsResult, row: DecisionRow) -> list[str]:
    bucket = [row.bucket or ""] if result.query.bucket else []
    return bucket + [row.group.get(name, "") for name in result.query.group_by]

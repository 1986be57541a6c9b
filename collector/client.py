"""Where `sidegate report` gets its answers: a running collector over HTTP, else the DuckDB file.

While a collector runs it holds the DuckDB file and no other process may open it, so the
report asks the collector (found through `.sidegate/collector.json`); when none runs, the file
is opened read-only. Failures come back as messages for the person at the terminal.
"""

from __future__ import annotations

import json
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import msgspec

from collector.decisions import DecisionsResult, build_decisions, decisions_decoder
from collector.export import FILE_NAME, ExportPlan, export_parquet, install_day, plan_decoder
from collector.focus import FocusFormat, write_focus
from collector.html import SECTIONS, render_html, section_query
from collector.report import ReportQuery, ReportResult, build_report, iso_ms, report_decoder
from collector.reports import VIEWS, decode
from collector.service import read_info
from collector.store import Store, StoreError

_T = TypeVar("_T")
_TIMEOUT_S = 120.0


class Source(msgspec.Struct, frozen=True):
    """One place to ask: a collector's base URL or a DuckDB file."""

    url: str | None = None
    db: str | None = None


def locate(*, collector: str | None, db: str | None, state_dir: Path) -> list[Source] | str:
    """The places to try, in order, or a message when there is nowhere to look."""
    if collector:
        return [Source(url=collector)]
    if db:
        return [Source(db=db)]
    info = read_info(state_dir)
    found = [Source(url=info.url)] if info is not None else []
    path = Path(info.db) if info is not None else state_dir / "usage.duckdb"
    if path.exists():
        found.append(Source(db=str(path)))
    if not found:
        return (
            f"no running collector ({state_dir / 'collector.json'} not found) and no database "
            f"at {path}; start `sidegate up` or `sidegate collector` here, or pass --db/--collector"
        )
    return found


def ask(
    sources: Sequence[Source],
    *,
    http: Callable[[str], _T | str],
    file: Callable[[Path], _T | str],
) -> _T | str:
    """The first answer from `sources`; a collector that cannot answer hands over to the file."""
    answer: _T | str = "nowhere to ask"
    for i, source in enumerate(sources):
        answer = http(source.url) if source.url else file(Path(source.db or ""))
        if not isinstance(answer, str):
            return answer
        if i + 1 < len(sources):
            print(f"sidegate report: {answer}; reading the database instead", file=sys.stderr)
    return answer


def report(sources: Sequence[Source], query: ReportQuery) -> ReportResult | str:
    return ask(
        sources,
        http=lambda url: _decoded(get(url, "/v1/report", _params(query)), report_decoder),
        file=lambda path: with_store(path, lambda cur: build_report(cur, query)),
    )


def decisions(sources: Sequence[Source], query: ReportQuery) -> DecisionsResult | str:
    return ask(
        sources,
        http=lambda url: _decoded(get(url, "/v1/decisions", _params(query)), decisions_decoder),
        file=lambda path: with_store(path, lambda cur: build_decisions(cur, query)),
    )


def view(sources: Sequence[Source], name: str, query: ReportQuery) -> Any:
    """One report view's typed result (see reports.VIEWS), or a message saying why not."""
    spec = VIEWS[name]
    return ask(
        sources,
        http=lambda url: _decoded_view(get(url, f"/v1/view/{name}", _params(query)), name),
        file=lambda path: with_store(path, lambda cur: spec.build(cur, query)),
    )


class Page(msgspec.Struct, frozen=True):
    html: str


def html_report(sources: Sequence[Source], query: ReportQuery) -> Page | str:
    """The self-contained HTML page of every view over `query`'s range and filters."""
    results: dict[str, Any] = {}
    for section, name, groups, bucket in SECTIONS:
        found = view(sources, name, section_query(query, groups, bucket))
        if isinstance(found, str):
            return found
        results[section] = found
    return Page(render_html(query, results))


def focus(sources: Sequence[Source], query: ReportQuery, out: Path, fmt: FocusFormat) -> int | str:
    """FOCUS charges of the range into the file `out`; returns the rows written."""

    def over_http(url: str) -> int | str:
        params = [p for p in _params(query) if p[0] != "format"]
        body = get(url, "/v1/export/focus", [*params, ("format", fmt)])
        if isinstance(body, str):
            return body
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_bytes(body)
        tmp.replace(out)
        with duckdb.connect() as conn:
            reader = "read_csv" if fmt == "csv" else "read_parquet"
            row = conn.execute(f"SELECT count(*) FROM {reader}(?)", [str(out)]).fetchone()
        return int(row[0]) if row else 0

    return ask(
        sources,
        http=over_http,
        file=lambda path: with_store(
            path, lambda cur: write_focus(cur, out, fmt, query.since_ms, query.until_ms)
        ),
    )


def export(sources: Sequence[Source], query: ReportQuery, out_dir: Path) -> ExportPlan | str:
    """Parquet files per UTC day into `out_dir`, from whichever source answers."""
    return ask(
        sources,
        http=lambda url: _export_over_http(url, query, out_dir),
        file=lambda path: with_store(
            path, lambda cur: export_parquet(cur, out_dir, query.since_ms, query.until_ms)
        ),
    )


def with_store(path: Path, fn: Callable[[duckdb.DuckDBPyConnection], _T]) -> _T | str:
    """Run `fn` on the store at `path` opened read-only; a message when it cannot be opened."""
    if not path.exists():
        return f"no database at {path}"
    try:
        with Store.open(path, read_only=True) as store, store.cursor() as cur:
            return fn(cur)
    except duckdb.IOException as exc:
        return f"cannot open {path} (is a collector writing it? use --collector): {exc}"
    except StoreError as exc:
        return str(exc)


def get(url: str, path: str, params: Sequence[tuple[str, str]]) -> bytes | str:
    """GET from a collector; the body, or a message saying why there is none."""
    target = f"{url.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(target, timeout=_TIMEOUT_S) as response:
            body: bytes = response.read()
            return body
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {exc.code}"
        return f"collector at {url} refused: {message}"
    except (urllib.error.URLError, OSError) as exc:
        return f"no collector answering at {url} ({exc})"


def _params(query: ReportQuery) -> list[tuple[str, str]]:
    # Absolute times, so the collector answers for exactly the range this process parsed.
    params = [
        ("format", "json"),
        ("since", iso_ms(query.since_ms)),
        ("until", iso_ms(query.until_ms)),
        ("group_by", ",".join(query.group_by) or "none"),
    ]
    if query.bucket:
        params.append(("by", query.bucket))
    params.append(("top", str(query.top)))
    return params + [("filter", f"{k}={v}") for k, v in query.filters.items()]


def _decoded(body: bytes | str, decoder: msgspec.json.Decoder[_T]) -> _T | str:
    if isinstance(body, str):
        return body
    try:
        return decoder.decode(body)
    except msgspec.DecodeError as exc:
        return f"unexpected answer from the collector: {exc}"


def _decoded_view(body: bytes | str, name: str) -> Any:
    if isinstance(body, str):
        return body
    try:
        return decode(name, body)
    except msgspec.DecodeError as exc:
        return f"unexpected answer from the collector: {exc}"


def _export_over_http(url: str, query: ReportQuery, out_dir: Path) -> ExportPlan | str:
    plan = _decoded(get(url, "/v1/export/plan", _params(query)), plan_decoder)
    if isinstance(plan, str):
        return plan
    out_dir.mkdir(parents=True, exist_ok=True)
    for entry in plan.days:
        body = get(url, "/v1/export/day", [("day", entry.day)])
        if isinstance(body, str):
            return body
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export.") as scratch:
            path = Path(scratch) / FILE_NAME
            path.write_bytes(body)
            install_day(out_dir, entry.day, path)
    return plan

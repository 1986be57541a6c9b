"""The collector's HTTP routes for report views and FOCUS exports (loopback, read-only).

`GET /v1/view/<name>` answers any view of `reports.VIEWS` with the same query parameters as
`/v1/report` (since, until, group_by, by, filter, top, format); `GET /v1/export/focus` sends
the FOCUS charges of a range as CSV or Parquet bytes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import duckdb
from aiohttp import web

from collector.focus import FocusFormat, write_focus
from collector.render import CONTENT_TYPES, FORMATS, parse_format
from collector.report import QueryError, ReportQuery, parse_query
from collector.reports import VIEWS

Read = Callable[[Callable[[duckdb.DuckDBPyConnection], Any]], Awaitable[Any]]


def query_from(request: web.Request, default_group_by: str) -> ReportQuery | QueryError:
    params = request.query
    top = params.get("top", "10")
    if not top.isdigit() or not 1 <= int(top) <= 1000:
        return QueryError("top must be a whole number from 1 to 1000")
    return parse_query(
        group_by=params.get("group_by", default_group_by),
        since=params.get("since"),
        until=params.get("until"),
        by=params.get("by"),
        filters=params.getall("filter", []),
        top=int(top),
    )


def _bad(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message}, status=status)


def add_routes(router: web.UrlDispatcher, read: Read) -> None:
    """Register the view and FOCUS routes; `read` runs a function on a reader cursor."""

    async def view(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        spec = VIEWS.get(name)
        if spec is None:
            return _bad(f"no view {name!r}; choose from {', '.join(VIEWS)}", 404)
        fmt = parse_format(request.query.get("format", "json"))
        if fmt is None:
            return _bad(f"format must be one of {', '.join(FORMATS)}")
        query = query_from(request, spec.default_group_by)
        if isinstance(query, QueryError):
            return _bad(query.message)
        result = await read(lambda cur: spec.build(cur, query))
        return web.Response(text=spec.render(result, fmt), content_type=CONTENT_TYPES[fmt])

    async def focus(request: web.Request) -> web.Response:
        fmt: FocusFormat = "parquet" if request.query.get("format") == "parquet" else "csv"
        if request.query.get("format", "csv") not in ("csv", "parquet"):
            return _bad("format must be csv or parquet")
        query = query_from(request, "none")
        if isinstance(query, QueryError):
            return _bad(query.message)

        def export(cur: duckdb.DuckDBPyConnection) -> bytes:
            with tempfile.TemporaryDirectory(prefix="sidegate-focus-") as scratch:
                path = Path(scratch) / f"focus.{fmt}"
                write_focus(cur, path, fmt, query.since_ms, query.until_ms)
                return path.read_bytes()

        body = await read(export)
        kind = "text/csv" if fmt == "csv" else "application/vnd.apache.parquet"
        return web.Response(body=body, content_type=kind)

    router.add_get("/v1/view/{name}", view)
    router.add_get("/v1/export/focus", focus)

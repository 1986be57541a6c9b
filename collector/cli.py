"""`sidegate collector` and `sidegate report`: argparse registration; heavy imports run late."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collector.report import ReportQuery

DEFAULT_STATE_DIR: Final = ".sidegate"
DEFAULT_DB: Final = f"{DEFAULT_STATE_DIR}/usage.duckdb"
DEFAULT_HTTP: Final = "127.0.0.1:4002"
DEFAULT_GROUP_BY: Final = "tenant,app,endpoint,model"  # report.DEFAULT_GROUP_BY, unimported


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = sub.add_parser("collector", help="consume usage records into DuckDB and serve reports")
    c.add_argument("--nats-url", help="default: $SIDEGATE_NATS_URL or nats://127.0.0.1:4222")
    c.add_argument("--db", default=DEFAULT_DB, help=f"DuckDB file (default {DEFAULT_DB})")
    c.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="where collector.json goes")
    c.add_argument("--http", default=DEFAULT_HTTP, help=f"HOST:PORT (default {DEFAULT_HTTP})")
    c.add_argument(
        "--batch-size", type=_positive, default=1000, help="messages per fetch and commit"
    )
    c.add_argument("--durable", default="collector", help="JetStream durable consumer name")
    c.set_defaults(func=run_collector)

    r = sub.add_parser(
        "report",
        help="spend, requests, tokens and errors by tenant, app, model, ...",
        description="Without --db or --collector, asks the collector recorded in "
        "./.sidegate/collector.json, else reads ./.sidegate/usage.duckdb.",
    )
    r.add_argument("--since", help="ISO date/time or age (1h, 7d); default 24h")
    r.add_argument("--until", help="ISO date/time or age; default now")
    r.add_argument(
        "--group-by",
        default=DEFAULT_GROUP_BY,
        help=f"comma list or none (default {DEFAULT_GROUP_BY})",
    )
    r.add_argument("--by", choices=("day", "hour"), help="also bucket by UTC day or hour")
    r.add_argument("--format", choices=("table", "csv", "json"), default="table")
    r.add_argument(
        "--filter", action="append", default=[], metavar="COLUMN=VALUE", help="repeatable"
    )
    r.add_argument(
        "--decisions", action="store_true", help="list denied and would-deny policy decisions"
    )
    _add_source_options(r)
    r.set_defaults(func=run_report)

    actions = r.add_subparsers(dest="report_action", metavar="ACTION")
    e = actions.add_parser(
        "export",
        help="write raw records as Parquet, one file per UTC day (day=YYYY-MM-DD/)",
    )
    e.add_argument("--format", dest="export_format", choices=("parquet",), default="parquet")
    e.add_argument("--out", required=True, help="folder to write day=YYYY-MM-DD/ folders into")
    e.add_argument("--since", help="ISO date/time or age; default 7d (widened to whole days)")
    e.add_argument("--until", help="ISO date/time or age; default now")
    _add_source_options(e)
    e.set_defaults(func=run_export)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _add_source_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="read this DuckDB file directly (read-only)")
    p.add_argument("--collector", metavar="URL", help="ask this running collector")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help=argparse.SUPPRESS)


def run_collector(args: argparse.Namespace) -> int:
    import asyncio

    from collector.consumer import ConsumerSettings
    from collector.service import CollectorSettings, configure_logging, serve

    host, _, port = args.http.rpartition(":")
    if not host or not port.isdigit():
        print(f"sidegate collector: --http must be HOST:PORT, not {args.http!r}", file=sys.stderr)
        return 2
    nats_url = args.nats_url or os.environ.get("SIDEGATE_NATS_URL", "nats://127.0.0.1:4222")
    settings = CollectorSettings(
        db_path=args.db,
        state_dir=args.state_dir,
        http_host=host,
        http_port=int(port),
        consumer=ConsumerSettings(
            nats_url=nats_url, durable=args.durable, batch_size=args.batch_size
        ),
    )
    configure_logging()
    return asyncio.run(serve(settings))


def run_report(args: argparse.Namespace) -> int:
    from collector import client
    from collector.decisions import render_decisions
    from collector.render import render

    query = _parse(args, default_since=None)
    if isinstance(query, str):
        return _fail(query, 2)
    sources = client.locate(collector=args.collector, db=args.db, state_dir=Path(args.state_dir))
    if isinstance(sources, str):
        return _fail(sources, 1)
    if args.decisions:
        found = client.decisions(sources, query)
        if isinstance(found, str):
            return _fail(found, 1)
        sys.stdout.write(render_decisions(found, args.format))
        return 0
    result = client.report(sources, query)
    if isinstance(result, str):
        return _fail(result, 1)
    sys.stdout.write(render(result, args.format))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from collector import client

    query = _parse(args, default_since="7d")
    if isinstance(query, str):
        return _fail(query, 2)
    sources = client.locate(collector=args.collector, db=args.db, state_dir=Path(args.state_dir))
    if isinstance(sources, str):
        return _fail(sources, 1)
    plan = client.export(sources, query, Path(args.out))
    if isinstance(plan, str):
        return _fail(plan, 1)
    rows = sum(d.rows for d in plan.days)
    print(f"exported {rows:,} records in {len(plan.days)} day file(s) to {args.out}")
    return 0


def _parse(args: argparse.Namespace, *, default_since: str | None) -> ReportQuery | str:
    from collector.report import QueryError, parse_query

    query = parse_query(
        group_by=getattr(args, "group_by", "none"),
        since=args.since or default_since,
        until=args.until,
        by=getattr(args, "by", None),
        filters=getattr(args, "filter", ()),
    )
    return query.message if isinstance(query, QueryError) else query


def _fail(message: str, code: int) -> int:
    print(f"sidegate report: {message}", file=sys.stderr)
    return code

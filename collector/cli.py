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
# reports.VIEWS, unimported so `sidegate --help` stays fast; a test keeps the two in step.
VIEW_CHOICES: Final = ("usage", "latency", "errors", "efficiency", "movers", "decisions")
EXPORT_FORMATS: Final = ("parquet", "focus-csv", "focus-parquet")
REPORT_EPILOG: Final = """views:
  usage       spend, requests, tokens, errors by group (default tenant,app,endpoint,model)
  latency     p50/p95/p99 latency and time to first token (default model)
  errors      error rate and counts per error class (default provider,model)
  efficiency  cost per request, retry ratio, fallbacks, cache hit rates (default tenant,app)
  movers      groups that drove a spend change vs the previous period, split into
              requests / prompts / outputs / retries / price_mix (default tenant)
  decisions   denied and would-deny policy decisions (default tenant,app,endpoint,model)

--format html writes one self-contained page with every view and charts (to --out).
Without --db or --collector, asks the collector recorded in ./.sidegate/collector.json,
else reads ./.sidegate/usage.duckdb."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = sub.add_parser("collector", help="consume usage records into DuckDB and serve reports")
    c.add_argument("--nats-url", help="default: $SIDEGATE_NATS_URL or nats://127.0.0.1:4222")
    c.add_argument("--db", default=DEFAULT_DB, help=f"DuckDB file (default {DEFAULT_DB})")
    c.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="where collector.json goes")
    c.add_argument("--http", default=DEFAULT_HTTP, help=f"HOST:PORT (default {DEFAULT_HTTP})")
    c.add_argument(
        "--batch-size", type=_positive, default=5000, help="messages per fetch and commit"
    )
    c.add_argument("--durable", default="collector", help="JetStream durable consumer name")
    c.add_argument(
        "--ack-wait",
        type=float,
        default=30.0,
        help="seconds before an unacked batch is redelivered (set when the consumer is created)",
    )
    c.add_argument(
        "--retention-days",
        type=int,
        default=0,
        help="keep raw records this many whole UTC days, then keep daily rollups (0: forever)",
    )
    c.add_argument(
        "--snapshot-dir",
        default="",
        help="write Parquet per day and a read-only catalog.duckdb here for analysts",
    )
    c.add_argument(
        "--snapshot-interval", type=float, default=60.0, help="seconds between snapshots"
    )
    c.add_argument("--db-threads", type=int, default=0, help="DuckDB threads (0: one per core)")
    c.set_defaults(func=run_collector)

    r = sub.add_parser(
        "report",
        help="spend, latency, errors, efficiency and top movers by tenant, app, model, ...",
        epilog=REPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("--view", choices=VIEW_CHOICES, default="usage", help="default usage")
    r.add_argument("--since", help="ISO date/time or age (1h, 7d); default 24h")
    r.add_argument("--until", help="ISO date/time or age; default now")
    r.add_argument("--group-by", help="comma list or none (default: the view's)")
    r.add_argument("--by", choices=("day", "hour"), help="also bucket by UTC day or hour")
    r.add_argument("--format", choices=("table", "csv", "json", "html"), default="table")
    r.add_argument("--out", help="write to this file instead of stdout (html: report.html)")
    r.add_argument("--top", type=_positive, default=10, help="rows of the movers view")
    r.add_argument(
        "--filter", action="append", default=[], metavar="COLUMN=VALUE", help="repeatable"
    )
    r.add_argument("--decisions", action="store_true", help="the same as --view decisions")
    _add_source_options(r)
    r.set_defaults(func=run_report)

    actions = r.add_subparsers(dest="report_action", metavar="ACTION")
    e = actions.add_parser(
        "export",
        help="raw records as Parquet per UTC day, or FinOps FOCUS charges as CSV or Parquet",
    )
    e.add_argument("--format", dest="export_format", choices=EXPORT_FORMATS, default="parquet")
    e.add_argument(
        "--out",
        required=True,
        help="parquet: a folder for day=YYYY-MM-DD/ folders; focus-*: the file to write",
    )
    e.add_argument("--since", help="ISO date/time or age; default 7d (widened to whole days)")
    e.add_argument("--until", help="ISO date/time or age; default now")
    e.add_argument(
        "--filter", action="append", default=[], metavar="COLUMN=VALUE", help="repeatable"
    )
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
    from collector.jobs import JobSettings
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
            nats_url=nats_url,
            durable=args.durable,
            batch_size=args.batch_size,
            ack_wait_s=args.ack_wait,
        ),
        jobs=JobSettings(
            retention_days=max(args.retention_days, 0),
            snapshot_dir=args.snapshot_dir,
            snapshot_interval_s=args.snapshot_interval,
        ),
        db_threads=max(args.db_threads, 0),
    )
    configure_logging()
    return asyncio.run(serve(settings))


def run_report(args: argparse.Namespace) -> int:
    from collector import client
    from collector.reports import VIEWS

    name = "decisions" if args.decisions else args.view
    spec = VIEWS[name]
    query = _parse(args, default_since=None, group_by=args.group_by or spec.default_group_by)
    if isinstance(query, str):
        return _fail(query, 2)
    sources = client.locate(collector=args.collector, db=args.db, state_dir=Path(args.state_dir))
    if isinstance(sources, str):
        return _fail(sources, 1)
    if args.format == "html":
        page = client.html_report(sources, query)
        if isinstance(page, str):
            return _fail(page, 1)
        out = Path(args.out or "report.html")
        out.write_text(page.html)
        print(f"wrote {out}")
        return 0
    result = client.view(sources, name, query)
    if isinstance(result, str):
        return _fail(result, 1)
    text = spec.render(result, args.format)
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from collector import client

    query = _parse(args, default_since="7d", group_by="none")
    if isinstance(query, str):
        return _fail(query, 2)
    sources = client.locate(collector=args.collector, db=args.db, state_dir=Path(args.state_dir))
    if isinstance(sources, str):
        return _fail(sources, 1)
    if args.export_format.startswith("focus-"):
        rows = client.focus(
            sources,
            query,
            Path(args.out),
            "csv" if args.export_format == "focus-csv" else "parquet",
        )
        if isinstance(rows, str):
            return _fail(rows, 1)
        print(f"exported {rows:,} FOCUS charge rows to {args.out}")
        return 0
    plan = client.export(sources, query, Path(args.out))
    if isinstance(plan, str):
        return _fail(plan, 1)
    records = sum(d.rows for d in plan.days)
    print(f"exported {records:,} records in {len(plan.days)} day file(s) to {args.out}")
    return 0


def _parse(
    args: argparse.Namespace, *, default_since: str | None, group_by: str
) -> ReportQuery | str:
    from collector.report import QueryError, parse_query

    query = parse_query(
        group_by=group_by,
        since=args.since or default_since,
        until=args.until,
        by=getattr(args, "by", None),
        filters=getattr(args, "filter", ()),
        top=getattr(args, "top", 10),
    )
    return query.message if isinstance(query, QueryError) else query


def _fail(message: str, code: int) -> int:
    print(f"sidegate report: {message}", file=sys.stderr)
    return code

"""Report views through the running collector and `sidegate report`: same answers as the file,
the HTML page, and the FOCUS export over HTTP."""

from __future__ import annotations

import asyncio
import csv
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from xml.etree import ElementTree

import pytest

from collector.cli import VIEW_CHOICES
from collector.consumer import ConsumerSettings
from collector.record import UsageRecord
from collector.report import ReportQuery, parse_query
from collector.reports import VIEWS, decode
from collector.service import Collector, CollectorSettings
from sidegate.natsd import NatsServer

Until = Callable[..., Awaitable[None]]
Publish = Callable[..., Awaitable[None]]
MARCH = ["--since", "2025-03-01", "--until", "2025-03-03"]
SIDEGATE = (
    "import argparse, sys; from collector import cli; "
    "p = argparse.ArgumentParser(prog='sidegate'); cli.register(p.add_subparsers(required=True)); "
    "a = p.parse_args(); sys.exit(a.func(a))"
)


@pytest.fixture
async def loaded(
    nats_server: NatsServer,
    tmp_path: Path,
    publish: Publish,
    known: list[UsageRecord],
    until: Until,
) -> AsyncIterator[Collector]:
    state = tmp_path / "project" / ".sidegate"
    running = Collector(
        CollectorSettings(
            db_path=str(state / "usage.duckdb"), state_dir=str(state), http_port=0,
            consumer=ConsumerSettings(nats_url=nats_server.url, fetch_timeout_s=0.2),
        )
    )  # fmt: skip
    await running.start()
    await until(lambda: running.consumer is not None and running.consumer.ready)
    await publish(nats_server.url, known)
    store = running.store
    assert store is not None
    await until(lambda: store.count() == len(known))
    yield running
    await running.stop()


async def sidegate(cwd: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SIDEGATE, *args, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_the_cli_offers_every_view() -> None:
    assert tuple(VIEWS) == VIEW_CHOICES


@pytest.mark.parametrize("name", list(VIEWS))
async def test_each_view_from_the_running_collector_equals_the_view_from_the_file(
    loaded: Collector, tmp_path: Path, name: str
) -> None:
    code, out, err = await sidegate(tmp_path / "project", "report", "--view", name, "--format",
                                    "json", *MARCH)  # fmt: skip
    assert (code, err) == (0, "")
    query = parse_query(since="2025-03-01", until="2025-03-03",
                        group_by=VIEWS[name].default_group_by)  # fmt: skip
    assert isinstance(query, ReportQuery)
    assert loaded.store is not None
    with loaded.store.cursor() as cur:
        expected = VIEWS[name].build(cur, query)
    assert decode(name, out.encode()) == expected


async def test_the_html_report_is_one_self_contained_page_with_charts(
    loaded: Collector, tmp_path: Path
) -> None:
    out = tmp_path / "report.html"
    code, _, err = await sidegate(tmp_path / "project", "report", "--format", "html", "--out",
                                  str(out), *MARCH)  # fmt: skip
    assert (code, err) == (0, "")
    page = out.read_text()
    charts = re.findall(r"<svg.*?</svg>", page, re.S)
    assert len(charts) >= 4
    for chart in charts:  # each chart is well-formed XML, so any browser draws it
        ElementTree.fromstring(chart)
    assert "<script" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "no external asset"
    for heading in ("Spend by tenant", "Latency", "Errors by class", "Top movers", "decisions"):
        assert heading in page


async def test_the_focus_export_over_http_matches_the_file(
    loaded: Collector,
    tmp_path: Path,
    nats_server: NatsServer,
    publish: Publish,
    make_record: Callable[..., UsageRecord],
    until: Until,
) -> None:
    charged = make_record(
        90, tenant="acme", provider_kind="openai", provider="up", deployment="up/gpt-4o-mini",
        input_tokens=10, cost_usd=Decimal("0.5"),
    )  # fmt: skip
    await publish(nats_server.url, [charged])
    store = loaded.store
    assert store is not None
    await until(lambda: store.count() == 10)
    out = tmp_path / "focus.csv"
    code, stdout, err = await sidegate(tmp_path / "project", "report", "export", "--format",
                                       "focus-csv", "--out", str(out), *MARCH)  # fmt: skip
    assert (code, err) == (0, "")
    assert stdout.startswith("exported 1 FOCUS charge rows")
    (row,) = list(csv.DictReader(out.open()))
    assert (row["SubAccountId"], row["SkuId"], Decimal(row["BilledCost"])) == (
        "acme", "up/gpt-4o-mini", Decimal("0.5"),
    )  # fmt: skip


async def test_an_unknown_view_is_refused_with_the_list_of_views(loaded: Collector) -> None:
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as refused:
        await asyncio.to_thread(urllib.request.urlopen, f"{loaded.url}/v1/view/colour")
    assert refused.value.code == 404
    assert b"choose from usage, latency" in refused.value.read()

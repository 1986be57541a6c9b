"""The collector process: reports over HTTP, collector.json, and `sidegate report` finding it."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import msgspec
import pytest

from collector.consumer import ConsumerSettings
from collector.record import UsageRecord
from collector.render import render_csv, render_table
from collector.report import ReportQuery, ReportResult, build_report, parse_query, report_decoder
from collector.service import STATE_FILE, Collector, CollectorSettings, read_info
from collector.store import Store
from sidegate.natsd import NatsServer

Until = Callable[..., Awaitable[None]]
Publish = Callable[..., Awaitable[None]]

MARCH = {"since": "2025-03-01", "until": "2025-03-03"}
# The collector plane's own registration, dispatched as the `sidegate` script does; the full
# script also loads every other plane, which this folder's tests do not depend on.
SIDEGATE = (
    "import argparse, sys; from collector import cli; "
    "p = argparse.ArgumentParser(prog='sidegate'); cli.register(p.add_subparsers(required=True)); "
    "a = p.parse_args(); sys.exit(a.func(a))"
)


def march_query(group_by: str | None = None, by: str | None = None) -> ReportQuery:
    parsed = parse_query(since=MARCH["since"], until=MARCH["until"], group_by=group_by, by=by)
    assert isinstance(parsed, ReportQuery)
    return parsed


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Where `sidegate up` would run: the collector keeps its state in ./.sidegate."""
    path = tmp_path / "project"
    path.mkdir()
    return path


@pytest.fixture
async def collector(nats_server: NatsServer, folder: Path) -> AsyncIterator[Collector]:
    state = folder / ".sidegate"
    running = Collector(
        CollectorSettings(
            db_path=str(state / "usage.duckdb"),
            state_dir=str(state),
            http_port=0,
            consumer=ConsumerSettings(nats_url=nats_server.url, fetch_timeout_s=0.3),
        )
    )
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def loaded(
    collector: Collector,
    nats_server: NatsServer,
    publish: Publish,
    known: list[UsageRecord],
    until: Until,
) -> Collector:
    await until(lambda: collector.consumer is not None and collector.consumer.ready)
    await publish(nats_server.url, known)
    assert collector.store is not None
    store = collector.store
    await until(lambda: store.count() == len(known))
    return collector


async def get(url: str, **params: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url, params=params) as response:
        return response.status, await response.text()


async def sidegate(cwd: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SIDEGATE, *args, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def direct(store: Store, query: ReportQuery) -> ReportResult:
    with store.cursor() as cur:
        return build_report(cur, query)


async def test_a_report_over_http_equals_the_report_from_the_database(
    loaded: Collector, folder: Path
) -> None:
    status, body = await get(
        f"{loaded.url}/v1/report", group_by="tenant,model", by="day", format="json", **MARCH
    )
    assert status == 200
    over_http = report_decoder.decode(body)
    query = march_query(group_by="tenant,model", by="day")
    assert over_http.query == query
    await loaded.stop()
    with Store.open(folder / ".sidegate" / "usage.duckdb", read_only=True) as store:
        assert over_http == direct(store, query)


async def test_table_and_csv_over_http_match_the_local_rendering(loaded: Collector) -> None:
    assert loaded.store is not None
    expected = direct(loaded.store, march_query())
    status, table = await get(f"{loaded.url}/v1/report", format="table", **MARCH)
    assert (status, table) == (200, render_table(expected))
    status, text = await get(f"{loaded.url}/v1/report", format="csv", **MARCH)
    assert (status, text) == (200, render_csv(expected))


async def test_a_bad_report_request_gets_400_with_the_reason(collector: Collector) -> None:
    status, body = await get(f"{collector.url}/v1/report", group_by="tenant,colour")
    assert status == 400
    assert "cannot group by 'colour'" in msgspec.json.decode(body)["error"]


async def test_collector_json_names_the_http_address_and_is_removed_on_stop(
    collector: Collector, folder: Path
) -> None:
    info = read_info(folder / ".sidegate")
    assert info is not None
    assert info.url == collector.url
    assert info.db == str((folder / ".sidegate" / "usage.duckdb").resolve())
    await collector.stop()
    assert not (folder / ".sidegate" / STATE_FILE).exists()


async def test_readyz_answers_503_until_the_consumer_is_bound(
    nats_server: NatsServer, folder: Path, until: Until
) -> None:
    nats_server.stop()
    collector = Collector(
        CollectorSettings(
            db_path=str(folder / "u.duckdb"),
            state_dir=str(folder),
            http_port=0,
            consumer=ConsumerSettings(nats_url=nats_server.url, fetch_timeout_s=0.3),
        )
    )
    await collector.start()
    try:
        assert (await get(f"{collector.url}/readyz"))[0] == 503
        await asyncio.to_thread(nats_server.start)
        await until(lambda: collector.consumer is not None and collector.consumer.ready)
        assert (await get(f"{collector.url}/readyz"))[0] == 200
    finally:
        await collector.stop()


async def test_sidegate_report_in_the_folder_finds_the_running_collector(
    loaded: Collector, folder: Path
) -> None:
    # The collector holds the DuckDB file, so only an answer over HTTP can succeed here.
    code, out, err = await sidegate(folder, "report", "--format", "json", *_march_flags())
    assert (code, err) == (0, "")
    assert loaded.store is not None
    assert report_decoder.decode(out) == direct(loaded.store, march_query())


async def test_sidegate_report_reads_the_database_when_no_collector_runs(
    loaded: Collector, folder: Path
) -> None:
    assert loaded.store is not None
    expected = direct(loaded.store, march_query(group_by="model"))
    await loaded.stop()
    code, out, _ = await sidegate(folder, "report", "--group-by", "model", *_march_flags())
    assert code == 0
    assert out == render_table(expected)


async def test_sidegate_report_with_nothing_to_read_exits_with_a_clear_message(
    tmp_path: Path,
) -> None:
    code, out, err = await sidegate(tmp_path, "report")
    assert (code, out) == (1, "")
    assert "no running collector" in err
    assert "sidegate up" in err


def _march_flags() -> list[str]:
    return ["--since", MARCH["since"], "--until", MARCH["until"]]


async def test_sidegate_report_decisions_come_from_the_running_collector(
    loaded: Collector, folder: Path
) -> None:
    code, out, err = await sidegate(
        folder, "report", "--decisions", "--group-by", "tenant", "--format", "csv", *_march_flags()
    )
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "tenant,stage,rule,mode,decision,requests",
        "acme,caps,default,warn,would_deny,1",
        "globex,models,batch-cheap,enforce,denied,1",
    ]


async def test_sidegate_report_export_downloads_day_files_from_the_running_collector(
    loaded: Collector, folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "parquet"
    code, stdout, err = await sidegate(
        folder, "report", "export", "--out", str(out), *_march_flags()
    )
    assert (code, err) == (0, "")
    assert "exported 8 records in 2 day file(s)" in stdout
    await loaded.stop()
    with Store.open(folder / ".sidegate" / "usage.duckdb", read_only=True) as store:
        with store.cursor() as cur:
            expected = cur.execute(
                "SELECT * EXCLUDE (ts) FROM usage_records WHERE ts_ms >= 1740787200000 "
                "AND ts_ms < 1740960000000 ORDER BY id"
            ).fetchall()
        with store.cursor() as cur:
            exported = cur.execute(
                f"SELECT * EXCLUDE (ts) FROM read_parquet('{out}/*/*.parquet', "
                "hive_partitioning = false) ORDER BY id"
            ).fetchall()
    assert exported == expected

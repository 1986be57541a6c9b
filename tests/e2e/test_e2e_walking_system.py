"""End to end: the stack `sidegate up` runs, driven through the official openai SDK.

Every piece is a real process (nats-server, policyd, collector, fake provider, sidecar), on
random ports in a temporary folder, exactly as the quickstart starts them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import openai
import pytest

from fakeprovider.openai_api import count_chat_prompt_tokens
from sidegate.natsd import free_port
from sidegate.up import Ports, Stack, start

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def _wait(predicate: object, *, timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _ports() -> Ports:
    return Ports(sidecar=free_port(), collector=free_port(), fake=free_port(), nats=free_port())


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Stack, Ports]]:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    ports = _ports()
    running = start(tmp_path / ".sidegate", ports)
    try:
        yield running, ports
    finally:
        running.stop()


def _client(ports: Ports) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{ports.sidecar_url}/v1", api_key="any", max_retries=0)


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with duckdb.connect(str(db), read_only=True) as conn:
        return conn.execute(sql).fetchall()


def test_sdk_traffic_lands_in_duckdb_and_the_report_with_exact_tokens(
    stack: tuple[Stack, Ports],
) -> None:
    running, ports = stack
    client = _client(ports)
    headers = {"x-sidegate-tenant": "acme", "x-sidegate-endpoint": "faq"}

    plain = client.chat.completions.with_raw_response.create(
        model="fast",
        messages=CHAT,
        extra_headers=headers,  # type: ignore[arg-type]
    )
    completion = plain.parse()
    assert completion.usage is not None
    streamed = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=CHAT, stream=True,  # type: ignore[arg-type]
        extra_headers=headers,
    )  # fmt: skip
    chunks = list(streamed.parse())
    assert all(c.usage is None for c in chunks), "the usage chunk the sidecar added leaked"
    stream_text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    embedded = client.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input=["alpha", "beta gamma"], extra_headers=headers
    )
    embedding = embedded.parse()

    ids = {
        "chat": plain.headers["x-request-id"],
        "stream": streamed.headers["x-request-id"],
        "embeddings": embedded.headers["x-request-id"],
    }
    running.stop()  # the sidecar drains its usage; then DuckDB can be opened by this test
    db = running.state / "usage.duckdb"
    rows = {
        r[0]: r[1:]
        for r in _rows(
            db,
            "SELECT id, input_tokens, output_tokens, token_source, tenant, endpoint, "
            "model_requested, model_resolved, cost_usd FROM usage_records",
        )
    }
    assert set(rows) == set(ids.values())
    prompt_tokens = count_chat_prompt_tokens(CHAT)
    assert rows[ids["chat"]][:3] == (
        completion.usage.prompt_tokens, completion.usage.completion_tokens, "provider",
    )  # fmt: skip
    assert rows[ids["chat"]][5:7] == ("fast", "gpt-4o-mini")
    stream_row = rows[ids["stream"]]
    assert stream_row[0] == prompt_tokens
    assert stream_row[1] > 0 and stream_row[2] == "provider"
    assert stream_text
    assert rows[ids["embeddings"]][0] == embedding.usage.prompt_tokens
    assert all(r[3:5] == ("acme", "faq") for r in rows.values())
    assert all(r[7] is not None and r[7] > 0 for r in rows.values()), "every model is priced"

    report = subprocess.run(
        [sys.executable, "-m", "sidegate.cli", "report", "--db", str(db), "--format", "json",
         "--group-by", "tenant"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    data = json.loads(report.stdout)
    (acme,) = [row for row in data["rows"] if row["group"]["tenant"] == "acme"]
    assert acme["requests"] == 3
    expected_in = completion.usage.prompt_tokens + stream_row[0] + embedding.usage.prompt_tokens
    assert acme["input_tokens"] == expected_in


def test_a_policy_change_applies_while_the_sidecar_runs(stack: tuple[Stack, Ports]) -> None:
    running, ports = stack
    client = _client(ports)
    client.chat.completions.create(model="smart", messages=CHAT)  # type: ignore[arg-type]
    policy = running.state / "policies" / "policy.yaml"
    policy.write_text(
        policy.read_text().replace('allow: ["*"]', 'allow: ["tier:cheap", text-embedding-3-small]')
    )

    def denied() -> bool:
        try:
            client.chat.completions.create(model="smart", messages=CHAT)  # type: ignore[arg-type]
        except openai.PermissionDeniedError:
            return True
        return False

    _wait(denied, what="the edited policy to be enforced")
    client.chat.completions.create(model="fast", messages=CHAT)  # type: ignore[arg-type]


def test_a_sidecar_restarted_while_nats_is_down_enforces_the_persisted_bundle(
    stack: tuple[Stack, Ports],
) -> None:
    running, ports = stack
    assert running.nats is not None
    running.nats.stop()
    name, sidecar = next(c for c in running.children if c[0] == "sidecar")
    sidecar.kill()  # a crash, not a graceful stop: only the persisted bundle survives
    sidecar.wait(30)
    running.children.remove((name, sidecar))
    keys = running.state / "keys"
    running.spawn("sidecar", ["sidecar", "--listen", f"127.0.0.1:{ports.sidecar}"], env={
        "SIDEGATE_NATS_URL": running.nats.url,
        "SIDEGATE_STATE_DIR": str(running.state / "sidecar"),
        "SIDEGATE_PUBLIC_KEYS_FILE": str(keys / "signing.pub"),
        "SIDEGATE_TENANT": "local", "SIDEGATE_APP": "quickstart",
    })  # fmt: skip
    client = _client(ports)

    def ready() -> bool:
        try:
            return client.models.list().data is not None
        except openai.APIError:
            return False

    _wait(ready, what="the restarted sidecar to serve from its persisted bundle")
    reply = client.chat.completions.create(
        model="fast",
        messages=CHAT,
        extra_headers={"x-sidegate-endpoint": "batch"},  # type: ignore[arg-type]
    )
    assert reply.choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(
            model="smart",
            messages=CHAT,
            extra_headers={"x-sidegate-endpoint": "batch"},  # type: ignore[arg-type]
        )
    # NATS stays down, so a graceful stop would spend its whole grace period draining.
    running.children[-1][1].kill()


def test_sidegate_up_demo_prints_a_report(tmp_path: Path) -> None:
    ports = _ports()
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    result = subprocess.run(
        [sys.executable, "-m", "sidegate.cli", "up", "--demo", "--exit",
         "--dir", str(tmp_path / ".sidegate"),
         "--sidecar-port", str(ports.sidecar), "--collector-port", str(ports.collector),
         "--fake-port", str(ports.fake), "--nats-port", str(ports.nats)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Sidegate is up." in result.stdout
    assert "acme" in result.stdout and "globex" in result.stdout

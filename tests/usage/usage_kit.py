"""The usage plane as real processes, with handles to break each piece, and a steady load.

A unique module name (no package here): test modules import from it rather than from
`conftest`, which is ambiguous when several test folders are collected together.
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import duckdb

from sidegate.natsd import NatsServer, free_port
from sidegate.up import Stack, wait_for

CHAT = [{"role": "user", "content": "What is the capital of France?"}]
PROVIDER_KEY = "sk-usage-test"

POLICY = """
providers:
  openai: {{kind: openai, base_url: "{fake}/v1", credential: "env:SG_USAGE_KEY"}}
  anthropic: {{kind: anthropic, base_url: "{fake}", credential: "env:SG_USAGE_KEY"}}
models:
  gpt-4o-mini: {{tier: cheap, deployments: [{{provider: openai, model: gpt-4o-mini}}]}}
  gpt-4o: {{deployments: [{{provider: openai, model: gpt-4o}}]}}
  o3-mini: {{deployments: [{{provider: openai, model: o3-mini}}]}}
  claude-haiku-4-5: {{deployments: [{{provider: anthropic, model: claude-haiku-4-5}}]}}
aliases:
  fast: gpt-4o-mini
prices:
  gpt-4o: {{input_per_mtok: "2.50", output_per_mtok: "10.00", cached_input_per_mtok: "1.25"}}
  o3-mini: {{input_per_mtok: "1.10", output_per_mtok: "4.40", cached_input_per_mtok: "0.55"}}
  claude-haiku-4-5:
    input_per_mtok: "1.00"
    output_per_mtok: "5.00"
    cached_input_per_mtok: "0.10"
    cache_write_per_mtok: "1.25"
rules:
  - name: default
    models: {{allow: ["*"]}}
    auth: {{require_key: false}}
"""


class UsageStack:
    """nats-server, fake provider, collector, policyd and one sidecar, each its own process."""

    def __init__(self, root: Path, *, ack_wait_s: float = 1.0, batch_size: int = 100) -> None:
        self.state = root / ".sidegate"
        self.stack = Stack(self.state)
        self.sidecar_port, self.collector_port, self.fake_port = (free_port() for _ in range(3))
        self.nats = NatsServer(self.state / "nats", port=free_port())
        self.ack_wait_s = ack_wait_s
        self.batch_size = batch_size
        self.db = self.state / "usage.duckdb"

    @property
    def sidecar_url(self) -> str:
        return f"http://127.0.0.1:{self.sidecar_port}"

    @property
    def collector_url(self) -> str:
        return f"http://127.0.0.1:{self.collector_port}"

    @property
    def fake_url(self) -> str:
        return f"http://127.0.0.1:{self.fake_port}"

    def start(self) -> UsageStack:
        self.stack.nats = self.nats.start()
        keys = self.state / "keys"
        subprocess.run(
            [sys.executable, "-m", "sidegate.cli", "policy", "keygen", "--out", str(keys)],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        policies = self.state / "policies"
        policies.mkdir(parents=True, exist_ok=True)
        (policies / "policy.yaml").write_text(POLICY.format(fake=self.fake_url))
        self.stack.spawn("fake-provider", ["fake-provider", "--port", str(self.fake_port)])
        self.start_collector()
        self.stack.spawn("policyd", [
            "policyd", "--policy-dir", str(policies), "--nats-url", self.nats.url,
            "--signing-key", str(keys / "signing.key"),
        ])  # fmt: skip
        self.start_sidecar()
        return self

    def start_collector(self) -> None:
        self.stack.spawn("collector", [
            "collector", "--nats-url", self.nats.url, "--db", str(self.db),
            "--state-dir", str(self.state), "--http", f"127.0.0.1:{self.collector_port}",
            "--ack-wait", str(self.ack_wait_s), "--batch-size", str(self.batch_size),
        ])  # fmt: skip
        wait_for(self.stack, f"{self.collector_url}/healthz", "collector")

    def start_sidecar(self) -> None:
        self.stack.spawn("sidecar", ["sidecar", "--listen", f"127.0.0.1:{self.sidecar_port}"], env={
            "SIDEGATE_NATS_URL": self.nats.url,
            "SIDEGATE_STATE_DIR": str(self.state / "sidecar"),
            "SIDEGATE_PUBLIC_KEYS_FILE": str(self.state / "keys" / "signing.pub"),
            "SIDEGATE_TENANT": "acme", "SIDEGATE_APP": "usage-test",
            "SIDEGATE_ENVIRONMENT": "test", "SG_USAGE_KEY": PROVIDER_KEY,
        })  # fmt: skip
        wait_for(self.stack, f"{self.sidecar_url}/readyz", "sidecar", timeout_s=60)

    def process(self, name: str) -> subprocess.Popen[bytes]:
        return next(p for n, p in self.stack.children if n == name)

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> subprocess.Popen[bytes]:
        """Send `sig` to a child and forget it (a SIGKILL waits for the exit)."""
        entry = next(c for c in self.stack.children if c[0] == name)
        entry[1].send_signal(sig)
        if sig == signal.SIGKILL:
            entry[1].wait(10)
        self.stack.children.remove(entry)
        return entry[1]

    def spool(self) -> Path:
        return self.state / "sidecar" / "usage-spool.jsonl"

    def stored(self) -> int:
        """Requests the running collector has stored (its usage view's total)."""
        url = f"{self.collector_url}/v1/view/usage?group_by=none&since=1h&until=now&format=json"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return int(json.loads(response.read())["totals"]["requests"])
        except OSError:
            return -1

    def log(self, name: str) -> str:
        return (self.stack.logs / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        self.stack.stop()

    def rows(self, sql: str) -> list[tuple[object, ...]]:
        """Query the database; only once the collector has stopped (it holds the file)."""
        with duckdb.connect(str(self.db), read_only=True) as conn:
            return conn.execute(sql).fetchall()


def wait_until(check: Callable[[], bool], *, timeout_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or check}")


class Load:
    """Chat requests at a steady rate from worker threads; keeps every served x-request-id."""

    def __init__(self, url: str, *, rate_per_s: float = 80.0, workers: int = 6) -> None:
        self.host, _, port = url.removeprefix("http://").partition(":")
        self.port = int(port)
        self.interval_s = workers / rate_per_s
        self.workers = workers
        self.served: list[str] = []
        self.statuses: dict[int, int] = {}
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Load:
        for _ in range(self.workers):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> list[str]:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        return self.served

    def _run(self) -> None:
        body = json.dumps({"model": "fast", "messages": CHAT}).encode()
        headers = {"content-type": "application/json"}
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                conn.request("POST", "/v1/chat/completions", body, headers)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()  # reconnects on the next request
                with self._lock:
                    self.failures.append(repr(exc))
            else:
                request_id = response.getheader("x-request-id")
                with self._lock:
                    self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
                    if request_id:
                        self.served.append(request_id)
            self._stop.wait(max(self.interval_s - (time.monotonic() - started), 0))
        conn.close()


def assert_exactly_once(stack: UsageStack, served: list[str]) -> None:
    """The database holds one row per served request, and nothing else."""
    assert served, "the load served no request"
    total, distinct = stack.rows("SELECT count(*), count(DISTINCT id) FROM usage_records")[0]
    ids = {row[0] for row in stack.rows("SELECT id FROM usage_records")}
    assert total == distinct, f"{total - distinct} duplicate rows"  # type: ignore[operator]
    assert ids == set(served), (
        f"missing {len(set(served) - ids)}, unexpected {len(ids - set(served))}"
    )
    assert total == len(served)

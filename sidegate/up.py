"""`sidegate up`: the whole local stack on embedded defaults, as real processes, in one command.

NATS (the bundled nats-server), policyd with the example policy, the collector with a local
DuckDB file, the fake provider (unless OPENAI_API_KEY is set) and the sidecar on :4000 each run
as their own process, exactly as they would in a cluster; their logs go to .sidegate/logs/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import sidegate
from sidegate.natsd import NatsServer

EXAMPLES = Path(sidegate.__file__).parent / "examples"
FAKE_URL_IN_EXAMPLE = "http://127.0.0.1:4010/v1"


class Ports:
    """Where each piece listens; the defaults are the documented quickstart ports."""

    def __init__(
        self, *, sidecar: int = 4000, collector: int = 4002, fake: int = 4010, nats: int = 4222
    ) -> None:
        self.sidecar, self.collector, self.fake, self.nats = sidecar, collector, fake, nats

    @property
    def sidecar_url(self) -> str:
        return f"http://127.0.0.1:{self.sidecar}"

    @property
    def collector_url(self) -> str:
        return f"http://127.0.0.1:{self.collector}"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("up", help="run the whole stack locally: NATS, policyd, collector, sidecar")
    p.add_argument("--dir", type=Path, default=Path(".sidegate"), help="state folder")
    p.add_argument("--demo", action="store_true", help="send sample traffic, print the report")
    p.add_argument("--exit", action="store_true", help="stop after start-up (and the demo)")
    for name, default in (("sidecar", 4000), ("collector", 4002), ("fake", 4010), ("nats", 4222)):
        p.add_argument(f"--{name}-port", type=int, default=default, help=f"default {default}")
    p.set_defaults(func=run)


class Stack:
    """The child processes, started in dependency order and stopped in reverse."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.logs = state / "logs"
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.nats: NatsServer | None = None

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "sidegate.cli", *args],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )  # fmt: skip
        self.children.append((name, process))

    def check_alive(self) -> None:
        for name, process in self.children:
            if process.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")

    def stop(self) -> None:
        # Reverse order: the sidecar drains its usage to NATS before NATS goes away.
        for _, process in reversed(self.children):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
        if self.nats is not None:
            self.nats.stop()


def _get(url: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def wait_for(stack: Stack, url: str, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stack.check_alive()
        if _get(url)[0] == 200:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f}s (logs in {stack.logs})")


def prepare_policies(state: Path, *, real_openai: bool, fake_port: int) -> Path:
    """Copy the example policy once (the user may edit it), and pick the provider file."""
    policies = state / "policies"
    if not policies.exists():
        shutil.copytree(EXAMPLES / "policies", policies)
    if real_openai:
        text = (EXAMPLES / "openai" / "providers.yaml").read_text()
    else:
        text = (
            (EXAMPLES / "policies" / "providers.yaml")
            .read_text()
            .replace(FAKE_URL_IN_EXAMPLE, f"http://127.0.0.1:{fake_port}/v1")
        )
    (policies / "providers.yaml").write_text(text)
    return policies


def start(state: Path, ports: Ports | None = None) -> Stack:
    ports = ports or Ports()
    state.mkdir(parents=True, exist_ok=True)
    stack = Stack(state)
    try:
        stack.nats = NatsServer(state / "nats", port=ports.nats).start()
        nats_url = stack.nats.url
        keys = state / "keys"
        if not (keys / "signing.key").exists():
            subprocess.run(
                [sys.executable, "-m", "sidegate.cli", "policy", "keygen", "--out", str(keys)],
                check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
        real_openai = bool(os.environ.get("OPENAI_API_KEY"))
        policies = prepare_policies(state, real_openai=real_openai, fake_port=ports.fake)
        if not real_openai:
            stack.spawn("fake-provider", ["fake-provider", "--port", str(ports.fake)])
        stack.spawn("collector", [
            "collector", "--nats-url", nats_url, "--db", str(state / "usage.duckdb"),
            "--state-dir", str(state), "--http", f"127.0.0.1:{ports.collector}",
        ])  # fmt: skip
        wait_for(stack, f"{ports.collector_url}/healthz", "collector")
        stack.spawn("policyd", [
            "policyd", "--policy-dir", str(policies), "--nats-url", nats_url,
            "--signing-key", str(keys / "signing.key"),
        ])  # fmt: skip
        stack.spawn("sidecar", ["sidecar", "--listen", f"127.0.0.1:{ports.sidecar}"], env={
            "SIDEGATE_NATS_URL": nats_url,
            "SIDEGATE_STATE_DIR": str(state / "sidecar"),
            "SIDEGATE_PUBLIC_KEYS_FILE": str(keys / "signing.pub"),
            "SIDEGATE_TENANT": "local", "SIDEGATE_APP": "quickstart",
            "SIDEGATE_ENVIRONMENT": "dev",
        })  # fmt: skip
        wait_for(stack, f"{ports.sidecar_url}/readyz", "sidecar (waiting for a verified bundle)")
    except BaseException:
        stack.stop()
        raise
    return stack


def banner(state: Path, ports: Ports, *, real_openai: bool) -> str:
    upstream = "api.openai.com (OPENAI_API_KEY)" if real_openai else f"fake provider :{ports.fake}"
    sidecar = ports.sidecar_url
    return f"""
Sidegate is up.
  sidecar     {sidecar}      (OpenAI-compatible: /v1/chat/completions, /v1/embeddings)
  upstream    {upstream}
  collector   {ports.collector_url}      (usage in {state / "usage.duckdb"})
  policy      {state / "policies"}   (edit a file: policyd republishes, the sidecar swaps)
  logs        {state / "logs"}

Point an SDK at it:
  from openai import OpenAI
  client = OpenAI(base_url="{sidecar}/v1", api_key="anything")
  client.chat.completions.create(model="fast", messages=[{{"role": "user", "content": "hi"}}])

See the spend:  sidegate report        Stop: Ctrl-C
"""


def run(args: argparse.Namespace) -> int:
    state: Path = args.dir
    real_openai = bool(os.environ.get("OPENAI_API_KEY"))
    ports = Ports(
        sidecar=args.sidecar_port, collector=args.collector_port,
        fake=args.fake_port, nats=args.nats_port,
    )  # fmt: skip
    stack = start(state, ports)
    try:
        print(banner(state, ports, real_openai=real_openai), flush=True)
        if args.demo:
            from sidegate.demo import run_demo

            run_demo(ports.sidecar_url, ports.collector_url)
        if not args.exit:
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            while True:
                stack.check_alive()
                time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        print("Stopping…", flush=True)
        stack.stop()
    return 0

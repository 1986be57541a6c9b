"""The benchmark's processes: NATS, the fake upstream, the sidecar, a peer; CPU pinning, /proc."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import msgspec
import nats
from nats.js import api

from collector.record import USAGE_STREAM, USAGE_SUBJECT_PREFIX
from policyd.bundle import (
    KV_BUCKET,
    KV_KEY,
    STATUS_BUCKET,
    Bundle,
    Deployment,
    Envelope,
    Model,
    ModelAccess,
    Price,
    Provider,
    Rule,
    content_hash,
    encode_bundle,
    encode_envelope,
)
from policyd.status import STATUS_TTL_S

MODEL = "gpt-4o-mini"
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


class Child:
    """A child process with its log in a file; stopped with SIGTERM, then SIGKILL."""

    def __init__(
        self,
        name: str,
        port: int,
        argv: list[str],
        log_dir: Path,
        env: dict[str, str],
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.log_path = log_dir / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, **env}, cwd=cwd, start_new_session=True,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.process.pid

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{tail}")

    def wait_http(self, url: str, *, timeout_s: float = 60.0) -> None:
        """Poll until `url` answers 200, failing early if the process dies."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready at {url} after {timeout_s:.0f}s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _sidegate(*args: str) -> list[str]:
    return [sys.executable, "-m", "sidegate.cli", *args]


# ---------------------------------------------------------------------------------------------
# CPU placement and /proc readings
# ---------------------------------------------------------------------------------------------


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of `pid`: sched_setaffinity on a pid only moves its main thread."""
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(task), cpus)
        except ProcessLookupError:
            continue  # a thread that ended meanwhile


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rpartition(b")")[2].split()
    # After the command name: state is field 3, so utime (14) and stime (15) are 11 and 12.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def core_jiffies() -> dict[int, tuple[int, int, int]]:
    """Per core since boot, from /proc/stat: (busy, stolen by the hypervisor, total) ticks.

    Busy counts every process, not only ours: it shows whether a core was shared."""
    cores = {}
    with open("/proc/stat") as f:
        for line in f:
            name, _, rest = line.partition(" ")
            if name.startswith("cpu") and name != "cpu":
                # user nice system idle iowait irq softirq steal (guest time is inside user)
                v = [int(x) for x in rest.split()[:8]]
                cores[int(name[3:])] = (v[0] + v[1] + v[2] + v[5] + v[6], v[7], sum(v))
    return cores


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS (resident now) and VmHWM (peak resident) from /proc/<pid>/status, in MiB."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values


# ---------------------------------------------------------------------------------------------
# NATS, the upstream, the sidecar
# ---------------------------------------------------------------------------------------------


def bundle_envelope(upstream_v1: str) -> bytes:
    """One model served by the fake upstream under its own name, so the sidecar forwards the
    original bytes, with a price (cost is computed) and an allow rule (the models stage runs)."""
    bundle = Bundle(
        revision=1,
        content_hash="",
        created_at=int(time.time() * 1000),
        providers={"fake": Provider(kind="openai_compatible", base_url=upstream_v1)},
        models={
            MODEL: Model(
                deployments=(
                    Deployment(
                        provider="fake", model=MODEL,
                        price=Price(input_per_mtok="0.15", output_per_mtok="0.60"),
                    ),
                )
            )
        },
        rules=(Rule(name="bench", models=ModelAccess(allow=(MODEL,))),),
    )  # fmt: skip
    bundle = msgspec.structs.replace(bundle, content_hash=content_hash(bundle))
    return encode_envelope(Envelope(payload=encode_bundle(bundle)))


async def prepare_nats(url: str, envelope: bytes) -> None:
    """What policyd and the collector would have created: the policy buckets and the usage
    stream. Without the stream the sidecar's publishes go unacknowledged and every record
    lands in its disk spool, which is not the path being measured."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(
            api.StreamConfig(
                name=USAGE_STREAM,
                subjects=[f"{USAGE_SUBJECT_PREFIX}.>"],
                # In memory, bounded: nobody consumes these records during a benchmark.
                storage=api.StorageType.MEMORY,
                max_msgs=500_000,
                discard=api.DiscardPolicy.OLD,
            )
        )
        kv = await js.create_key_value(bucket=KV_BUCKET, history=5)
        await kv.put(KV_KEY, envelope)
        await js.create_key_value(bucket=STATUS_BUCKET, history=1, ttl=STATUS_TTL_S)
    finally:
        await nc.close()


async def usage_stream_count(url: str) -> int:
    """Records the usage stream holds: proof the sidecar published rather than spooled."""
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info(USAGE_STREAM)
        return int(info.state.messages)
    finally:
        await nc.close()


def start_upstream(port: int, log_dir: Path) -> Child:
    child = Child(
        "upstream", port,
        _sidegate("fake-provider", "--port", str(port), "--latency-ms", "0"),
        log_dir, {},
    )  # fmt: skip
    child.wait_http(f"http://127.0.0.1:{port}/_fake/health")
    return child


def start_sidecar(
    port: int,
    *,
    nats_url: str,
    state_dir: Path,
    envelope: bytes,
    log_dir: Path,
    cpus: set[int],
    name: str = "sidecar",
    source: Path | None = None,
) -> Child:
    """The sidecar as a pod runs it, with the bundle persisted as a previous run would have.

    `source` runs the sidecar of another checkout (e.g. a branch with a fix) instead of the
    installed one; it goes first on the path and is the working directory, as `-m` puts the
    working directory ahead of everything else."""
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "bundle.json").write_bytes(envelope)
    env = {
        "SIDEGATE_LISTEN": f"127.0.0.1:{port}",
        "SIDEGATE_NATS_URL": nats_url,
        "SIDEGATE_STATE_DIR": str(state_dir),
        "SIDEGATE_ALLOW_UNSIGNED": "1",
        "SIDEGATE_TENANT": "bench",
        "SIDEGATE_APP": "bench",
        "SIDEGATE_SIDECAR_ID": f"bench-{name}",
    }
    if source is not None:
        env["PYTHONPATH"] = str(source)
    child = Child(name, port, _sidegate("sidecar"), log_dir, env, cwd=source)
    pin(child.pid, cpus)
    child.wait_http(f"http://127.0.0.1:{port}/readyz")
    pin(child.pid, cpus)  # again: threads started during start-up (e.g. to_thread) included
    return child


# ---------------------------------------------------------------------------------------------
# The peer gateway, when one is installed
# ---------------------------------------------------------------------------------------------


def find_litellm(explicit: Path | None) -> tuple[str | None, str]:
    """The LiteLLM proxy's console script, or None and why it cannot run here.

    It may live in another virtualenv (`--litellm PATH`): it runs as its own process, and
    installing it beside Sidegate would drag its dependency pins into the project's env."""
    if explicit is not None:
        found = explicit.exists() and os.access(explicit, os.X_OK)
        return (str(explicit), "") if found else (None, f"{explicit} is not an executable")
    if importlib.util.find_spec("litellm") is None:
        return None, (
            "litellm is not installed (optional: pip install 'litellm[proxy]', or pass "
            "--litellm PATH to its console script in another virtualenv)"
        )
    for module in ("fastapi", "uvicorn", "backoff"):
        if importlib.util.find_spec(module) is None:
            return (
                None,
                f"litellm's proxy extra is missing ({module}): pip install 'litellm[proxy]'",
            )
    beside = Path(sys.executable).with_name("litellm")
    binary = str(beside) if beside.exists() else shutil.which("litellm")
    return (binary, "") if binary else (None, "the litellm console script is not on PATH")


def start_litellm(
    binary: str, port: int, *, master_key: str, upstream_v1: str, work_dir: Path, cpus: set[int]
) -> Child:
    """LiteLLM's proxy with one model on the same upstream, one worker, no database."""
    config = work_dir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {upstream_v1}\n"
        "      api_key: bench\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )
    env = {
        # Required to start; requests then present it, as LiteLLM's callers do.
        "LITELLM_MASTER_KEY": master_key,
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        # The price map ships in the package; without this it is fetched over the network.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    argv = [
        binary, "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
        "--num_workers", "1",
    ]  # fmt: skip
    child = Child("litellm", port, argv, work_dir, env)
    pin(child.pid, cpus)
    child.wait_http(f"http://127.0.0.1:{port}/health/liveliness", timeout_s=180)
    pin(child.pid, cpus)
    return child

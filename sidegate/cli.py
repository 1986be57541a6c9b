"""The `sidegate` console script: one subcommand per role, each registered by its own plane."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Each module defines `register(subparsers)`, adding subcommands whose `func(args) -> int` runs
# them. Registration imports only argparse-level code; heavy imports happen inside `func`.
_PLANES = ("sidecar.cli", "policyd.cli", "collector.cli", "fakeprovider.cli", "sidegate.up")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sidegate", description="An AI gateway that runs as a sidecar beside every pod."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _PLANES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`sidegate up`: the whole local stack on embedded defaults (placeholder until wired)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("up", help="start NATS, policyd, collector, fake provider and sidecar")
    p.add_argument("--demo", action="store_true", help="send sample traffic and print a report")
    p.set_defaults(func=lambda args: 1)

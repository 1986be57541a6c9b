"""`sidegate policyd` and `sidegate policy …`: argument parsing; the work is imported lazily."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

_NATS_URL = "nats://127.0.0.1:4222"


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def _nats(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nats-url",
        default=_env("SIDEGATE_NATS_URL", _NATS_URL),
        help="NATS server URL (env SIDEGATE_NATS_URL; default %(default)s)",
    )


def _signing(p: argparse.ArgumentParser) -> None:
    key = _env("SIDEGATE_SIGNING_KEY")
    p.add_argument(
        "--signing-key",
        type=Path,
        default=Path(key) if key else None,
        help="Ed25519 signing key from `sidegate policy keygen` (env SIDEGATE_SIGNING_KEY)",
    )
    p.add_argument(
        "--insecure-unsigned",
        action="store_true",
        help="publish unsigned bundles; local development only, sidecars reject them by default",
    )


def _int_env(name: str) -> int | None:
    value = _env(name)
    return int(value) if value else None


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _register_service(sub)
    policy = sub.add_parser("policy", help="validate, publish, inspect and roll back policy")
    psub = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")

    p = psub.add_parser("validate", help="compile a policy folder without NATS; list all errors")
    p.add_argument("dir", type=Path)
    p.set_defaults(func=_run("validate"))

    p = psub.add_parser("apply", help="publish a policy folder once as the next revision")
    p.add_argument("dir", type=Path)
    _nats(p)
    _signing(p)
    p.set_defaults(func=_run("apply"))

    p = psub.add_parser("show", help="print a published bundle as JSON")
    p.add_argument("--revision", type=int, help="a past revision (default: the latest)")
    _nats(p)
    p.set_defaults(func=_run("show"))

    p = psub.add_parser("history", help="list the revisions NATS still holds")
    p.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    _nats(p)
    p.set_defaults(func=_run("history"))

    p = psub.add_parser("rollback", help="republish an old revision's content as a new revision")
    p.add_argument("--to", type=int, required=True, metavar="REV", dest="to_revision")
    _nats(p)
    _signing(p)
    p.set_defaults(func=_run("rollback"))

    p = psub.add_parser("diff", help="unified diff between two revisions")
    p.add_argument("rev_a", type=int, metavar="A")
    p.add_argument("rev_b", type=int, metavar="B")
    _nats(p)
    p.set_defaults(func=_run("diff"))

    p = psub.add_parser("status", help="which sidecars run which revision")
    p.add_argument(
        "--stale-after",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="a sidecar not seen for this long is stale (default %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    _nats(p)
    p.set_defaults(func=_run("status"))

    p = psub.add_parser("keygen", help="write a new Ed25519 key pair: signing.key, signing.pub")
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.set_defaults(func=_run("keygen"))


def _register_service(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "policyd", help="the control plane: publish policy on change; serve the injector webhook"
    )
    p.add_argument(
        "--policy-dir",
        type=Path,
        default=Path(_env("SIDEGATE_POLICY_DIR", "./policies") or "./policies"),
        help="folder of policy YAML files (env SIDEGATE_POLICY_DIR; default %(default)s)",
    )
    _nats(p)
    _signing(p)
    p.add_argument(
        "--poll-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="how often to check the folder for changes (default %(default)s)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=_int_env("SIDEGATE_METRICS_PORT"),
        metavar="PORT",
        help="serve Prometheus /metrics over plain HTTP on this port (env SIDEGATE_METRICS_PORT; "
        "default off; the webhook port serves it too)",
    )
    webhook = p.add_argument_group("admission webhook (enabled by --webhook-port)")
    webhook.add_argument(
        "--webhook-host",
        default=_env("SIDEGATE_WEBHOOK_HOST", "0.0.0.0"),
        help="listen address (env SIDEGATE_WEBHOOK_HOST; default %(default)s)",
    )
    webhook.add_argument(
        "--webhook-port",
        type=int,
        default=_int_env("SIDEGATE_WEBHOOK_PORT"),
        metavar="PORT",
        help="serve the mutating admission webhook on this port (env SIDEGATE_WEBHOOK_PORT)",
    )
    webhook.add_argument(
        "--tls-cert",
        default=_env("SIDEGATE_TLS_CERT"),
        metavar="PATH",
        help="PEM certificate the API server trusts (env SIDEGATE_TLS_CERT)",
    )
    webhook.add_argument(
        "--tls-key",
        default=_env("SIDEGATE_TLS_KEY"),
        metavar="PATH",
        help="PEM private key of --tls-cert (env SIDEGATE_TLS_KEY)",
    )
    webhook.add_argument(
        "--injector-config",
        default=_env("SIDEGATE_INJECTOR_CONFIG"),
        metavar="PATH",
        help="what to inject: image, resources, public keys (env SIDEGATE_INJECTOR_CONFIG)",
    )
    p.set_defaults(func=_run("policyd"))


def _run(command: str) -> Callable[[argparse.Namespace], int]:
    """A `func(args) -> int` that imports the command bodies only when one actually runs."""

    def func(args: argparse.Namespace) -> int:
        from policyd import commands

        return commands.run(command, args)

    return func

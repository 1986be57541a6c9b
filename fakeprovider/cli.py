"""`sidegate fake-provider`: run the fake OpenAI/Anthropic/Gemini server in the foreground."""

from __future__ import annotations

import argparse

DEFAULT_PORT = 4010


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "fake-provider",
        help="run a fake OpenAI/Anthropic/Gemini provider (deterministic answers, faults)",
        description=(
            "A local model provider speaking the OpenAI, Anthropic and Gemini wire formats, "
            "with deterministic answers and faults on command (POST /_fake/faults)."
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default: 4010)")
    p.add_argument(
        "--latency-ms", type=float, default=0.0, help="delay before the first byte of an answer"
    )
    p.add_argument(
        "--token-delay-ms", type=float, default=0.0, help="delay between streamed tokens"
    )
    p.add_argument("--api-key", default=None, help="require this API key (default: accept any)")
    p.add_argument(
        "--output-tokens", type=int, default=None, help="length of an uncut answer (default: 20)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from fakeprovider.app import SHUTDOWN_TIMEOUT_S, create_app
    from fakeprovider.content import DEFAULT_OUTPUT_TOKENS

    app = create_app(
        latency_ms=args.latency_ms,
        token_delay_ms=args.token_delay_ms,
        api_key=args.api_key,
        output_tokens=args.output_tokens or DEFAULT_OUTPUT_TOKENS,
    )
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        access_log=None,  # the hot path stays free of per-request logging
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        print=lambda _: print(
            f"fake provider listening on http://{args.host}:{args.port}", flush=True
        ),
    )
    return 0

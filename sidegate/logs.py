"""structlog set up once per process: JSON lines on stdout, or readable lines on a terminal."""

from __future__ import annotations

import logging
import sys

import msgspec
import structlog


def configure(*, json: bool | None = None, level: str = "info") -> None:
    """One processor chain for every Sidegate process; `json` defaults to "not a terminal"."""
    if json is None:
        json = not sys.stdout.isatty()
    if json:
        # msgspec encodes a line several times faster than the stdlib: the access log writes one
        # per request. Anything it does not know (a Path, an exception) is written as str().
        encode = msgspec.json.Encoder(enc_hook=str, decimal_format="string").encode
        renderer: structlog.types.Processor = structlog.processors.JSONRenderer(
            serializer=lambda event, **_: encode(event)
        )
        factory: structlog.types.WrappedLogger = structlog.BytesLoggerFactory(sys.stdout.buffer)
    else:
        renderer = structlog.dev.ConsoleRenderer()
        factory = structlog.PrintLoggerFactory(sys.stdout)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )

"""Reading raw SSE bodies in the fake provider's tests (for what the SDKs hide)."""

from __future__ import annotations

import json
from typing import Any


def sse_data(body: str) -> list[str]:
    """The data fields of an SSE body, in order (CRLF or LF line ends)."""
    lines = body.replace("\r\n", "\n").split("\n")
    return [line[len("data: ") :] for line in lines if line.startswith("data: ")]


def sse_events(body: str) -> list[tuple[str | None, dict[str, Any]]]:
    """(event name, decoded data) per SSE event; the name is None when the event has none."""
    events: list[tuple[str | None, dict[str, Any]]] = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        name = None
        data = None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data = line[len("data: ") :]
        if data is not None and data != "[DONE]":
            events.append((name, json.loads(data)))
    return events

"""`sidegate up --demo`: sample traffic through the official OpenAI SDK, then the spend report."""

from __future__ import annotations

import json
import time
import urllib.request

import openai
from openai.types.chat import ChatCompletionChunk


def _traffic(client: openai.OpenAI) -> int:
    """A few realistic calls from two teams; returns how many requests were sent."""
    chat = [{"role": "user", "content": "Summarise our refund policy in one sentence."}]
    sent = 0
    for endpoint, model in (("support-bot", "fast"), ("support-bot", "smart"), ("batch", "fast")):
        client.chat.completions.create(
            model=model, messages=chat,  # type: ignore[arg-type]
            extra_headers={"x-sidegate-endpoint": endpoint, "x-sidegate-tenant": "acme"},
        )  # fmt: skip
        sent += 1
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=chat, stream=True,  # type: ignore[arg-type]
        extra_headers={"x-sidegate-endpoint": "chat-ui", "x-sidegate-tenant": "globex"},
    )  # fmt: skip
    text = "".join(
        c.choices[0].delta.content or ""
        for c in stream
        if isinstance(c, ChatCompletionChunk) and c.choices
    )
    sent += 1
    print(f"  streamed reply: {text[:60]!r}…")
    client.embeddings.create(
        model="text-embedding-3-small", input=["refund policy", "shipping times"],
        extra_headers={"x-sidegate-endpoint": "search", "x-sidegate-tenant": "globex"},
    )  # fmt: skip
    sent += 1
    try:  # the batch endpoint is limited to the cheap tier by the example policy
        client.chat.completions.create(
            model="smart", messages=chat,  # type: ignore[arg-type]
            extra_headers={"x-sidegate-endpoint": "batch", "x-sidegate-tenant": "acme"},
        )  # fmt: skip
    except openai.PermissionDeniedError as exc:
        print(f"  denied as the policy says: {exc.message}")
    sent += 1
    return sent


def _report(collector: str, query: str) -> bytes:
    with urllib.request.urlopen(f"{collector}/v1/report?{query}", timeout=10) as r:
        body: bytes = r.read()
        return body


def _requests_so_far(collector: str) -> int:
    return int(json.loads(_report(collector, "group_by=tenant&format=json"))["totals"]["requests"])


def run_demo(sidecar: str, collector: str, *, timeout_s: float = 30.0) -> None:
    print("Demo: sending traffic through the sidecar with the official openai SDK…")
    client = openai.OpenAI(base_url=f"{sidecar}/v1", api_key="demo", max_retries=0)
    before = _requests_so_far(collector)
    sent = _traffic(client)
    deadline = time.monotonic() + timeout_s
    while _requests_so_far(collector) < before + sent and time.monotonic() < deadline:
        time.sleep(0.2)
    print("\nsidegate report --group-by tenant,endpoint,model\n")
    print(_report(collector, "group_by=tenant,endpoint,model&format=table").decode())

"""Real AdmissionReview JSON, injector configs, and a client that posts like the API server."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch  # type: ignore[import-untyped]  # ships no type information
from nacl.signing import SigningKey

from policyd.webhook import InjectorConfig, PublicKeys

REVIEW_FILE = Path(__file__).parent / "data" / "pod-create-review.json"

Json = dict[str, Any]


def public_key() -> str:
    """A real Ed25519 public key, base64, as `sidegate policy keygen` writes to signing.pub."""
    return base64.b64encode(bytes(SigningKey.generate().verify_key)).decode()


def injector_config(**overrides: Any) -> InjectorConfig:
    fields: dict[str, Any] = {
        "image": "registry.example/sidegate:0.1.0",
        "nats_url": "nats://sidegate-nats.sidegate.svc.cluster.local:4222",
        "public_keys": PublicKeys(keys=(public_key(),)),
        "provider_secrets": ("llm-provider-keys",),
        "environments": {"payments": "prod"},
    }
    fields.update(overrides)
    return InjectorConfig(**fields)


class Webhook:
    """A running webhook and a way to post reviews to it the way the API server does."""

    def __init__(self, url: str, session: aiohttp.ClientSession, config: InjectorConfig) -> None:
        self.url = url
        self.session = session
        self.config = config

    async def post(self, body: bytes) -> tuple[int, Json]:
        headers = {"Content-Type": "application/json"}
        async with self.session.post(f"{self.url}/mutate", data=body, headers=headers) as resp:
            return resp.status, await resp.json()

    async def review(self, review: Json) -> Json:
        """The AdmissionReview response of a well-formed review (asserts HTTP 200)."""
        status, reply = await self.post(json.dumps(review).encode())
        assert status == 200, reply
        assert reply["apiVersion"] == "admission.k8s.io/v1"
        assert reply["kind"] == "AdmissionReview"
        response: Json = reply["response"]
        assert response["uid"] == review["request"]["uid"]
        return response

    async def mutate(self, review: Json) -> Json:
        """The pod as the API server would store it after applying the webhook's patch."""
        return apply_patch(review["request"]["object"], await self.review(review))


def apply_patch(pod: Json, response: Json) -> Json:
    assert response["allowed"] is True
    if "patch" not in response:
        return copy.deepcopy(pod)
    assert response["patchType"] == "JSONPatch"
    operations = json.loads(base64.b64decode(response["patch"]))
    result: Json = jsonpatch.apply_patch(pod, operations)
    return result


def review(
    *,
    operation: str = "CREATE",
    annotations: dict[str, str] | None = None,
    edit: Callable[[Json], None] | None = None,
) -> Json:
    """The recorded review of a Deployment's pod, optionally changed for one test."""
    data: Json = json.loads(REVIEW_FILE.read_text())
    request = data["request"]
    request["operation"] = operation
    pod = request["object"]
    if annotations is not None:
        pod["metadata"].setdefault("annotations", {}).update(annotations)
    if edit is not None:
        edit(pod)
    return data


def review_of(pod: Json) -> Json:
    """A CREATE review carrying `pod` as its object (e.g. an already patched pod)."""
    data = review()
    data["request"]["object"] = pod
    return data

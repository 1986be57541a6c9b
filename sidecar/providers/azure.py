"""Azure OpenAI: the OpenAI wire format under per-deployment URLs with an `api-version`.

`base_url` is the resource endpoint (`https://<resource>.openai.azure.com`); a deployment's
`model` is the Azure deployment name, and `api_version` on the provider picks the API version.
Bodies are OpenAI's, so chat and embeddings pass through unchanged; only the URL differs.
"""

from __future__ import annotations

from functools import lru_cache

from sidecar.policy import CompiledDeployment
from sidecar.providers.openai import OpenAIEgress

DEFAULT_API_VERSION = "2024-10-21"  # the current GA version of the data-plane API
_PATHS = {"embeddings": "/embeddings"}


@lru_cache(maxsize=1024)
def _deployment_url(base_url: str, deployment: str, path: str, api_version: str) -> str:
    root = base_url if base_url.endswith("/openai") else base_url + "/openai"
    return f"{root}/deployments/{deployment}{path}?api-version={api_version}"


class AzureEgress(OpenAIEgress):
    def __init__(self) -> None:
        super().__init__("azure", frozenset({"chat", "embeddings"}), completion_tokens_field=True)

    def url(self, d: CompiledDeployment, wire: str, *, stream: bool) -> str:
        version = d.provider.api_version or DEFAULT_API_VERSION
        return _deployment_url(d.base_url, d.model, _PATHS.get(wire, "/chat/completions"), version)


AZURE = AzureEgress()

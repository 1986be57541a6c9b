"""The provider matrix the module-scoped sidecar serves: one model per provider kind.

A unique module name (no package here): test modules import from it rather than from
`conftest`, which is ambiguous when several test folders are collected together.
"""

from __future__ import annotations

PROVIDER_KEY = "sk-provider-secret"
EGRESS = ("openai", "compat", "azure", "anthropic", "gemini", "bedrock")

POLICY = """
providers:
  openai:
    kind: openai
    base_url: "{fake}/v1"
    credential: "env:SG_TEST_PROVIDER_KEY"
    retry: {{base_backoff_ms: 1, max_backoff_ms: 5}}
  compat: {{kind: openai_compatible, base_url: "{fake}/v1", credential: "env:SG_TEST_PROVIDER_KEY"}}
  azure:
    kind: azure
    base_url: "{azure}"
    api_version: "2024-10-21"
    credential: "env:SG_TEST_PROVIDER_KEY"
  anthropic: {{kind: anthropic, base_url: "{fake}", credential: "env:SG_TEST_PROVIDER_KEY"}}
  gemini: {{kind: gemini, base_url: "{fake}/v1beta", credential: "env:SG_TEST_PROVIDER_KEY"}}
  bedrock:
    kind: bedrock
    base_url: "{bedrock}"
    region: eu-west-1
    retry: {{base_backoff_ms: 1, max_backoff_ms: 5}}
models:
  via-openai: {{deployments: [{{provider: openai, model: gpt-4o-mini}}]}}
  via-compat: {{deployments: [{{provider: compat, model: llama-3.1-8b}}]}}
  via-azure: {{deployments: [{{provider: azure, model: my-gpt-4o-mini}}]}}
  via-anthropic: {{deployments: [{{provider: anthropic, model: claude-haiku-4-5}}]}}
  via-gemini: {{deployments: [{{provider: gemini, model: gemini-2.0-flash}}]}}
  via-gemini-thinking: {{deployments: [{{provider: gemini, model: gemini-2.5-flash}}]}}
  via-bedrock:
    deployments: [{{provider: bedrock, model: "anthropic.claude-3-haiku-20240307-v1:0"}}]
  embed-azure: {{kind: embedding, deployments: [{{provider: azure, model: my-embedding}}]}}
  embed-openai:
    kind: embedding
    deployments: [{{provider: openai, model: text-embedding-3-small}}]
rules:
  - name: default
    models: {{allow: ["*"]}}
"""

"""Sample policy text shared by the control-plane tests (a unique module name: no package here)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

WriteFiles = Callable[..., Path]

BASE = """
providers:
  openai:
    kind: openai
    base_url: https://api.openai.com/v1
    credential: env:OPENAI_API_KEY
models:
  gpt-4o-mini:
    tier: cheap
    deployments:
      - provider: openai
        model: gpt-4o-mini
rules:
  - name: default
    models:
      allow: ["*"]
"""

"""Render the chart with Helm's engine (no helm binary, no cluster) and pick objects out of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helm_python
import jsonschema  # type: ignore[import-untyped]  # stubs are a separate package
import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import yaml

CHART = Path(__file__).parents[2] / "helm" / "sidegate"

Json = dict[str, Any]


def render(
    values: Json | None = None,
    *,
    kube_version: str = "v1.33.0",
    api_versions: list[str] | None = None,
    release: str = "sidegate",
    namespace: str = "sidegate",
) -> list[Json]:
    """Render the chart with Helm's own engine (no cluster) and parse every object."""
    options: Json = {
        "name": release,
        "namespace": namespace,
        "is_install": True,
        "kube_version": kube_version,
        "api_versions": api_versions or [],
    }
    with helm_python.Chart.load(CHART) as chart:
        # helm-python's Chart.render exposes no kube_version / api_versions, though libhelm_c's
        # render accepts them; the same native call with those two options, like `helm template
        # --kube-version --api-versions`.
        rendered = helm_python._native.call_string(
            "helm_render", chart._raw(), json.dumps(values or {}), json.dumps(options)
        )
    manifests: dict[str, str] = json.loads(rendered)
    objects: list[Json] = []
    for name, text in sorted(manifests.items()):
        if name.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def find(objects: list[Json], kind: str, name: str | None = None) -> Json:
    matches = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def kinds(objects: list[Json]) -> set[str]:
    return {o["kind"] for o in objects}


# --- validation --------------------------------------------------------------------------------

VALIDATE_AGAINST = "1.33"  # a recent Kubernetes; kubernetes-validate ships its OpenAPI schemas

_name = {"type": "string", "minLength": 1}
_meta = {"type": "object", "required": ["name", "namespace"]}
# Custom resources have no schema in kubernetes-validate: the fields the chart relies on, from
# the CRDs of cert-manager v1 and the Prometheus Operator.
CRD_SCHEMAS: dict[tuple[str, str], Json] = {
    ("cert-manager.io/v1", "Issuer"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "metadata": _meta,
            "spec": {"type": "object", "minProperties": 1, "maxProperties": 1},
        },
    },
    ("cert-manager.io/v1", "Certificate"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "metadata": _meta,
            "spec": {
                "type": "object",
                "required": ["secretName", "issuerRef", "dnsNames"],
                "properties": {
                    "secretName": _name,
                    "dnsNames": {"type": "array", "items": _name, "minItems": 1},
                    "duration": {"type": "string", "pattern": "^[0-9]+h$"},
                    "renewBefore": {"type": "string", "pattern": "^[0-9]+h$"},
                    "issuerRef": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            "name": _name,
                            "kind": {"enum": ["Issuer", "ClusterIssuer"]},
                            "group": {"const": "cert-manager.io"},
                        },
                    },
                },
            },
        },
    },
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "metadata": _meta,
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "properties": {
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["port"],
                            "properties": {"scheme": {"enum": ["http", "https"]}},
                        },
                    }
                },
            },
        },
    },
    ("monitoring.coreos.com/v1", "PodMonitor"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "metadata": _meta,
            "spec": {
                "type": "object",
                "required": ["selector", "podMetricsEndpoints"],
                "properties": {
                    "namespaceSelector": {
                        "type": "object",
                        "properties": {
                            "any": {"type": "boolean"},
                            "matchNames": {"type": "array", "items": _name},
                        },
                    },
                    "podMetricsEndpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["port"],
                            "properties": {"scheme": {"enum": ["http", "https"]}},
                        },
                    },
                },
            },
        },
    },
}


def validate(obj: Json, version: str = VALIDATE_AGAINST) -> None:
    """Raise unless `obj` matches its Kubernetes (or known custom resource) schema."""
    custom = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
    if custom is not None:
        jsonschema.validate(obj, custom)
    else:
        kubernetes_validate.validate(obj, version, strict=True)

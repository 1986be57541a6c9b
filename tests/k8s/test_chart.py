"""The Helm chart rendered by Helm's engine with several values sets, checked object by object."""

from __future__ import annotations

import argparse
import base64
import importlib
import json
from pathlib import Path
from typing import Any

import helm_python
import pytest
from cryptography import x509
from k8s_admission import public_key
from k8s_chart import CHART, Json, find, kinds, render, validate

from policyd.bundle import Bundle
from policyd.compiler import compile_dir
from policyd.webhook import load_injector_config

KEY = public_key()
BASE: Json = {"signing": {"publicKeys": [KEY]}}
CERT_MANAGER = ["cert-manager.io/v1"]
PROMETHEUS = ["monitoring.coreos.com/v1"]

# name: (values, Kubernetes version, API versions the cluster serves)
VALUE_SETS: dict[str, tuple[Json, str, list[str]]] = {
    "defaults": (BASE, "v1.33.0", []),
    "cert-manager": (
        {**BASE, "injector": {"certManager": {"enabled": True}}},
        "v1.33.0",
        CERT_MANAGER,
    ),
    "cert-manager-cluster-issuer": (
        {
            **BASE,
            "injector": {
                "certManager": {
                    "enabled": True,
                    "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"},
                }
            },
        },
        "v1.33.0",
        CERT_MANAGER,
    ),
    "external-nats": ({**BASE, "nats": {"url": "nats://nats.messaging.svc:4222"}}, "v1.33.0", []),
    "observability": (
        {
            **BASE,
            "metrics": {
                "serviceMonitor": {"enabled": True},
                "podMonitor": {"enabled": True},
                "dashboard": {"enabled": True},
            },
        },
        "v1.33.0",
        PROMETHEUS,
    ),
    "old-cluster": (BASE, "v1.28.4", []),
    "native-sidecars-off": ({**BASE, "injector": {"nativeSidecars": False}}, "v1.33.0", []),
    "bring-your-own": (
        {
            "signing": {"publicKeysConfigMap": "sidegate-public-keys", "existingSecret": "keys"},
            "policy": {"existingConfigMap": "team-policies"},
            "providers": {"secrets": ["openai-key", "anthropic-key"]},
            "policyd": {"replicas": 1},
            "networkPolicy": {"enabled": False},
        },
        "v1.31.0",
        [],
    ),
}


def rendered(name: str) -> list[Json]:
    values, kube, apis = VALUE_SETS[name]
    return render(values, kube_version=kube, api_versions=apis)


def pod_spec(objects: list[Json], kind: str, name: str) -> Json:
    spec: Json = find(objects, kind, name)["spec"]["template"]["spec"]
    return spec


def injector_file(objects: list[Json], tmp_path: Path) -> Path:
    path = tmp_path / "injector.json"
    path.write_text(find(objects, "ConfigMap", "sidegate-injector")["data"]["injector.json"])
    return path


def parse_cli(plane: str, args: list[str]) -> argparse.Namespace:
    """Parse `args` with the real subcommand of one plane, as the container would run them."""
    parser = argparse.ArgumentParser(prog="sidegate", exit_on_error=False)
    importlib.import_module(plane).register(parser.add_subparsers(dest="command"))
    return parser.parse_args(args)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_rendered_object_is_a_valid_kubernetes_object(value_set: str) -> None:
    _, kube, _ = VALUE_SETS[value_set]
    objects = rendered(value_set)

    assert len(objects) >= 10
    for obj in objects:
        validate(obj, kube.removeprefix("v").rsplit(".", 1)[0])


@pytest.mark.parametrize("value_set", ["defaults", "cert-manager", "external-nats"])
def test_chart_passes_helm_lint_in_strict_mode(value_set: str) -> None:
    values, kube, _ = VALUE_SETS[value_set]

    report = helm_python.lint(CHART, values, strict=True, kube_version=kube)

    assert report["errors"] == [], report


def test_chart_refuses_to_render_without_a_public_key() -> None:
    with pytest.raises(helm_python.HelmError, match=r"signing\.publicKeys"):
        render({})


def test_a_values_typo_is_rejected_by_the_schema() -> None:
    with pytest.raises(helm_python.HelmValuesError, match="nativeSidecar"):
        render({**BASE, "injector": {"nativeSidecar": False}})


def test_the_injector_config_the_chart_writes_loads_in_policyd(tmp_path: Path) -> None:
    config = load_injector_config(str(injector_file(rendered("defaults"), tmp_path)))

    assert config.public_keys.keys == (KEY,)
    assert config.nats_url == "nats://sidegate-nats.sidegate.svc.cluster.local:4222"
    assert config.image == "sidegate:0.1.0"


@pytest.mark.parametrize(
    ("value_set", "native"),
    [("defaults", True), ("old-cluster", False), ("native-sidecars-off", False)],
)
def test_native_sidecars_follow_the_cluster_version_unless_overridden(
    tmp_path: Path, value_set: str, native: bool
) -> None:
    config = load_injector_config(str(injector_file(rendered(value_set), tmp_path)))

    assert config.native_sidecars is native


def test_policyd_arguments_parse_with_the_real_cli() -> None:
    container = pod_spec(rendered("defaults"), "Deployment", "sidegate-policyd")["containers"][0]

    args = parse_cli("policyd.cli", container["args"])

    assert args.command == "policyd"
    assert args.webhook_port == 8443
    assert str(args.policy_dir) == "/etc/sidegate/policies"
    assert args.injector_config == "/etc/sidegate/injector/injector.json"


def test_collector_arguments_parse_with_the_real_cli() -> None:
    spec = pod_spec(rendered("defaults"), "StatefulSet", "sidegate-collector")

    args = parse_cli("collector.cli", spec["containers"][0]["args"])

    assert (args.command, args.db, args.http) == ("collector", "/data/usage.duckdb", "0.0.0.0:4002")


def test_generated_webhook_certificate_is_trusted_through_the_ca_bundle() -> None:
    objects = rendered("defaults")
    secret = find(objects, "Secret", "sidegate-webhook-tls")["data"]
    hook = find(objects, "MutatingWebhookConfiguration")["webhooks"][0]

    ca = x509.load_pem_x509_certificate(base64.b64decode(hook["clientConfig"]["caBundle"]))
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["tls.crt"]))
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "sidegate-policyd.sidegate.svc" in names.get_values_for_type(x509.DNSName)
    assert hook["clientConfig"]["service"]["name"] == "sidegate-policyd"


def test_cert_manager_issues_the_certificate_and_injects_the_ca() -> None:
    objects = rendered("cert-manager")
    certificate = find(objects, "Certificate")
    configuration = find(objects, "MutatingWebhookConfiguration")

    assert "Secret" not in kinds(objects)
    assert "caBundle" not in configuration["webhooks"][0]["clientConfig"]
    annotation = configuration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    assert annotation == "sidegate/" + certificate["metadata"]["name"]
    assert certificate["spec"]["issuerRef"]["name"] == find(objects, "Issuer")["metadata"]["name"]
    volumes = pod_spec(objects, "Deployment", "sidegate-policyd")["volumes"]
    tls = next(v for v in volumes if v["name"] == "tls")
    assert tls["secret"]["secretName"] == certificate["spec"]["secretName"]


def test_a_cluster_issuer_replaces_the_self_signed_issuer() -> None:
    objects = rendered("cert-manager-cluster-issuer")

    assert "Issuer" not in kinds(objects)
    assert find(objects, "Certificate")["spec"]["issuerRef"]["kind"] == "ClusterIssuer"


def test_external_nats_replaces_the_bundled_node(tmp_path: Path) -> None:
    objects = rendered("external-nats")
    url = "nats://nats.messaging.svc:4222"

    assert not any(o["metadata"]["name"] == "sidegate-nats" for o in objects)
    policyd = pod_spec(objects, "Deployment", "sidegate-policyd")["containers"][0]
    collector = pod_spec(objects, "StatefulSet", "sidegate-collector")["containers"][0]
    assert f"--nats-url={url}" in policyd["args"]
    assert f"--nats-url={url}" in collector["args"]
    assert load_injector_config(str(injector_file(objects, tmp_path))).nats_url == url
    egress = find(objects, "NetworkPolicy", "sidegate-policyd")["spec"]["egress"]
    assert {"protocol": "TCP", "port": 4222} in egress[0]["ports"]


def test_the_webhook_fails_open_and_never_injects_the_release_namespace() -> None:
    hook = find(rendered("defaults"), "MutatingWebhookConfiguration")["webhooks"][0]

    assert hook["failurePolicy"] == "Ignore"
    assert hook["sideEffects"] == "None"
    assert hook["rules"][0]["operations"] == ["CREATE"]
    assert hook["namespaceSelector"]["matchLabels"] == {"sidegate.io/inject": "enabled"}
    excluded = hook["namespaceSelector"]["matchExpressions"][0]
    assert (excluded["operator"], "sidegate") == ("NotIn", excluded["values"][0])


def test_policyd_replicas_keep_one_up_through_disruptions() -> None:
    objects = rendered("defaults")

    assert find(objects, "Deployment", "sidegate-policyd")["spec"]["replicas"] == 2
    budget = find(objects, "PodDisruptionBudget", "sidegate-policyd")["spec"]
    assert budget["minAvailable"] == 1
    assert "PodDisruptionBudget" not in kinds(rendered("bring-your-own"))  # one replica


def test_collector_keeps_duckdb_on_a_persistent_volume() -> None:
    collector = find(rendered("defaults"), "StatefulSet", "sidegate-collector")["spec"]

    assert collector["replicas"] == 1
    (claim,) = collector["volumeClaimTemplates"]
    mounts = collector["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in mounts


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("Deployment", "sidegate-policyd"),
        ("StatefulSet", "sidegate-collector"),
        ("StatefulSet", "sidegate-nats"),
    ],
)
def test_every_pod_runs_non_root_on_a_read_only_root_filesystem(kind: str, name: str) -> None:
    spec = pod_spec(rendered("defaults"), kind, name)

    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["automountServiceAccountToken"] is False
    for container in spec["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}


def test_components_get_no_kubernetes_api_access() -> None:
    objects = rendered("defaults")

    assert not kinds(objects) & {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}
    for account in (o for o in objects if o["kind"] == "ServiceAccount"):
        assert account["automountServiceAccountToken"] is False


def test_signing_key_is_mounted_into_policyd_only() -> None:
    objects = rendered("bring-your-own")

    signing = [
        (o["metadata"]["name"], v)
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet")
        for v in o["spec"]["template"]["spec"].get("volumes", [])
        if v.get("secret", {}).get("secretName") == "keys"
    ]
    assert [name for name, _ in signing] == ["sidegate-policyd"]


def test_bring_your_own_objects_are_referenced_not_created(tmp_path: Path) -> None:
    objects = rendered("bring-your-own")

    config = load_injector_config(str(injector_file(objects, tmp_path)))
    assert config.public_keys.config_map == "sidegate-public-keys"
    assert config.provider_secrets == ("openai-key", "anthropic-key")
    volumes = pod_spec(objects, "Deployment", "sidegate-policyd")["volumes"]
    assert next(v for v in volumes if v["name"] == "policies")["configMap"] == {
        "name": "team-policies"
    }
    assert not any(o["metadata"]["name"] == "sidegate-policy" for o in objects)


def test_nats_admits_sidecars_only_from_opted_in_namespaces() -> None:
    policy = find(rendered("defaults"), "NetworkPolicy", "sidegate-nats")["spec"]

    client = next(rule for rule in policy["ingress"] if rule["ports"][0]["port"] == 4222)
    selectors = [peer.get("namespaceSelector") for peer in client["from"]]
    assert {"matchLabels": {"sidegate.io/inject": "enabled"}} in selectors
    assert {} not in selectors


def test_policy_files_from_values_reach_policyd() -> None:
    values: Json = {**BASE, "policy": {"files": {"team.yaml": "rules: []\n"}}}
    objects = render(values)

    config_map = find(objects, "ConfigMap", "sidegate-policy")
    assert config_map["data"] == {"team.yaml": "rules: []\n"}
    mounts = pod_spec(objects, "Deployment", "sidegate-policyd")["containers"][0]["volumeMounts"]
    assert {"name": "policies", "mountPath": "/etc/sidegate/policies", "readOnly": True} in mounts


def test_service_monitor_scrapes_policyd_over_the_webhook_tls() -> None:
    objects = rendered("observability")

    endpoint = find(objects, "ServiceMonitor", "sidegate-policyd")["spec"]["endpoints"][0]
    assert (endpoint["port"], endpoint["scheme"], endpoint["path"]) == (
        "webhook",
        "https",
        "/metrics",
    )
    assert endpoint["tlsConfig"]["ca"]["secret"]["name"] == "sidegate-webhook-tls"


def test_dashboard_config_map_holds_a_grafana_dashboard() -> None:
    dashboard = find(rendered("observability"), "ConfigMap", "sidegate-dashboard")

    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    model: dict[str, Any] = json.loads(dashboard["data"]["sidegate.json"])
    assert model["uid"] == "sidegate-control-plane"
    queries = [target["expr"] for panel in model["panels"] for target in panel["targets"]]
    assert queries
    assert all('job=~"$release-policyd"' in query for query in queries)


def test_service_monitor_scrapes_the_collectors_http_port() -> None:
    monitor = find(rendered("observability"), "ServiceMonitor", "sidegate-collector")

    assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "collector"
    endpoint = monitor["spec"]["endpoints"][0]
    assert (endpoint["port"], endpoint["path"], endpoint["scheme"]) == ("http", "/metrics", "http")


def test_pod_monitor_scrapes_every_injected_sidecar_by_its_admin_port_name() -> None:
    objects = rendered("observability")

    spec = find(objects, "PodMonitor", "sidegate-sidecars")["spec"]
    assert spec["namespaceSelector"] == {"any": True}
    assert spec["podMetricsEndpoints"][0]["port"] == "sidegate-admin"
    config = json.loads(find(objects, "ConfigMap", "sidegate-injector")["data"]["injector.json"])
    assert config["admin_port"] == 4001


def test_a_null_admin_port_keeps_the_sidecar_on_loopback_and_renders_no_pod_monitor() -> None:
    values: Json = {
        **BASE,
        "injector": {"sidecar": {"adminPort": None}},
        "metrics": {"podMonitor": {"enabled": True}},
    }
    objects = render(values, api_versions=PROMETHEUS)

    assert "PodMonitor" not in kinds(objects)
    config = json.loads(find(objects, "ConfigMap", "sidegate-injector")["data"]["injector.json"])
    assert config["admin_port"] is None


def test_gateway_dashboard_covers_the_sidecars_and_the_collector() -> None:
    dashboard = find(rendered("observability"), "ConfigMap", "sidegate-dashboard")

    model: dict[str, Any] = json.loads(dashboard["data"]["sidegate-gateway.json"])
    assert model["uid"] == "sidegate-gateway"
    queries = [target["expr"] for panel in model["panels"] for target in panel["targets"]]
    assert any('job=~".*/$release-sidecars"' in query for query in queries)
    assert any('job=~"$release-collector"' in query for query in queries)


def test_the_starter_policy_compiles_into_a_bundle(tmp_path: Path) -> None:
    files = find(rendered("defaults"), "ConfigMap", "sidegate-policy")["data"]
    for name, text in files.items():
        (tmp_path / name).write_text(text)

    result = compile_dir(tmp_path)

    assert isinstance(result, Bundle), result
    assert {"openai", "anthropic"} <= result.providers.keys()

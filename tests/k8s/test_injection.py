"""Injection rules called directly, and the injector config file policyd loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from k8s_admission import Json, injector_config, public_key, review

from policyd.injection import Decision, Injector, pod_decoder
from policyd.webhook import InjectorConfigError, PublicKeys, load_injector_config


def decide(pod: Json, *, namespace: str = "payments", **config: object) -> Decision:
    injector = Injector(injector_config(**config))
    return injector.review(pod_decoder.decode(json.dumps(pod)), namespace=namespace)


def recorded_pod() -> Json:
    pod: Json = review()["request"]["object"]
    return pod


def added(decision: Decision, path: str) -> Any:
    """The value the patch adds at `path` (JSON: dicts and lists, untyped on purpose)."""
    return next(op.value for op in decision.patch if op.path == path)


def sidecar_env(decision: Decision) -> dict[str, Json]:
    (container,) = added(decision, "/spec/initContainers")
    return {e["name"]: e for e in container["env"]}


def test_a_host_network_pod_is_left_alone_with_a_warning() -> None:
    pod = recorded_pod()
    pod["spec"]["hostNetwork"] = True

    decision = decide(pod)

    assert (decision.reason, decision.patch) == ("host network", ())
    assert decision.warnings == ("sidegate: not injected into a hostNetwork pod",)


def test_a_volume_named_like_the_sidecars_stops_injection() -> None:
    pod = recorded_pod()
    pod["spec"]["volumes"].append({"name": "sidegate-state", "emptyDir": {}})

    decision = decide(pod)

    assert decision.reason == "name conflict"
    assert decision.patch == ()


def test_a_container_using_env_from_gets_base_urls_but_no_placeholder_keys() -> None:
    pod = recorded_pod()
    pod["spec"]["containers"][1]["envFrom"] = [{"secretRef": {"name": "exporter-env"}}]

    decision = decide(pod)

    env = added(decision, "/spec/containers/1/env")
    assert [e["name"] for e in env] == ["OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"]


def test_a_longer_termination_grace_is_kept() -> None:
    pod = recorded_pod()
    pod["spec"]["terminationGracePeriodSeconds"] = 120

    decision = decide(pod)

    assert all(op.path != "/spec/terminationGracePeriodSeconds" for op in decision.patch)


def test_pod_annotations_choose_environment_and_tenant() -> None:
    pod = recorded_pod()
    pod["metadata"]["annotations"]["sidegate.io/environment"] = "staging"
    pod["metadata"]["annotations"]["sidegate.io/tenant"] = "shop"

    env = sidecar_env(decide(pod))

    assert env["SIDEGATE_ENVIRONMENT"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['sidegate.io/environment']"
    )
    assert env["SIDEGATE_TENANT"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['sidegate.io/tenant']"
    )


def test_the_app_label_falls_back_to_the_plain_app_label() -> None:
    pod = recorded_pod()
    pod["metadata"]["labels"] = {"app": "checkout"}

    env = sidecar_env(decide(pod, namespace="sandbox"))

    assert env["SIDEGATE_APP"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['app']"
    assert "SIDEGATE_ENVIRONMENT" not in env  # no namespace setting, no annotation


def test_a_pod_without_annotations_or_volumes_gets_whole_lists() -> None:
    pod = recorded_pod()
    del pod["metadata"]["annotations"]
    del pod["spec"]["volumes"]

    decision = decide(pod)

    assert set(added(decision, "/metadata/annotations")) == {
        "sidegate.io/status",
        "sidegate.io/public-keys",
    }
    assert len(added(decision, "/spec/volumes")) == 3


def test_public_keys_from_a_config_map_need_no_annotation() -> None:
    keys = PublicKeys(config_map="sidegate-public-keys")

    decision = decide(recorded_pod(), public_keys=keys)

    volume = next(
        op.value
        for op in decision.patch
        if op.path == "/spec/volumes/-" and op.value["name"] == "sidegate-keys"
    )
    assert volume["configMap"]["name"] == "sidegate-public-keys"
    assert all("public-keys" not in op.path for op in decision.patch)


def test_config_loads_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "injector.yaml"
    key = public_key()
    path.write_text(
        f"image: sidegate:1\nnats_url: nats://nats:4222\npublic_keys:\n  keys: [{key}]\n"
    )

    config = load_injector_config(str(path))

    assert config.public_keys.keys == (key,)
    assert config.native_sidecars is True


def test_config_with_an_unknown_field_fails_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "injector.json"
    body = {"image": "i", "nats_url": "n", "public_keys": {"keys": [public_key()]}}
    path.write_text(json.dumps({**body, "resources": {"request": {}}}))

    with pytest.raises(InjectorConfigError, match=r"injector.json: .*`request`.*\$\.resources"):
        load_injector_config(str(path))


def test_config_rejects_a_public_key_that_is_not_ed25519(tmp_path: Path) -> None:
    path = tmp_path / "injector.json"
    body = {"image": "i", "nats_url": "n", "public_keys": {"keys": ["c2lkZWdhdGU="]}}
    path.write_text(json.dumps(body))

    with pytest.raises(InjectorConfigError, match="not a base64 Ed25519 public key"):
        load_injector_config(str(path))


def test_without_an_admin_port_the_sidecar_is_probed_on_loopback_by_exec() -> None:
    decision = decide(recorded_pod(), admin_port=None)

    (container,) = added(decision, "/spec/initContainers")
    assert "ports" not in container
    assert "SIDEGATE_ADMIN_LISTEN" not in sidecar_env(decision)
    command = " ".join(container["readinessProbe"]["exec"]["command"])
    assert "http://127.0.0.1:4000/readyz" in command


def test_an_admin_port_equal_to_the_proxy_port_is_refused() -> None:
    with pytest.raises(ValueError, match="admin_port"):
        injector_config(admin_port=4000)

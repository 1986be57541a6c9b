"""The admission webhook over real TLS, fed the AdmissionReview JSON the API server sends."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import pytest
from cryptography import x509
from k8s_admission import Json, Webhook, apply_patch, injector_config, review, review_of
from k8s_tls import Tls

from sidecar.settings import from_env

APP_ENV = ("OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "OPENAI_API_KEY", "ANTHROPIC_API_KEY")


def sidecars(pod: Json) -> list[Json]:
    spec = pod["spec"]
    every = [*spec.get("initContainers", []), *spec["containers"]]
    return [c for c in every if c["name"] == "sidegate"]


def the_sidecar(pod: Json) -> Json:
    found = sidecars(pod)
    assert len(found) == 1, f"expected one sidecar, found {len(found)}"
    return found[0]


def env_of(container: Json) -> dict[str, Json]:
    return {e["name"]: e for e in container.get("env", [])}


def app_containers(pod: Json) -> list[Json]:
    return [c for c in pod["spec"]["containers"] if c["name"] != "sidegate"]


async def test_pod_in_an_opted_in_namespace_gets_one_native_sidecar(webhook: Webhook) -> None:
    pod = await webhook.mutate(review())

    sidecar = the_sidecar(pod)
    assert sidecar in pod["spec"]["initContainers"]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["args"] == ["sidecar"]
    assert pod["metadata"]["annotations"]["sidegate.io/status"] == "injected"


async def test_without_native_sidecar_support_the_sidecar_is_a_regular_container(
    start: Any,
) -> None:
    webhook = await start(injector_config(native_sidecars=False))

    pod = await webhook.mutate(review())

    sidecar = the_sidecar(pod)
    assert "initContainers" not in pod["spec"]
    assert pod["spec"]["containers"][-1] is sidecar
    assert pod["spec"]["containers"][0]["name"] == "checkout"  # kubectl's default stays the app
    assert "restartPolicy" not in sidecar


@pytest.mark.parametrize(("native", "kube"), [(True, "1.33"), (False, "1.28")])
async def test_patched_pod_is_a_valid_kubernetes_pod(start: Any, native: bool, kube: str) -> None:
    webhook = await start(injector_config(native_sidecars=native))

    pod = await webhook.mutate(review())

    for key in ("creationTimestamp", "managedFields"):
        pod["metadata"].pop(key)  # server-set fields the client-side schema does not take
    kubernetes_validate.validate(pod, kube, strict=True)


async def test_app_containers_get_the_sidecar_base_urls(webhook: Webhook) -> None:
    pod = await webhook.mutate(review())

    for container in app_containers(pod):
        env = env_of(container)
        assert env["OPENAI_BASE_URL"]["value"] == "http://127.0.0.1:4000/v1"
        assert env["ANTHROPIC_BASE_URL"]["value"] == "http://127.0.0.1:4000"


async def test_placeholder_keys_fill_only_variables_an_app_does_not_set(webhook: Webhook) -> None:
    pod = await webhook.mutate(review())

    checkout, exporter = app_containers(pod)
    assert env_of(checkout)["OPENAI_API_KEY"]["value"] == "sidegate"
    assert env_of(checkout)["ANTHROPIC_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == (
        "checkout-anthropic"
    )
    assert [e["name"] for e in checkout["env"]].count("ANTHROPIC_API_KEY") == 1
    assert env_of(checkout)["LOG_LEVEL"]["value"] == "info"
    assert {"OPENAI_API_KEY", "ANTHROPIC_API_KEY"} <= env_of(exporter).keys()


async def test_an_app_with_its_own_base_url_keeps_it_and_is_told(webhook: Webhook) -> None:
    def own_url(pod: Json) -> None:
        pod["spec"]["containers"][1]["env"] = [{"name": "OPENAI_BASE_URL", "value": "http://vllm"}]

    response = await webhook.review(review(edit=own_url))
    pod = apply_patch(review(edit=own_url)["request"]["object"], response)

    exporter = env_of(app_containers(pod)[1])
    assert exporter["OPENAI_BASE_URL"]["value"] == "http://vllm"
    assert "OPENAI_API_KEY" not in exporter  # a placeholder would break its direct calls
    assert response["warnings"] == [
        "sidegate: container metrics-exporter keeps its OPENAI_BASE_URL"
    ]


async def test_provider_secrets_and_public_keys_are_mounted_in_the_sidecar_only(
    webhook: Webhook,
) -> None:
    pod = await webhook.mutate(review())

    sidecar = the_sidecar(pod)
    assert sidecar["envFrom"] == [{"secretRef": {"name": "llm-provider-keys", "optional": True}}]
    mounts = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
    assert mounts["/etc/sidegate/keys"] == "sidegate-keys"
    for container in app_containers(pod):
        assert "envFrom" not in container
        assert all(m["name"].startswith("kube-api-access") for m in container["volumeMounts"])


async def test_the_public_keys_file_holds_the_configured_keys(webhook: Webhook) -> None:
    pod = await webhook.mutate(review())

    sidecar = the_sidecar(pod)
    keys_file = env_of(sidecar)["SIDEGATE_PUBLIC_KEYS_FILE"]["value"]
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "sidegate-keys")
    item = volume["downwardAPI"]["items"][0]
    assert keys_file == f"/etc/sidegate/keys/{item['path']}"
    assert item["fieldRef"]["fieldPath"] == "metadata.annotations['sidegate.io/public-keys']"
    annotation = pod["metadata"]["annotations"]["sidegate.io/public-keys"]
    assert annotation.splitlines() == list(webhook.config.public_keys.keys)


async def test_sidecar_runs_hardened(webhook: Webhook) -> None:
    pod = await webhook.mutate(review())

    context = the_sidecar(pod)["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] > 0
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}


async def test_sidecar_has_resources_probes_and_writable_state(webhook: Webhook) -> None:
    pod = await webhook.mutate(review())

    sidecar = the_sidecar(pod)
    assert sidecar["resources"]["requests"] == {"cpu": "50m", "memory": "96Mi"}
    assert sidecar["ports"] == [{"name": "sidegate-admin", "containerPort": 4001}]
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "sidegate-admin"}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "sidegate-admin"}
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "sidegate-admin"}
    assert env_of(sidecar)["SIDEGATE_STATE_DIR"]["value"] == "/var/lib/sidegate"
    state = next(v for v in pod["spec"]["volumes"] if v["name"] == "sidegate-state")
    assert "emptyDir" in state


async def test_workload_identity_reaches_the_sidecar_through_the_downward_api(
    webhook: Webhook,
) -> None:
    pod = await webhook.mutate(review())

    env = env_of(the_sidecar(pod))
    fields = {
        name: env[name]["valueFrom"]["fieldRef"]["fieldPath"]
        for name in env
        if "valueFrom" in env[name]
    }
    assert fields == {
        "SIDEGATE_NAMESPACE": "metadata.namespace",
        "SIDEGATE_POD": "metadata.name",
        "SIDEGATE_SERVICE_ACCOUNT": "spec.serviceAccountName",
        "SIDEGATE_APP": "metadata.labels['app.kubernetes.io/name']",
        "SIDEGATE_TENANT": "metadata.namespace",
    }
    assert env["SIDEGATE_ENVIRONMENT"]["value"] == "prod"  # from the namespace setting


async def test_the_sidecar_understands_the_environment_it_is_given(
    webhook: Webhook, tmp_path: Path
) -> None:
    pod = await webhook.mutate(review())
    pod_facts = {
        "metadata.namespace": "payments",
        "metadata.name": "checkout-7d9c6b8f5d-x2x9q",
        "spec.serviceAccountName": "checkout",
        "metadata.labels['app.kubernetes.io/name']": "checkout",
    }
    environ = {}
    for var in the_sidecar(pod)["env"]:
        ref = var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        environ[var["name"]] = pod_facts[ref] if ref else var["value"]
    keys_file = tmp_path / "public-keys"
    keys_file.write_text(pod["metadata"]["annotations"]["sidegate.io/public-keys"])
    environ["SIDEGATE_PUBLIC_KEYS_FILE"] = str(keys_file)

    settings = from_env(environ)

    assert (settings.host, settings.port) == ("127.0.0.1", 4000)
    assert settings.admin_listen == "0.0.0.0:4001"
    assert settings.public_keys == webhook.config.public_keys.keys
    assert settings.nats_url == webhook.config.nats_url
    assert str(settings.state_dir) == "/var/lib/sidegate"
    workload = settings.workload
    assert (workload.namespace, workload.app, workload.tenant) == (
        "payments",
        "checkout",
        "payments",
    )
    assert (workload.pod, workload.service_account) == (pod_facts["metadata.name"], "checkout")
    assert workload.environment == "prod"


async def test_termination_grace_lets_the_usage_spool_drain(webhook: Webhook) -> None:
    pod = await webhook.mutate(review())

    assert pod["spec"]["terminationGracePeriodSeconds"] == 45


async def test_an_already_injected_pod_is_never_injected_twice(webhook: Webhook) -> None:
    once = await webhook.mutate(review())

    response = await webhook.review(review_of(once))

    assert "patch" not in response
    assert len(sidecars(apply_patch(once, response))) == 1


async def test_reinvocation_gives_a_container_added_later_the_env_only(webhook: Webhook) -> None:
    once = await webhook.mutate(review())
    once["spec"]["containers"].append({"name": "added-by-another-webhook", "image": "x"})

    twice = apply_patch(once, await webhook.review(review_of(once)))

    assert len(sidecars(twice)) == 1
    assert set(APP_ENV) <= env_of(twice["spec"]["containers"][-1]).keys()
    assert len(twice["spec"]["volumes"]) == len(once["spec"]["volumes"])


async def test_an_opted_out_pod_is_admitted_unchanged(webhook: Webhook) -> None:
    response = await webhook.review(review(annotations={"sidegate.io/inject": "false"}))

    assert response["allowed"] is True
    assert "patch" not in response


async def test_updates_are_admitted_unchanged(webhook: Webhook) -> None:
    response = await webhook.review(review(operation="UPDATE"))

    assert response == {"uid": review()["request"]["uid"], "allowed": True}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "malformed AdmissionReview"),
        (b"[]", "malformed AdmissionReview: Expected `object`, got `array`"),
        (
            json.dumps(
                {"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}
            ).encode(),
            "expected apiVersion admission.k8s.io/v1",
        ),
        (
            json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(),
            "missing `request`",
        ),
        (
            json.dumps(
                {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}
            ).encode(),
            "missing required field `uid`",
        ),
    ],
    ids=["not-json", "not-an-object", "v1beta1", "no-request", "no-uid"],
)
async def test_a_malformed_review_gets_400_with_a_clear_message(
    webhook: Webhook, body: bytes, message: str
) -> None:
    status, reply = await webhook.post(body)

    assert status == 400
    assert message in reply["error"]["message"]


async def test_a_pod_the_webhook_cannot_read_is_allowed_with_a_warning(webhook: Webhook) -> None:
    def break_containers(pod: Json) -> None:
        pod["spec"]["containers"] = "not-a-list"

    response = await webhook.review(review(edit=break_containers))

    assert response["allowed"] is True
    assert "patch" not in response
    assert response["warnings"][0].startswith("sidegate: pod not understood")


async def test_webhook_serves_health_and_metrics_over_tls(webhook: Webhook) -> None:
    await webhook.review(review())

    async with webhook.session.get(f"{webhook.url}/healthz") as health:
        assert health.status == 200
    async with webhook.session.get(f"{webhook.url}/metrics") as metrics:
        text = await metrics.text()
    assert 'sidegate_webhook_reviews_total{outcome="injected"}' in text


async def test_a_rotated_certificate_is_served_without_a_restart(start: Any, tls: Tls) -> None:
    webhook = await start(reload_interval_s=0.05)
    rotated = tls.issue()

    async def served_serial() -> int:
        host, port = webhook.url.removeprefix("https://").split(":")
        _, writer = await asyncio.open_connection(host, int(port), ssl=tls.client_context())
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        await writer.wait_closed()
        return x509.load_der_x509_certificate(der).serial_number

    for _ in range(100):
        if await served_serial() == rotated.serial_number:
            break
        await asyncio.sleep(0.05)
    assert await served_serial() == rotated.serial_number

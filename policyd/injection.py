"""Sidecar injection as pure logic: the injector config and an admitted pod in, a JSONPatch out.

Nothing here does I/O. `Injector` builds the sidecar's container template once from the config;
`Injector.review` turns one pod into a `Decision` (patch operations, warnings, a reason), so the
webhook stays a thin HTTP shell and every rule can be tested without a server.

The patch converges instead of appending blindly: the API server may call a mutating webhook
twice (reinvocationPolicy: IfNeeded), so a pod that already carries the sidecar only gets the
app-container environment it still lacks, and a second call on the same pod adds nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import msgspec

if TYPE_CHECKING:
    # Only for annotations: the config lives with the webhook that loads it.
    from policyd.webhook import InjectorConfig

# --- The admitted pod: a view of the few fields injection reads; unknown fields pass ---


class _View(msgspec.Struct, frozen=True, rename="camel"):
    """Base for pod views."""


class EnvVar(_View, frozen=True):
    name: str
    value: str | None = None


class Container(_View, frozen=True):
    name: str
    env: tuple[EnvVar, ...] = ()
    env_from: tuple[msgspec.Raw, ...] = ()  # only its presence matters


class Volume(_View, frozen=True):
    name: str


class PodMeta(_View, frozen=True):
    name: str = ""
    generate_name: str = ""
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


class PodSpec(_View, frozen=True):
    containers: tuple[Container, ...]
    init_containers: tuple[Container, ...] = ()
    volumes: tuple[Volume, ...] = ()
    host_network: bool = False
    termination_grace_period_seconds: int | None = None


class Pod(_View, frozen=True):
    spec: PodSpec
    metadata: PodMeta = msgspec.field(default_factory=PodMeta)


pod_decoder = msgspec.json.Decoder(Pod)

# --- The result ---


class Op(msgspec.Struct, frozen=True):
    """One RFC 6902 operation. Injection only ever adds."""

    op: Literal["add"]
    path: str
    value: Any


def _add(path: str, value: Any) -> Op:
    return Op("add", path, value)


Reason = Literal[
    "injected",
    "completed",  # a re-invocation added app env only
    "already injected",
    "opted out",
    "host network",
    "name conflict",
    "not understood",  # set by the webhook: the object did not decode as a pod
    "internal error",  # set by the webhook: patch building raised
]


class Decision(msgspec.Struct, frozen=True):
    """What to answer: patch operations (possibly none), warnings for the user, and why."""

    reason: Reason
    patch: tuple[Op, ...] = ()
    warnings: tuple[str, ...] = ()


# --- The injector ---

STATE_DIR = "/var/lib/sidegate"
KEYS_DIR = "/etc/sidegate/keys"
KEYS_FILE = "public-keys"
PLACEHOLDER_KEY = "sidegate"
OPT_OUT_VALUES = frozenset({"false", "disabled", "no", "off"})
APP_LABELS = ("app.kubernetes.io/name", "app")

_VOLUME_STATE = "sidegate-state"
_VOLUME_KEYS = "sidegate-keys"
_VOLUME_TMP = "sidegate-tmp"

# Without an admin port the sidecar listens on loopback only and kubelet HTTP probes dial the
# pod IP, so probes exec a bare interpreter (`-I -S` skip site-packages) instead.
_PROBE_SCRIPT = "import urllib.request as u; u.urlopen('http://127.0.0.1:{port}{path}', timeout=2)"
ADMIN_PORT_NAME = "sidegate-admin"  # Prometheus (the chart's PodMonitor) scrapes it by name


def _pointer(token: str) -> str:
    """Escape one JSON Pointer token (RFC 6901): annotation keys contain '/'."""
    return token.replace("~", "~0").replace("/", "~1")


def _field_env(name: str, field_path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


def _probe(config: InjectorConfig, path: str, *, period_s: int, failures: int) -> dict[str, Any]:
    check: dict[str, Any]
    if config.admin_port is not None:
        check = {"httpGet": {"path": path, "port": ADMIN_PORT_NAME}}
    else:
        script = _PROBE_SCRIPT.format(port=config.port, path=path)
        check = {"exec": {"command": ["python", "-I", "-S", "-c", script]}}
    return {
        **check,
        "periodSeconds": period_s,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


class Injector:
    """Builds the sidecar template once per config; `review` is cheap per pod."""

    def __init__(self, config: InjectorConfig) -> None:
        self.config = config
        names = config.annotations
        self._own_volumes = frozenset({_VOLUME_STATE, _VOLUME_KEYS, _VOLUME_TMP})
        self._volumes = (
            {"name": _VOLUME_STATE, "emptyDir": {"sizeLimit": config.state_size_limit}},
            {"name": _VOLUME_TMP, "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
            {"name": _VOLUME_KEYS, **self._keys_source(config)},
        )
        static_env = [
            {"name": "SIDEGATE_LISTEN", "value": f"127.0.0.1:{config.port}"},
            {"name": "SIDEGATE_NATS_URL", "value": config.nats_url},
            {"name": "SIDEGATE_STATE_DIR", "value": STATE_DIR},
            {"name": "SIDEGATE_PUBLIC_KEYS_FILE", "value": f"{KEYS_DIR}/{KEYS_FILE}"},
            _field_env("SIDEGATE_NAMESPACE", "metadata.namespace"),
            _field_env("SIDEGATE_POD", "metadata.name"),
            _field_env("SIDEGATE_SERVICE_ACCOUNT", "spec.serviceAccountName"),
            *({"name": k, "value": v} for k, v in sorted(config.extra_env.items())),
        ]
        if config.admin_port is not None:
            admin = {"name": "SIDEGATE_ADMIN_LISTEN", "value": f"0.0.0.0:{config.admin_port}"}
            static_env.insert(1, admin)
        self._static_env = tuple(static_env)
        self._container = {
            "name": config.container_name,
            "image": config.image,
            "imagePullPolicy": config.image_pull_policy,
            "args": ["sidecar"],
            **(
                {"ports": [{"name": ADMIN_PORT_NAME, "containerPort": config.admin_port}]}
                if config.admin_port is not None
                else {}
            ),
            "resources": {
                "requests": dict(config.resources.requests),
                "limits": dict(config.resources.limits),
            },
            "volumeMounts": [
                {"name": _VOLUME_STATE, "mountPath": STATE_DIR},
                {"name": _VOLUME_TMP, "mountPath": "/tmp"},
                {"name": _VOLUME_KEYS, "mountPath": KEYS_DIR, "readOnly": True},
            ],
            # Started means listening: with native sidecars the app containers wait for this.
            "startupProbe": _probe(config, "/healthz", period_s=1, failures=60),
            "livenessProbe": _probe(config, "/healthz", period_s=10, failures=3),
            # Ready means a verified bundle is active; the pod is not Ready before that.
            "readinessProbe": _probe(config, "/readyz", period_s=5, failures=2),
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": config.run_as_user,
                "runAsGroup": config.run_as_group,
                "readOnlyRootFilesystem": True,
                "allowPrivilegeEscalation": False,
                "privileged": False,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }
        if config.provider_secrets:
            secrets = config.provider_secrets
            refs = [{"secretRef": {"name": name, "optional": True}} for name in secrets]
            self._container["envFrom"] = refs
        if config.native_sidecars:
            self._container["restartPolicy"] = "Always"
        base = f"http://127.0.0.1:{config.port}"
        # (variable, value, the base-URL variable it belongs with, or None for a base URL)
        self._app_env: tuple[tuple[str, str, str | None], ...] = (
            ("OPENAI_BASE_URL", f"{base}/v1", None),
            ("ANTHROPIC_BASE_URL", base, None),
            ("OPENAI_API_KEY", PLACEHOLDER_KEY, "OPENAI_BASE_URL"),
            ("ANTHROPIC_API_KEY", PLACEHOLDER_KEY, "ANTHROPIC_BASE_URL"),
        )
        self._opt_out_key = names.inject

    @staticmethod
    def _keys_source(config: InjectorConfig) -> dict[str, Any]:
        keys = config.public_keys
        items = [{"key": keys.item, "path": KEYS_FILE}]
        if keys.config_map is not None:
            return {"configMap": {"name": keys.config_map, "items": items, "optional": True}}
        if keys.secret is not None:
            return {"secret": {"secretName": keys.secret, "items": items, "optional": True}}
        annotation = f"metadata.annotations['{config.annotations.public_keys}']"
        return {
            "downwardAPI": {"items": [{"path": KEYS_FILE, "fieldRef": {"fieldPath": annotation}}]}
        }

    # -- per pod ----------------------------------------------------------------------------

    def review(self, pod: Pod, *, namespace: str) -> Decision:
        """Decide how to patch one pod being created in `namespace`."""
        meta, spec = pod.metadata, pod.spec
        if meta.annotations.get(self._opt_out_key, "").strip().lower() in OPT_OUT_VALUES:
            return Decision("opted out")
        name = self.config.container_name
        present = any(c.name == name for c in (*spec.init_containers, *spec.containers))
        warnings: list[str] = []
        env_ops = self._app_env_ops(spec.containers, warnings)
        if present:
            return Decision("completed" if env_ops else "already injected", tuple(env_ops))
        if spec.host_network:
            # Every hostNetwork pod on a node would share 127.0.0.1:<port>.
            return Decision("host network", (), ("sidegate: not injected into a hostNetwork pod",))
        clash = sorted(self._own_volumes.intersection(v.name for v in spec.volumes))
        if clash:
            message = f"sidegate: not injected, volume name {clash[0]} already in use"
            return Decision("name conflict", (), (message,))
        ops = [*env_ops, *self._sidecar_ops(pod, namespace), *self._pod_ops(pod)]
        return Decision("injected", tuple(ops), tuple(warnings))

    def _app_env_ops(self, containers: tuple[Container, ...], warnings: list[str]) -> list[Op]:
        ops: list[Op] = []
        for index, container in enumerate(containers):
            if container.name == self.config.container_name:
                continue
            have = {e.name: e.value for e in container.env}
            kept: set[str] = set()
            add: list[dict[str, str]] = []
            for var, value, base_var in self._app_env:
                if var in have:
                    if base_var is None and have[var] != value:
                        kept.add(var)
                        warnings.append(f"sidegate: container {container.name} keeps its {var}")
                    continue
                # A placeholder key next to the app's own base URL would break its direct calls;
                # next to envFrom it could shadow a real key, since env wins over envFrom.
                if base_var is not None and (base_var in kept or container.env_from):
                    continue
                add.append({"name": var, "value": value})
            if not add:
                continue
            path = f"/spec/containers/{index}/env"
            if container.env:
                ops.extend(_add(f"{path}/-", item) for item in add)
            else:
                ops.append(_add(path, add))
        return ops

    def _sidecar_env(self, meta: PodMeta, namespace: str) -> list[dict[str, Any]]:
        names = self.config.annotations
        env = list(self._static_env)
        app_label = next((label for label in APP_LABELS if label in meta.labels), None)
        if app_label is not None:
            env.append(_field_env("SIDEGATE_APP", f"metadata.labels['{app_label}']"))
        if names.environment in meta.annotations:
            env.append(
                _field_env("SIDEGATE_ENVIRONMENT", f"metadata.annotations['{names.environment}']")
            )
        elif namespace in self.config.environments:
            env.append(
                {"name": "SIDEGATE_ENVIRONMENT", "value": self.config.environments[namespace]}
            )
        if names.tenant in meta.annotations:
            env.append(_field_env("SIDEGATE_TENANT", f"metadata.annotations['{names.tenant}']"))
        else:
            env.append(_field_env("SIDEGATE_TENANT", "metadata.namespace"))
        return env

    def _sidecar_ops(self, pod: Pod, namespace: str) -> list[Op]:
        container = {**self._container, "env": self._sidecar_env(pod.metadata, namespace)}
        ops: list[Op] = []
        if self.config.native_sidecars:
            # Appended, so ordinary init containers (setup, mesh init) still run first.
            if pod.spec.init_containers:
                ops.append(_add("/spec/initContainers/-", container))
            else:
                ops.append(_add("/spec/initContainers", [container]))
        else:
            # Appended, so `kubectl logs` and `exec` keep defaulting to the app container.
            ops.append(_add("/spec/containers/-", container))
        if pod.spec.volumes:
            ops.extend(_add("/spec/volumes/-", volume) for volume in self._volumes)
        else:
            ops.append(_add("/spec/volumes", list(self._volumes)))
        return ops

    def _pod_ops(self, pod: Pod) -> list[Op]:
        config, meta = self.config, pod.metadata
        annotations = {config.annotations.status: "injected"}
        if config.public_keys.keys:
            annotations[config.annotations.public_keys] = "\n".join(config.public_keys.keys) + "\n"
        ops: list[Op] = []
        if meta.annotations:
            ops.extend(
                _add(f"/metadata/annotations/{_pointer(key)}", value)
                for key, value in annotations.items()
            )
        else:
            ops.append(_add("/metadata/annotations", annotations))
        grace = pod.spec.termination_grace_period_seconds
        # Only ever raised: an app that asked for longer keeps its own grace.
        if grace is None or grace < config.termination_grace_seconds:
            ops.append(
                _add("/spec/terminationGracePeriodSeconds", config.termination_grace_seconds)
            )
        return ops

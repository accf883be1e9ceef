"""Pure builders of the model pods: labels, container, probes, resources, GPU scheduling, security.

Every function returns plain Kubernetes data (camelCase dicts, exactly as applied), so the same pod
template serves the plain Deployment path and Seldon's `componentSpecs`, and the unit tests need no
Pulumi engine. Components only wire these together.
"""

from __future__ import annotations

import math
from typing import Any

from infra.config import (
    FRONT_PROXY_PORTS, AccessConfig, ExplainConfig, FeedbackConfig, GpuConfig, Identity, ModelConfig, PodConfig,
    SecretValue, ServingConfig, dns_label,
)
from service.admission import AdmissionLimits
from service.explain import ExplainSettings
from service.front_proxy import FrontProxy
from service.names import TELEMETRY_OFF
from service.prediction_ids import KEY_ENV, MAX_AGE_ENV
from service.profiles import REFERENCE_URI_ENV
from service.settings import FRONT_PROXY_STATS_PORT_ENV, BatchLimits

PORT_NAME = "http"
WORKERS_PORT_NAME = "workers"  # the server's HTTP port behind a front proxy (serving.frontProxy)
WORKERS_PORT, PROXY_STATS_PORT = FRONT_PROXY_PORTS
FRONT_PROXY_CONTAINER = "front-proxy"
FRONT_PROXY_CONFIG_ENV = "MLSERVE_FRONT_PROXY_CONFIG"
# The descriptors HAProxy plans for (two per client connection: 4,096 clients per pod). Container runtimes give a
# hard RLIMIT_NOFILE far above it, and HAProxy raises its own soft limit to what it needs.
POD_FD_LIMIT = 8256
FRONT_PROXY_RESOURCES = {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"cpu": "500m", "memory": "128Mi"}}
GRPC_PORT_NAME = "grpc"  # the name Seldon's operator looks for (operator/constants: GrpcPortName)
# bentoml_cli/serve.py (1.4.39): `bentoml serve --port` reads BENTOML_PORT (default 3000); the image's
# entrypoint runs `bentoml serve` without --port, so this variable alone decides where the server listens.
BENTOML_PORT_ENV = "BENTOML_PORT"
VARIANT_LABEL = "mlserve.io/variant"
# The BentoML image runs as the `bentoml` user it creates; infra/image_context.py gives it this uid/gid (BentoML's own
# default, 1034, is below 10000, where it may collide with a host's users: checkov CKV_K8S_40). A numeric id lets
# the kubelet enforce runAsNonRoot.
BENTO_UID = 10001
TMP_VOLUME = "tmp"
PROBE_PERIOD_SECONDS = 5
SIGNING_SECRET_DATA_KEY = "key"

Manifest = dict[str, Any]


def container_name(model: ModelConfig) -> str:
    """The model-server container's name: `model.name` in DNS-1123 form. On Seldon it is also the graph node's
    name, which the executor resolves OIP model names against (see infra/seldon.py)."""
    return dns_label(model.name)


def resource_name(identity: Identity, variant: str) -> str:
    """Kubernetes name of a variant's workload objects, e.g. `churn-model-champion`."""
    return f"{identity.app_name}-{variant}"


def selector_labels(identity: Identity, variant: str) -> dict[str, str]:
    """The labels that pick one variant's pods; immutable once a Deployment exists."""
    return {
        "app.kubernetes.io/name": identity.app_name,
        "app.kubernetes.io/instance": resource_name(identity, variant),
        VARIANT_LABEL: variant,
    }


def standard_labels(identity: Identity, variant: str | None = None) -> dict[str, str]:
    """Recommended `app.kubernetes.io/*` labels, plus the variant for per-variant objects."""
    labels = {
        "app.kubernetes.io/name": identity.app_name,
        "app.kubernetes.io/part-of": "mlserve",
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/managed-by": "pulumi",
        "mlserve.io/stack": identity.stack,
    }
    if variant is not None:
        labels.update(selector_labels(identity, variant))
    return labels


def container_ports(serving: ServingConfig) -> list[Manifest]:
    """The HTTP port (REST, probes, /metrics) and the OIP v2 gRPC port, each named. Behind a front proxy the HTTP
    port is the proxy's, and the server's own is `WORKERS_PORT_NAME`."""
    http = ({"name": WORKERS_PORT_NAME, "containerPort": WORKERS_PORT, "protocol": "TCP"} if serving.front_proxy
            else {"name": PORT_NAME, "containerPort": serving.port, "protocol": "TCP"})
    return [http, {"name": GRPC_PORT_NAME, "containerPort": serving.grpc_port, "protocol": "TCP"}]


def server_port(serving: ServingConfig) -> int:
    """Where the model server listens for HTTP: serving.port, or behind a front proxy `WORKERS_PORT`."""
    return WORKERS_PORT if serving.front_proxy else serving.port


def admission_limits(serving: ServingConfig) -> AdmissionLimits:
    """The server's per-worker admission limits (service/admission.py) from stack config ``serving.*``."""
    return AdmissionLimits(
        max_concurrency=serving.max_concurrency, max_queue=serving.max_queue,
        queue_timeout=serving.queue_timeout_seconds, body_timeout=serving.body_timeout_seconds,
    )


def front_proxy_container(serving: ServingConfig, image: Any) -> Manifest:
    """HAProxy in front of the model server (service/front_proxy.py), from the same image: on serving.port, the
    serving.* limits applied before any Python runs. Its configuration travels in an environment variable, so a
    change to it rolls the pods as any other change of the pod template does (a ConfigMap's would not)."""
    proxy = FrontProxy("0.0.0.0", serving.port, WORKERS_PORT, PROXY_STATS_PORT, workers=1,
                       limits=admission_limits(serving))
    http_get = {"port": PORT_NAME, "scheme": "HTTP"}
    return {
        "name": FRONT_PROXY_CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh", "-c",
                    f'printf "%s" "${FRONT_PROXY_CONFIG_ENV}" > /tmp/haproxy.cfg && exec haproxy -db -f /tmp/haproxy.cfg'],
        "env": [{"name": FRONT_PROXY_CONFIG_ENV, "value": proxy.config(fd_limit=POD_FD_LIMIT)}],
        "ports": [{"name": PORT_NAME, "containerPort": serving.port, "protocol": "TCP"}],
        # Ready when the server behind it is (the proxy passes /readyz on); alive while it accepts connections, so
        # a server still loading its model never gets the proxy restarted.
        "readinessProbe": {"httpGet": {**http_get, "path": "/readyz"}, "periodSeconds": PROBE_PERIOD_SECONDS,
                           "timeoutSeconds": 3, "failureThreshold": 2},
        "livenessProbe": {"tcpSocket": {"port": PORT_NAME}, "periodSeconds": 10, "timeoutSeconds": 3,
                          "failureThreshold": 3},
        "resources": FRONT_PROXY_RESOURCES,
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": TMP_VOLUME, "mountPath": "/tmp"}],
    }
# AccessConfig field -> the variable MLflow (mlflow/environment_variables.py) or the store's client reads.
CREDENTIAL_ENV = {
    "mlflow_tracking_token": "MLFLOW_TRACKING_TOKEN",
    "mlflow_tracking_username": "MLFLOW_TRACKING_USERNAME",
    "mlflow_tracking_password": "MLFLOW_TRACKING_PASSWORD",
    "aws_access_key_id": "AWS_ACCESS_KEY_ID",
    "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "azure_storage_connection_string": "AZURE_STORAGE_CONNECTION_STRING",
}


def credentials(access: AccessConfig) -> dict[str, SecretValue]:
    """The credentials this stack sets, by environment variable name."""
    return {
        env: value for field_name, env in CREDENTIAL_ENV.items() if (value := getattr(access, field_name)) is not None
    }


def secret_name(identity: Identity) -> str:
    return f"{identity.app_name}-model-access"


def service_account_name(identity: Identity) -> str:
    return f"{identity.app_name}-model"


def access_env(identity: Identity, access: AccessConfig) -> list[Manifest]:
    """Pod environment for registry and store access: plain `access.env`, then each credential by reference."""
    plain = [dict(zip(("name", "value"), entry.split("=", 1))) for entry in access.env]
    by_reference = [
        {"name": env, "valueFrom": {"secretKeyRef": {"name": secret_name(identity), "key": env}}} for env in credentials(access)
    ]
    return plain + by_reference


def signing_secret_name(identity: Identity) -> str:
    """The Secret holding the key that signs prediction ids (made by `infra.feedback`)."""
    return f"{identity.app_name}-prediction-ids"


def feedback_env(identity: Identity, feedback: FeedbackConfig) -> list[Manifest]:
    """The signing key (by reference to its Secret) and feedback's maximum age; empty when feedback is off."""
    if not feedback.enabled:
        return []
    return [
        {"name": KEY_ENV,
         "valueFrom": {"secretKeyRef": {"name": signing_secret_name(identity), "key": SIGNING_SECRET_DATA_KEY}}},
        {"name": MAX_AGE_ENV, "value": str(feedback.max_age_days * 86400)},
    ]


def container_env(pod: PodConfig, variant: str) -> list[Manifest]:
    """What the model server reads: the model to load, its variant name, the registry, the signing key; telemetry off."""
    model, serving = pod.model, pod.serving
    env = {
        "MODEL_URI": model.uri(variant),
        "MODEL_VARIANT": variant,
        "MLFLOW_TRACKING_URI": model.tracking_uri,
        "MLSERVE_GRPC_PORT": str(serving.grpc_port),
        "MLSERVE_CLASSIFIER_OUTPUT": model.classifier_output,
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true" if model.allow_pickle_deserialization else "false",
        BENTOML_PORT_ENV: str(server_port(serving)),
        # Read-only root filesystem: everything BentoML and MLflow write goes to the tmp volume.
        "BENTOML_HOME": "/tmp/bentoml",
        "HOME": "/tmp",
        **TELEMETRY_OFF,
        **admission_env(serving),
        **batching_env(serving),
        **explain_env(pod.explain),
    }
    if serving.front_proxy:  # the first worker counts the proxy's refusals from its exporter (service/front_proxy.py)
        env[FRONT_PROXY_STATS_PORT_ENV] = str(PROXY_STATS_PORT)
    if pod.drift.reference_uri:  # only when set: stacks without it keep their pod spec unchanged
        env[REFERENCE_URI_ENV] = pod.drift.reference_uri
    plain = [{"name": name, "value": value} for name, value in env.items()]
    return plain + feedback_env(pod.identity, pod.feedback) + access_env(pod.identity, pod.access)


def admission_env(serving: ServingConfig) -> dict[str, str]:
    """The server's per-worker admission limits (service/admission.py) from stack config ``serving.*``."""
    limits = admission_limits(serving)
    return {AdmissionLimits.ENV[name]: f"{getattr(limits, name):g}" for name in AdmissionLimits.ENV}


def batching_env(serving: ServingConfig) -> dict[str, str]:
    """The server's adaptive batching bounds (service/batching.py) from stack config ``serving.*``."""
    limits = BatchLimits(max_batch_size=serving.max_batch_size, max_wait_ms=serving.max_batch_wait_ms)
    return {BatchLimits.ENV[name]: f"{getattr(limits, name):g}" for name in BatchLimits.ENV}


def explain_env(explain: ExplainConfig) -> dict[str, str]:
    """The server's /explain settings (service/explain.py) from stack config ``explain.*``."""
    settings = ExplainSettings(
        enabled=explain.enabled, background_uri=explain.background_uri,
        max_background_rows=explain.max_background_rows, max_rows=explain.max_rows,
        max_concurrency=explain.max_concurrency, max_queue=explain.max_queue,
        timeout_seconds=explain.timeout_seconds,
    )
    # An empty setting is left out, as its default: the API server drops an env var's empty `value`, so the
    # object read back would differ from the one applied and every preview would show a change.
    values = {name: getattr(settings, name) for name in ExplainSettings.ENV if getattr(settings, name) != ""}
    return {ExplainSettings.ENV[name]: ("true" if value else "false") if isinstance(value, bool)
            else value if isinstance(value, str) else f"{value:g}" for name, value in values.items()}


def probes(serving: ServingConfig) -> Manifest:
    """Liveness, readiness and a startup probe long enough for a slow model load, on the server's own port."""
    http_get = {"port": WORKERS_PORT_NAME if serving.front_proxy else PORT_NAME, "scheme": "HTTP"}
    startup_failures = math.ceil(serving.startup_timeout_seconds / PROBE_PERIOD_SECONDS)
    return {
        "startupProbe": {
            "httpGet": {**http_get, "path": "/livez"},
            "periodSeconds": PROBE_PERIOD_SECONDS,
            "timeoutSeconds": 3,
            "failureThreshold": startup_failures,
        },
        "livenessProbe": {
            "httpGet": {**http_get, "path": "/livez"},
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {**http_get, "path": "/readyz"},
            "periodSeconds": PROBE_PERIOD_SECONDS,
            "timeoutSeconds": 3,
            "failureThreshold": 2,
        },
    }


def resources(serving: ServingConfig, gpu: GpuConfig) -> Manifest:
    """Requests and limits; GPUs are extended resources, set as limits (requests default to them)."""
    limits: dict[str, Any] = {"cpu": serving.cpu_limit, "memory": serving.memory_limit}
    if gpu.enabled:
        limits[gpu.resource] = gpu.count
    return {
        "requests": {"cpu": serving.cpu_request, "memory": serving.memory_request},
        "limits": limits,
    }


def container_security_context() -> Manifest:
    """Pod Security Standards 'restricted': non-root, read-only root, no escalation, no capabilities."""
    return {
        "runAsNonRoot": True,
        "runAsUser": BENTO_UID,
        "runAsGroup": BENTO_UID,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context() -> Manifest:
    return {
        "runAsNonRoot": True,
        "runAsUser": BENTO_UID,
        "runAsGroup": BENTO_UID,
        "fsGroup": BENTO_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def gpu_scheduling(gpu: GpuConfig) -> Manifest:
    """Node selector and tolerations that put GPU pods on GPU nodes; empty when GPUs are off."""
    if not gpu.enabled:
        return {}
    tolerations = [{"key": gpu.resource, "operator": "Exists", "effect": "NoSchedule"}]
    for toleration in gpu.parsed_tolerations:
        entry: Manifest = {"key": toleration.key, "effect": toleration.effect}
        if toleration.value is None:
            entry["operator"] = "Exists"
        else:
            entry.update(operator="Equal", value=toleration.value)
        if entry not in tolerations:
            tolerations.append(entry)
    scheduling: Manifest = {"tolerations": tolerations}
    if gpu.node_selector:
        scheduling["nodeSelector"] = gpu.node_selector_labels
    return scheduling


def topology_spread(identity: Identity, variant: str) -> list[Manifest]:
    """Spread replicas across zones and nodes, preferring (not requiring) it so small clusters still schedule."""
    return [
        {
            "maxSkew": 1,
            "topologyKey": topology_key,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector_labels(identity, variant)},
        }
        for topology_key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
    ]


def model_container(pod: PodConfig, variant: str, image: Any) -> Manifest:
    """The BentoML model-server container of one variant; `image` is the digest reference (may be an Output)."""
    return {
        "name": container_name(pod.model),
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "ports": container_ports(pod.serving),
        "env": container_env(pod, variant),
        **probes(pod.serving),
        "resources": resources(pod.serving, pod.gpu),
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": TMP_VOLUME, "mountPath": "/tmp"}],
    }


def pod_spec(pod: PodConfig, variant: str, image: Any) -> Manifest:
    """The whole pod spec of one variant, shared by every path that runs model pods."""
    return {
        "containers": [model_container(pod, variant, image),
                       *([front_proxy_container(pod.serving, image)] if pod.serving.front_proxy else [])],
        "volumes": [{"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "1Gi"}}],
        "securityContext": pod_security_context(),
        "serviceAccountName": service_account_name(pod.identity),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "topologySpreadConstraints": topology_spread(pod.identity, variant),
        **gpu_scheduling(pod.gpu),
    }


def pod_template(pod: PodConfig, variant: str, image: Any) -> Manifest:
    """Pod template (labels + spec) for a Deployment or a Seldon predictor."""
    return {
        "metadata": {
            "labels": standard_labels(pod.identity, variant),
            "annotations": {"mlserve.io/model-uri": pod.model.uri(variant)},
        },
        "spec": pod_spec(pod, variant, image),
    }

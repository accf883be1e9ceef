"""Stack config, loaded into frozen dataclasses and checked before any resource exists.

Every key is declared once, in `Pulumi.yaml` (type, default, description). Stack files and
`pulumi config set --path` hold only overrides, nested under their first path segment
(`mlserve:traffic: {challengerWeight: 25}`) or flat (`mlserve:traffic.challengerWeight: 25`).
Values come from one of two places: the Pulumi runtime inside a real `pulumi up`/`preview`
(`values_from_pulumi`), or the project files themselves for `infra.render`, the rollout CLI and the
tests (`load_stack_config`). Either way `parse_config` checks every value and every cross-key rule and
raises one `ConfigError` listing all problems, each naming the key, the bad value and what is allowed.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass, field, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from infra.errors import ConfigError
from service.names import STACK_MODEL_URI
from service.quality import QUALITY_METRICS
from service.settings import CLASSIFIER_OUTPUTS  # the values the server accepts (a light module: no model code)

PROJECT_DIR = Path(__file__).resolve().parent.parent
NAMESPACE = "mlserve"

ROUTERS = ("service", "seldon", "gateway")
# Gateway API durations (GEP-2257), as the HTTPRoute CRD checks `sessionPersistence.absoluteTimeout`.
_GATEWAY_DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
# Ports of the executor Seldon adds to every predictor pod (REST and gRPC); our container must not take them.
SELDON_EXECUTOR_PORTS = (8000, 5001)
# With serving.frontProxy a model pod's server listens on the first port, behind HAProxy on serving.port, and HAProxy's
# Prometheus exporter on the second, on the pod's loopback (kubectl port-forward reaches it).
FRONT_PROXY_PORTS = (3080, 8405)
# Keys whose values are secrets (`pulumi config set --secret`): never echoed in a problem.
SECRET_KEYS = frozenset({"feedback.signingKey"})
# Artifact stores whose client packages the image can carry (image.artifactStoreClients); pins in infra/image_context.py.
ARTIFACT_STORES = ("s3", "gcs", "azure")
GPU_RESOURCES = ("nvidia.com/gpu", "amd.com/gpu", "gpu.intel.com/i915")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# What the rollout's label-free gate does when the variants predict significantly differently (rollout.divergence).
DIVERGENCE_ACTIONS = ("warn", "hold", "rollback")

# Kubernetes resource quantities: a decimal number with an optional binary or decimal SI suffix.
_QUANTITY = re.compile(r"^(\d+(\.\d+)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


# --------------------------------------------------------------------------------------------------
# Typed config
# --------------------------------------------------------------------------------------------------


def key(path: str, check: Callable[[Any], str | None] | None = None) -> Any:
    """Declare a dataclass field read from stack config key `path`, with an optional value check."""
    return field(metadata={"key": path, "check": check})


@dataclass(frozen=True)
class Toleration:
    """One Kubernetes toleration parsed from "KEY[=VALUE]:EFFECT"."""

    key: str
    value: str | None
    effect: str


@dataclass(frozen=True)
class SecretValue:
    """A credential from secret config. Its text never shows in a repr, a message or a rendered file; only
    `infra.access` reads `.text`, to put it into a Kubernetes Secret as a Pulumi secret."""

    text: str = field(repr=False)

    def __str__(self) -> str:
        return "[secret]"


# What a stack file holds for `pulumi config set --secret`: ciphertext only the Pulumi engine can decrypt.
ENCRYPTED = SecretValue("[encrypted in the stack file; known to pulumi up only]")


@dataclass(frozen=True)
class ModelConfig:
    name: str = key("model.name", lambda v: _non_empty(v))
    champion_uri: str = key("model.championUri", lambda v: _model_uri(v, required=True))
    challenger_uri: str = key("model.challengerUri", lambda v: _model_uri(v, required=False))
    tracking_uri: str = key("model.trackingUri", lambda v: _non_empty(v))
    classifier_output: str = key("model.classifierOutput", lambda v: _one_of(v, CLASSIFIER_OUTPUTS))
    allow_pickle_deserialization: bool = key("model.allowPickleDeserialization")

    @property
    def has_challenger(self) -> bool:
        return bool(self.challenger_uri)

    @property
    def variants(self) -> tuple[str, ...]:
        """The model variants this stack runs: the champion, and the challenger when one is configured."""
        return ("champion", "challenger") if self.has_challenger else ("champion",)

    def uri(self, variant: str) -> str:
        return self.champion_uri if variant == "champion" else self.challenger_uri


@dataclass(frozen=True)
class ImageConfig:
    repository: str = key("image.repository", lambda v: _image_repository(v))
    push: bool = key("image.push")
    platform: str = key("image.platform", lambda v: _one_of(v, ("linux/amd64", "linux/arm64")))
    reference: str = key("image.reference", lambda v: _image_reference(v))
    artifact_store_clients: tuple[str, ...] = key(
        "image.artifactStoreClients", lambda v: _each(v, lambda item: _one_of(item, ARTIFACT_STORES))
    )

    @property
    def registry(self) -> str | None:
        """The registry host of `repository`, or None when it names none (Docker Hub shorthand)."""
        first, _, rest = self.repository.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost"):
            return first
        return None


@dataclass(frozen=True)
class ServingConfig:
    port: int = key("serving.port", lambda v: _between(v, 1024, 65535))
    grpc_port: int = key("serving.grpcPort", lambda v: _between(v, 1024, 65535))
    replicas: int = key("serving.replicas", lambda v: _between(v, 1, 1000))
    cpu_request: str = key("serving.cpuRequest", lambda v: _quantity(v))
    cpu_limit: str = key("serving.cpuLimit", lambda v: _quantity(v))
    memory_request: str = key("serving.memoryRequest", lambda v: _quantity(v))
    memory_limit: str = key("serving.memoryLimit", lambda v: _quantity(v))
    startup_timeout_seconds: int = key("serving.startupTimeoutSeconds", lambda v: _between(v, 10, 3600))
    max_unavailable: int = key("serving.maxUnavailable", lambda v: _between(v, 1, 1000))
    max_concurrency: int = key("serving.maxConcurrency", lambda v: _between(v, 1, 100000))
    max_queue: int = key("serving.maxQueue", lambda v: _between(v, 0, 100000))
    queue_timeout_seconds: float = key("serving.queueTimeoutSeconds", lambda v: _between(v, 0.001, 600))
    body_timeout_seconds: float = key("serving.bodyTimeoutSeconds", lambda v: _between(v, 0.001, 600))
    max_batch_size: int = key("serving.maxBatchSize", lambda v: _between(v, 1, 100000))
    max_batch_wait_ms: float = key("serving.maxBatchWaitMs", lambda v: _between(v, 0, 10000))
    front_proxy: bool = key("serving.frontProxy")


@dataclass(frozen=True)
class GpuConfig:
    enabled: bool = key("gpu.enabled")
    resource: str = key("gpu.resource", lambda v: _one_of(v, GPU_RESOURCES))
    count: int = key("gpu.count", lambda v: _between(v, 1, 16))
    node_selector: tuple[str, ...] = key("gpu.nodeSelector", lambda v: _each(v, _node_selector_entry))
    tolerations: tuple[str, ...] = key("gpu.tolerations", lambda v: _each(v, _toleration_entry))
    max_gpus: int = key("gpu.maxGPUs", lambda v: _between(v, 0, 100000))

    @property
    def node_selector_labels(self) -> dict[str, str]:
        return dict(entry.split("=", 1) for entry in self.node_selector)

    @property
    def parsed_tolerations(self) -> tuple[Toleration, ...]:
        return tuple(parse_toleration(entry) for entry in self.tolerations)


@dataclass(frozen=True)
class AutoscalingConfig:
    enabled: bool = key("autoscaling.enabled")
    min_replicas: int = key("autoscaling.minReplicas", lambda v: _between(v, 1, 1000))
    max_replicas: int = key("autoscaling.maxReplicas", lambda v: _between(v, 1, 1000))
    target_cpu_utilization: int = key("autoscaling.targetCpuUtilization", lambda v: _between(v, 1, 100))
    target_memory_utilization: int = key("autoscaling.targetMemoryUtilization", lambda v: _between(v, 1, 100))
    target_requests_per_second: int = key("autoscaling.targetRequestsPerSecond", lambda v: _between(v, 1, 100000))


@dataclass(frozen=True)
class LoadBalancerConfig:
    port: int = key("loadBalancer.port", lambda v: _between(v, 1, 65535))
    source_ranges: tuple[str, ...] = key("loadBalancer.sourceRanges", lambda v: _each(v, _cidr))


@dataclass(frozen=True)
class TrafficConfig:
    router: str = key("traffic.router", lambda v: _one_of(v, ROUTERS))
    challenger_weight: int = key("traffic.challengerWeight", lambda v: _between(v, 0, 100))
    shadow: bool = key("traffic.shadow")
    shadow_percent: int = key("traffic.shadowPercent", lambda v: _between(v, 1, 100))
    gateway: str = key("traffic.gateway", lambda v: _gateway_reference(v))
    create_gateway: bool = key("traffic.createGateway")
    gateway_class_name: str = key("traffic.gatewayClassName", lambda v: _dns_subdomain(v) if v else None)
    http_listener: str = key("traffic.httpListener", lambda v: _dns_subdomain(v))
    grpc_listener: str = key("traffic.grpcListener", lambda v: _dns_subdomain(v))
    sticky: bool = key("traffic.sticky")
    sticky_timeout: str = key("traffic.stickyTimeout", lambda v: _gateway_duration(v) if v else None)

    @property
    def champion_weight(self) -> int:
        return 100 - self.challenger_weight

    @property
    def gateway_namespace(self) -> str:
        """The namespace of the Gateway the routes attach to (`traffic.gateway` is NAMESPACE/NAME)."""
        return self.gateway.partition("/")[0]

    @property
    def gateway_name(self) -> str:
        return self.gateway.partition("/")[2]


@dataclass(frozen=True)
class AccessConfig:
    """How model pods reach the registry and the artifact store: credentials (secret config), plain
    environment, and the annotations of their ServiceAccount (workload identity)."""

    mlflow_tracking_token: SecretValue | None = key("access.mlflowTrackingToken")
    mlflow_tracking_username: SecretValue | None = key("access.mlflowTrackingUsername")
    mlflow_tracking_password: SecretValue | None = key("access.mlflowTrackingPassword")
    aws_access_key_id: SecretValue | None = key("access.awsAccessKeyId")
    aws_secret_access_key: SecretValue | None = key("access.awsSecretAccessKey")
    azure_storage_connection_string: SecretValue | None = key("access.azureStorageConnectionString")
    env: tuple[str, ...] = key("access.env", lambda v: _each(v, _env_entry))
    service_account_annotations: tuple[str, ...] = key(
        "access.serviceAccountAnnotations", lambda v: _each(v, _annotation_entry)
    )


@dataclass(frozen=True)
class SeldonConfig:
    executor_cpu_request: str = key("seldon.executorCpuRequest", lambda v: _quantity(v))
    executor_cpu_limit: str = key("seldon.executorCpuLimit", lambda v: _quantity(v))
    executor_memory_request: str = key("seldon.executorMemoryRequest", lambda v: _quantity(v))
    executor_memory_limit: str = key("seldon.executorMemoryLimit", lambda v: _quantity(v))


@dataclass(frozen=True)
class PlatformConfig:
    install_seldon: bool = key("platform.installSeldon")
    install_istio: bool = key("platform.installIstio")
    seldon_namespace: str = key("platform.seldonNamespace", lambda v: _dns_label(v))
    istio_namespace: str = key("platform.istioNamespace", lambda v: _dns_label(v))


@dataclass(frozen=True)
class RolloutConfig:
    steps: tuple[int, ...] = key("rollout.steps", lambda v: _rollout_steps(v))
    interval_seconds: int = key("rollout.intervalSeconds", lambda v: _between(v, 1, 86400))
    failure_threshold: int = key("rollout.failureThreshold", lambda v: _between(v, 1, 100))
    consecutive_error_limit: int = key("rollout.consecutiveErrorLimit", lambda v: _between(v, 1, 10**6))
    inconclusive_limit: int = key("rollout.inconclusiveLimit", lambda v: _between(v, 1, 10**6))
    progress_deadline_seconds: int = key("rollout.progressDeadlineSeconds", lambda v: _between(v, 1, 10**7))
    min_requests: int = key("rollout.minRequests", lambda v: _between(v, 1, 10**9))
    max_error_rate_percent: float = key("rollout.maxErrorRatePercent", lambda v: _between(v, 0, 100))
    max_p95_latency_ms: int = key("rollout.maxP95LatencyMs", lambda v: _between(v, 1, 600000))
    prometheus_url: str = key("rollout.prometheusUrl", lambda v: _url(v))
    quality_metric: str = key("rollout.quality.metric", lambda v: _one_of(v, tuple(QUALITY_METRICS)))
    quality_max_degradation: float = key("rollout.quality.maxDegradation", lambda v: _between(v, 0, 1e9))
    quality_min_feedback: int = key("rollout.quality.minFeedback", lambda v: _between(v, 30, 10**9))
    quality_required_for_promotion: bool = key("rollout.quality.requiredForPromotion")
    divergence_action: str = key("rollout.divergence.action", lambda v: _one_of(v, DIVERGENCE_ACTIONS))
    divergence_min_effect: float = key("rollout.divergence.minEffect", lambda v: _between(v, 0, 0.99))
    divergence_min_rows: int = key("rollout.divergence.minRows", lambda v: _between(v, 30, 10**9))


@dataclass(frozen=True)
class MonitoringConfig:
    enabled: bool = key("monitoring.enabled")
    install_stack: bool = key("monitoring.installStack")
    install_adapter: bool = key("monitoring.installAdapter")
    namespace: str = key("monitoring.namespace", lambda v: _dns_label(v))
    release_label: str = key("monitoring.releaseLabel", lambda v: _label_value(v))
    scrape_interval: str = key("monitoring.scrapeInterval", lambda v: _duration(v))


@dataclass(frozen=True)
class FeedbackConfig:
    signing_key: str = key("feedback.signingKey", lambda v: _signing_key(v))
    max_age_days: int = key("feedback.maxAgeDays", lambda v: _between(v, 1, 3650))

    @property
    def enabled(self) -> bool:
        """Predictions carry signed ids and /feedback is served: a signing key is set."""
        return bool(self.signing_key)

    def __repr__(self) -> str:
        # The key is a secret: never in a traceback, a log line or a test failure.
        return f"FeedbackConfig(signing_key={'<set>' if self.signing_key else '<empty>'}, max_age_days={self.max_age_days})"


@dataclass(frozen=True)
class ExplainConfig:
    enabled: bool = key("explain.enabled")
    background_uri: str = key("explain.backgroundUri")
    max_background_rows: int = key("explain.maxBackgroundRows", lambda v: _between(v, 1, 10000))
    max_rows: int = key("explain.maxRows", lambda v: _between(v, 1, 1000))
    max_concurrency: int = key("explain.maxConcurrency", lambda v: _between(v, 1, 64))
    max_queue: int = key("explain.maxQueue", lambda v: _between(v, 0, 10000))
    timeout_seconds: float = key("explain.timeoutSeconds", lambda v: _between(v, 0.001, 600))


@dataclass(frozen=True)
class AlertsConfig:
    error_rate_percent: float = key("alerts.errorRatePercent", lambda v: _between(v, 0.001, 100))
    p95_latency_ms: int = key("alerts.p95LatencyMs", lambda v: _between(v, 1, 600000))
    for_duration: str = key("alerts.forDuration", lambda v: _duration(v))
    drift_psi_threshold: float = key("alerts.drift.psiThreshold", lambda v: _between(v, 0.001, 100))
    drift_window: str = key("alerts.drift.window", lambda v: _duration(v))
    drift_for_duration: str = key("alerts.drift.forDuration", lambda v: _duration(v))


@dataclass(frozen=True)
class DriftConfig:
    # The dataset a model version's reference profile is built from when its run has none (service.profiles).
    reference_uri: str = key("drift.referenceUri")


@dataclass(frozen=True)
class Identity:
    """Whose objects these are: the stack, its namespace and app name, from which every name and label is made."""

    stack: str
    namespace: str
    app_name: str


@dataclass(frozen=True)
class PodConfig:
    """The sections a model pod is built from (`infra.workload`). A pod reads most of the stack's config, so its
    builders take this bundle rather than eight arguments each; everything else (traffic, autoscaling, the
    entry point) stays out of it."""

    identity: Identity
    model: ModelConfig
    serving: ServingConfig
    gpu: GpuConfig
    access: AccessConfig
    feedback: FeedbackConfig
    drift: DriftConfig
    explain: ExplainConfig


@dataclass(frozen=True)
class StackConfig:
    """Everything one stack deploys; built only by `parse_config`, so every instance is valid."""

    stack: str
    namespace: str = key("namespace", lambda v: _dns_label(v))
    app_name: str = key("appName", lambda v: _dns_label(v, max_length=40))
    model: ModelConfig = field(default=None)  # type: ignore[assignment]
    image: ImageConfig = field(default=None)  # type: ignore[assignment]
    serving: ServingConfig = field(default=None)  # type: ignore[assignment]
    gpu: GpuConfig = field(default=None)  # type: ignore[assignment]
    autoscaling: AutoscalingConfig = field(default=None)  # type: ignore[assignment]
    load_balancer: LoadBalancerConfig = field(default=None)  # type: ignore[assignment]
    traffic: TrafficConfig = field(default=None)  # type: ignore[assignment]
    seldon: SeldonConfig = field(default=None)  # type: ignore[assignment]
    access: AccessConfig = field(default=None)  # type: ignore[assignment]
    rollout: RolloutConfig = field(default=None)  # type: ignore[assignment]
    platform: PlatformConfig = field(default=None)  # type: ignore[assignment]
    monitoring: MonitoringConfig = field(default=None)  # type: ignore[assignment]
    alerts: AlertsConfig = field(default=None)  # type: ignore[assignment]
    feedback: FeedbackConfig = field(default=None)  # type: ignore[assignment]
    drift: DriftConfig = field(default=None)  # type: ignore[assignment]
    explain: ExplainConfig = field(default=None)  # type: ignore[assignment]

    @property
    def identity(self) -> Identity:
        """The names every object of the stack is named and labelled from."""
        return Identity(stack=self.stack, namespace=self.namespace, app_name=self.app_name)

    @property
    def pod(self) -> PodConfig:
        """The sections the model pods are built from."""
        return PodConfig(
            identity=self.identity, model=self.model, serving=self.serving, gpu=self.gpu, access=self.access,
            feedback=self.feedback, drift=self.drift, explain=self.explain,
        )


SECTIONS: tuple[type, ...] = (
    ModelConfig, ImageConfig, ServingConfig, GpuConfig, AutoscalingConfig,
    LoadBalancerConfig, TrafficConfig, SeldonConfig, AccessConfig, PlatformConfig, RolloutConfig, MonitoringConfig,
    AlertsConfig, FeedbackConfig, DriftConfig, ExplainConfig,
)


# --------------------------------------------------------------------------------------------------
# Declarations (Pulumi.yaml) and raw values
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Declaration:
    """One key declared in Pulumi.yaml's `config:` block."""

    key: str
    type: str
    default: Any
    description: str
    item_type: str | None = None


def read_declarations(project_dir: Path = PROJECT_DIR) -> dict[str, Declaration]:
    """Every `mlserve:` key declared in `Pulumi.yaml`, by dotted key."""
    project = yaml.safe_load((project_dir / "Pulumi.yaml").read_text())
    declarations = {}
    for full_key, spec in (project.get("config") or {}).items():
        namespace, _, name = full_key.partition(":")
        if namespace != NAMESPACE:
            continue
        declarations[name] = Declaration(
            key=name,
            type=spec["type"],
            default=spec.get("default"),
            description=spec.get("description", ""),
            item_type=(spec.get("items") or {}).get("type"),
        )
    return declarations


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config objects to dotted keys: {"traffic": {"challengerWeight": 5}} -> {"traffic.challengerWeight": 5}."""
    flat: dict[str, Any] = {}
    for name, value in values.items():
        dotted = f"{prefix}{name}"
        if is_encrypted(value):
            flat[dotted] = ENCRYPTED
        elif isinstance(value, Mapping):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def is_encrypted(value: Any) -> bool:
    """A `secure:` entry, as `pulumi config set --secret` writes it into a stack file."""
    return isinstance(value, Mapping) and set(value) == {"secure"}


def read_stack_file(stack: str, project_dir: Path = PROJECT_DIR) -> dict[str, Any]:
    """The `mlserve:` overrides in `Pulumi.STACK.yaml`, as dotted keys; raises ConfigError if the file is missing."""
    path = project_dir / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        known = sorted(p.name[len("Pulumi."):-len(".yaml")] for p in project_dir.glob("Pulumi.*.yaml"))
        raise ConfigError([f"stack {stack!r}: no file {path.name}; stacks with a file here: {', '.join(known) or 'none'}"])
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError([f"{path.name} is not valid YAML: {err}"]) from err
    return stack_values(document.get("config") or {})


def stack_values(config: Mapping[str, Any]) -> dict[str, Any]:
    """The `mlserve:` entries of a Pulumi config map (`mlserve:traffic` -> nested object), as dotted keys."""
    values: dict[str, Any] = {}
    for full_key, value in config.items():
        namespace, _, name = full_key.partition(":")
        if namespace != NAMESPACE:
            continue
        if is_encrypted(value):
            values[name] = ENCRYPTED
        elif isinstance(value, Mapping):
            values.update(flatten(value, f"{name}."))
        else:
            values[name] = value
    return values


def typed_values(config: StackConfig) -> dict[str, Any]:
    """Every declared key of `config` with its checked, typed value (defaults included), by dotted key."""
    values: dict[str, Any] = {}
    sections = [getattr(config, spec.name) for spec in fields(config)]
    for section in (config, *(value for value in sections if isinstance(value, SECTIONS))):
        for spec in fields(section):
            if "key" in spec.metadata:
                values[spec.metadata["key"]] = getattr(section, spec.name)
    return values


def parse_override(assignment: str) -> tuple[str, Any]:
    """`KEY.PATH=VALUE` from the command line; the value is read as YAML so `25`, `true`, `[5, 50]` keep their types."""
    name, sep, raw = assignment.partition("=")
    if not sep or not name.strip():
        raise ConfigError([f"override {assignment!r} is not KEY.PATH=VALUE (e.g. traffic.challengerWeight=25)"])
    name = name.strip().removeprefix(f"{NAMESPACE}:")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return name, value


def load_stack_config(
    stack: str,
    project_dir: Path = PROJECT_DIR,
    overrides: Mapping[str, Any] | None = None,
) -> StackConfig:
    """Defaults from Pulumi.yaml, then Pulumi.STACK.yaml, then `overrides` (dotted keys); checked as a whole."""
    values = read_stack_file(stack, project_dir)
    values.update(overrides or {})
    return parse_config(stack, values, read_declarations(project_dir))


def values_from_pulumi(declarations: Mapping[str, Declaration]) -> dict[str, Any]:
    """Read every declared key from the running Pulumi program's config (nested path objects or flat keys)."""
    import pulumi

    config = pulumi.Config(NAMESPACE)
    values: dict[str, Any] = {}
    for name in declarations:
        if (flat := config.get(name)) is not None:
            values[name] = flat
    # Path config (`pulumi config set --path traffic.challengerWeight 25`) arrives as one JSON object per
    # first segment, and wins over a flat key of the same name.
    for top in sorted({name.split(".", 1)[0] for name in declarations if "." in name}):
        raw = config.get(top)
        try:
            nested = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            nested = None
        if isinstance(nested, Mapping):
            values.update(flatten(nested, f"{top}."))
    return values


def load_from_pulumi(project_dir: Path = PROJECT_DIR) -> StackConfig:
    """The config of the stack the running Pulumi program deploys."""
    import pulumi

    declarations = read_declarations(project_dir)
    return parse_config(pulumi.get_stack(), values_from_pulumi(declarations), declarations)


# --------------------------------------------------------------------------------------------------
# Parsing and checks
# --------------------------------------------------------------------------------------------------


def parse_config(stack: str, values: Mapping[str, Any], declarations: Mapping[str, Declaration]) -> StackConfig:
    """Typed, checked config from dotted-key values over the declared defaults; raises ConfigError with every problem."""
    problems: list[str] = []
    bad_keys: set[str] = set()
    for name in values:
        if name not in declarations:
            close = difflib.get_close_matches(name, declarations, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else "every key is declared, with its description, in Pulumi.yaml"
            problems.append(f"{name}: unknown key; {hint}")

    def build(section: type) -> Any:
        kwargs = {}
        for spec in fields(section):
            if "key" not in spec.metadata:
                continue
            name = spec.metadata["key"]
            declaration = declarations.get(name)
            if declaration is None:
                problems.append(f"{name}: not declared in Pulumi.yaml (a bug in mlserve, not in your stack)")
                kwargs[spec.name] = None
                continue
            raw = values.get(name, declaration.default)
            if "SecretValue" in str(spec.type):
                kwargs[spec.name], problem = secret_value(raw)
                if problem is not None:
                    # Never echo a credential: the message names the key and what is accepted only.
                    problems.append(f"{name}: {problem} (set it with `pulumi config set --secret --path {name} VALUE`)")
                    bad_keys.add(name)
                continue
            value, problem = coerce(raw, declaration, as_decimal=spec.type in ("float", float))
            if problem is None and spec.metadata["check"] is not None:
                problem = spec.metadata["check"](value)
            if problem is not None:
                shown = "a secret value" if name in SECRET_KEYS else repr(raw)
                problems.append(f"{name}: {problem} (got {shown})")
                bad_keys.add(name)
            kwargs[spec.name] = value
        return kwargs

    top = build(StackConfig)
    sections = {section: section(**build(section)) for section in SECTIONS}
    config = StackConfig(
        stack=stack,
        **top,
        model=sections[ModelConfig],
        image=sections[ImageConfig],
        serving=sections[ServingConfig],
        gpu=sections[GpuConfig],
        autoscaling=sections[AutoscalingConfig],
        load_balancer=sections[LoadBalancerConfig],
        traffic=sections[TrafficConfig],
        seldon=sections[SeldonConfig],
        access=sections[AccessConfig],
        rollout=sections[RolloutConfig],
        platform=sections[PlatformConfig],
        monitoring=sections[MonitoringConfig],
        alerts=sections[AlertsConfig],
        feedback=sections[FeedbackConfig],
        drift=sections[DriftConfig],
        explain=sections[ExplainConfig],
    )
    problems.extend(cross_key_problems(config, bad_keys))
    if problems:
        raise ConfigError(problems)
    return config


def cross_key_problems(config: StackConfig, bad_keys: set[str] = frozenset()) -> list[str]:
    """Rules that involve more than one key; each runs only when the keys it reads are valid on their own."""

    def valid(*keys: str) -> bool:
        return not bad_keys.intersection(keys)

    problems = []
    scaling, serving, traffic = config.autoscaling, config.serving, config.traffic
    if valid("autoscaling.minReplicas", "autoscaling.maxReplicas") and scaling.min_replicas > scaling.max_replicas:
        problems.append(
            f"autoscaling.minReplicas: {scaling.min_replicas} is above autoscaling.maxReplicas "
            f"{scaling.max_replicas}; minReplicas must be <= maxReplicas"
        )
    weight_valid = valid("traffic.challengerWeight", "traffic.router", "model.challengerUri")
    if weight_valid and traffic.challenger_weight > 0 and not config.model.has_challenger:
        problems.append(
            f"traffic.challengerWeight: {traffic.challenger_weight} sends traffic to a challenger but "
            "model.challengerUri is empty; set model.challengerUri or use weight 0"
        )
    if weight_valid and traffic.router == "service" and 0 < traffic.challenger_weight:
        problems.append(
            f"traffic.challengerWeight: {traffic.challenger_weight} needs a weighted router; "
            "traffic.router 'service' sends every request to the champion (use traffic.router: seldon or gateway, or weight 0)"
        )
    shadow_valid = valid("traffic.shadow", "traffic.router", "traffic.challengerWeight", "model.challengerUri")
    if shadow_valid and traffic.shadow:
        if traffic.router == "service":
            problems.append(f"traffic.shadow: true needs traffic.router seldon or gateway (got {traffic.router!r}); "
                            "a plain Service cannot mirror requests")
        if traffic.challenger_weight > 0:
            problems.append(f"traffic.shadow: true with traffic.challengerWeight {traffic.challenger_weight}; "
                            "a shadow answers nobody, so its weight must be 0 (set one or the other)")
        if not config.model.has_challenger:
            problems.append("traffic.shadow: true but model.challengerUri is empty; the shadow serves the challenger model")
    problems.extend(gateway_problems(traffic, valid))
    if valid("serving.frontProxy", "traffic.router") and serving.front_proxy and traffic.router == "seldon":
        problems.append(
            "serving.frontProxy: true needs traffic.router service or gateway (got 'seldon'): Seldon's executor sends "
            "to the model container on its graph's port, where the proxy would stand; on Seldon, set overload limits "
            "on Istio's sidecar (a DestinationRule connectionPool) instead"
        )
    if valid("serving.port", "serving.grpcPort", "serving.frontProxy") and serving.front_proxy:
        for port_key, port in (("serving.port", serving.port), ("serving.grpcPort", serving.grpc_port)):
            if port in FRONT_PROXY_PORTS:
                problems.append(f"{port_key}: {port} is a port the front proxy's pod uses itself "
                                f"({', '.join(map(str, FRONT_PROXY_PORTS))}); pick another")
    if valid("serving.port", "serving.grpcPort") and serving.grpc_port == serving.port:
        problems.append(
            f"serving.grpcPort: {serving.grpc_port} is also serving.port; HTTP and gRPC need a port each"
        )
    for port_key, port in (("serving.port", serving.port), ("serving.grpcPort", serving.grpc_port)):
        if valid(port_key, "traffic.router") and traffic.router == "seldon" and port in SELDON_EXECUTOR_PORTS:
            problems.append(
                f"{port_key}: {port} is a port of Seldon's executor, which runs in the same pod "
                f"({', '.join(map(str, SELDON_EXECUTOR_PORTS))}); pick another"
            )
    if valid("model.name", "traffic.router") and traffic.router == "seldon" and dns_label(config.model.name) != config.model.name:
        # Seldon's executor answers /v2/models/{name}[/ready] only for a graph node of that name, and node names
        # are container names (DNS-1123); a model name in another form cannot be reached by every OIP call.
        problems.append(
            f"model.name: {config.model.name!r} is not a DNS-1123 label, which traffic.router seldon needs "
            f"(Seldon routes OIP calls by graph node name, a container name); register the model as "
            f"{dns_label(config.model.name)!r} or use traffic.router: service"
        )
    if valid("image.push", "image.repository") and config.image.push and config.image.registry is None:
        problems.append(
            f"image.repository: {config.image.repository!r} names no registry host but image.push is true; "
            "use REGISTRY/PATH (e.g. ghcr.io/acme/churn-model, localhost:5001/churn-model) or image.push: false"
        )
    seldon = config.seldon
    for request_key, limit_key, request, limit in (
        ("serving.cpuRequest", "serving.cpuLimit", serving.cpu_request, serving.cpu_limit),
        ("serving.memoryRequest", "serving.memoryLimit", serving.memory_request, serving.memory_limit),
        ("seldon.executorCpuRequest", "seldon.executorCpuLimit", seldon.executor_cpu_request, seldon.executor_cpu_limit),
        ("seldon.executorMemoryRequest", "seldon.executorMemoryLimit", seldon.executor_memory_request, seldon.executor_memory_limit),
    ):
        if valid(request_key, limit_key) and quantity_value(request) > quantity_value(limit):
            problems.append(f"{request_key}: {request!r} is above {limit_key} {limit!r}; a request must not exceed its limit")
    if valid("gpu.enabled", "gpu.nodeSelector") and config.gpu.enabled and not config.gpu.node_selector:
        problems.append(
            "gpu.nodeSelector: empty while gpu.enabled is true; name the GPU node pool "
            "(e.g. [\"nvidia.com/gpu.present=true\"]) so GPU pods land on GPU nodes"
        )
    return problems


def gateway_problems(traffic: TrafficConfig, valid: Callable[..., bool]) -> list[str]:
    """The `traffic.*` keys of the Gateway API router: each needs that router, and it needs a Gateway to attach to."""
    problems = []
    if not valid("traffic.router"):
        return problems
    on_gateway = traffic.router == "gateway"
    only_gateway = (
        ("traffic.createGateway", traffic.create_gateway, "true"),
        ("traffic.sticky", traffic.sticky, "true"),
        ("traffic.stickyTimeout", traffic.sticky_timeout, repr(traffic.sticky_timeout)),
    )
    for name, value, shown in only_gateway:
        if value and not on_gateway and valid(name):
            problems.append(f"{name}: {shown} needs traffic.router gateway (got {traffic.router!r})")
    if traffic.shadow_percent != 100 and not on_gateway and valid("traffic.shadowPercent"):
        why = "Seldon mirrors every request to a shadow" if traffic.router == "seldon" else "a plain Service mirrors nothing"
        problems.append(f"traffic.shadowPercent: {traffic.shadow_percent} needs traffic.router gateway; {why} "
                        "(use 100, or traffic.router: gateway)")
    if not on_gateway:
        return problems
    if not traffic.gateway and valid("traffic.gateway"):
        problems.append("traffic.gateway: empty, but traffic.router gateway attaches its routes to a Gateway; "
                        "name it as NAMESPACE/NAME (e.g. gateway-system/public), and set traffic.createGateway: true "
                        "for the stack to create it")
    if traffic.create_gateway and not traffic.gateway_class_name and valid("traffic.createGateway", "traffic.gatewayClassName"):
        problems.append("traffic.gatewayClassName: empty, but traffic.createGateway is true; name the GatewayClass "
                        "of the cluster's gateway implementation (e.g. eg, istio, cilium, nginx)")
    if traffic.http_listener == traffic.grpc_listener and valid("traffic.httpListener", "traffic.grpcListener"):
        # Gateway API (apis/v1/grpcroute_types.go, GRPCRouteSpec.Hostnames): of an HTTPRoute and a GRPCRoute
        # on one listener with overlapping hostnames, exactly one is accepted.
        problems.append(f"traffic.grpcListener: {traffic.grpc_listener!r} is also traffic.httpListener; a Gateway "
                        "listener accepts only one of an HTTPRoute and a GRPCRoute for the same hostnames, so each needs its own")
    if traffic.sticky_timeout and not traffic.sticky and valid("traffic.stickyTimeout", "traffic.sticky"):
        problems.append(f"traffic.stickyTimeout: {traffic.sticky_timeout!r} is set but traffic.sticky is false; "
                        "set traffic.sticky: true, or leave the timeout empty")
    return problems


def secret_value(raw: Any) -> tuple[SecretValue | None, str | None]:
    """A secret key's value: None when unset or empty, else a SecretValue; a problem when it is not text."""
    if isinstance(raw, SecretValue):
        return raw, None
    if raw is None or raw == "":
        return None, None
    if isinstance(raw, (str, int)) and not isinstance(raw, bool):
        return SecretValue(str(raw)), None
    return None, "expected a string"


def coerce(raw: Any, declaration: Declaration, as_decimal: bool = False) -> tuple[Any, str | None]:
    """A raw config value as its declared type, or a message saying what that type accepts."""
    kind = "decimal" if as_decimal else declaration.type
    if kind == "array":
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError:
                return raw, f"expected a list of {declaration.item_type}s, e.g. [a, b]"
        if not isinstance(raw, (list, tuple)):
            return raw, f"expected a list of {declaration.item_type}s"
        items = []
        item_declaration = Declaration(declaration.key, declaration.item_type or "string", None, "")
        for index, item in enumerate(raw):
            value, problem = coerce(item, item_declaration)
            if problem is not None:
                return raw, f"item {index}: {problem}"
            items.append(value)
        return tuple(items), None
    return _coerce_scalar(raw, kind)


def _coerce_scalar(raw: Any, kind: str) -> tuple[Any, str | None]:
    if kind == "boolean":
        if isinstance(raw, bool):
            return raw, None
        if isinstance(raw, str) and raw.lower() in ("true", "false"):
            return raw.lower() == "true", None
        return raw, "expected a boolean (true or false)"
    if kind == "integer":
        if isinstance(raw, bool):
            return raw, "expected an integer"
        if isinstance(raw, int):
            return raw, None
        # Pulumi mocks and JSON hand numbers over as floats; a whole float is the integer it names.
        if isinstance(raw, float) and raw.is_integer():
            return int(raw), None
        if isinstance(raw, str) and re.fullmatch(r"[+-]?\d+", raw.strip()):
            return int(raw), None
        return raw, "expected an integer"
    if kind == "decimal":
        if isinstance(raw, bool):
            return raw, "expected a number"
        try:
            number = float(Decimal(str(raw).strip()))
        except (InvalidOperation, ValueError):
            return raw, "expected a number such as 0.5"
        if not math.isfinite(number):
            return raw, "expected a finite number"
        return number, None
    if isinstance(raw, bool) or raw is None or isinstance(raw, (list, dict)):
        return raw, "expected a string"
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    return str(raw), None


def quantity_value(quantity: str) -> float:
    """A Kubernetes quantity in base units (cores or bytes), for comparing a request with its limit."""
    match = _QUANTITY.match(quantity)
    if match is None:
        raise ValueError(f"not a Kubernetes quantity: {quantity!r}")
    multipliers = {
        None: 1, "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
        "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    }
    return float(match.group(1)) * multipliers[match.group(3)]


def dns_label(name: str, max_length: int = 63) -> str:
    """`name` as a DNS-1123 label: lower case, runs of other characters as '-', trimmed to `max_length`."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:max_length].strip("-")
    return label or "model"


def parse_toleration(entry: str) -> Toleration:
    """"KEY[=VALUE]:EFFECT" (e.g. "nvidia.com/gpu:NoSchedule") as a Toleration."""
    taint, _, effect = entry.rpartition(":")
    taint_key, sep, value = taint.partition("=")
    return Toleration(key=taint_key, value=value if sep else None, effect=effect)


# Checks: each returns None when the value is fine, else what is allowed.


def _non_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def _between(value: float, low: float, high: float) -> str | None:
    return None if low <= value <= high else f"must be between {low} and {high}"


def _one_of(value: str, allowed: tuple[str, ...]) -> str | None:
    return None if value in allowed else f"must be one of {', '.join(allowed)}"


def _quantity(value: str) -> str | None:
    if _QUANTITY.match(value) and quantity_value(value) > 0:
        return None
    return "must be a positive Kubernetes quantity such as 500m, 2, 512Mi or 4Gi"


def _dns_label(value: str, max_length: int = 63) -> str | None:
    if _DNS_LABEL.match(value) and len(value) <= max_length:
        return None
    return f"must be a DNS label: lower-case letters, digits and '-', at most {max_length} characters"


def _dns_subdomain(value: str) -> str | None:
    labels = value.split(".")
    if value and len(value) <= 253 and all(_DNS_LABEL.match(label) for label in labels):
        return None
    return "must be a DNS subdomain: lower-case letters, digits, '-' and '.', at most 253 characters"


def _gateway_reference(value: str) -> str | None:
    if not value:
        return None
    namespace, sep, name = value.partition("/")
    if sep and _dns_label(namespace) is None and _dns_subdomain(name) is None:
        return None
    return "must be empty or NAMESPACE/NAME of a Gateway, e.g. gateway-system/public"


def _gateway_duration(value: str) -> str | None:
    if _GATEWAY_DURATION.match(value):
        return None
    return "must be a Gateway API duration such as 30m, 24h or 1h30m (units h, m, s, ms)"


def _label_value(value: str) -> str | None:
    return None if value and _LABEL_VALUE.match(value) else "must be a Kubernetes label value (letters, digits, '-', '_', '.')"


def _duration(value: str) -> str | None:
    if re.fullmatch(r"(\d+(ms|s|m|h|d|w|y))+", value):
        return None
    return "must be a Prometheus duration such as 30s, 5m or 1h"


def _model_uri(value: str, required: bool) -> str | None:
    if not value:
        return "must not be empty" if required else None
    if STACK_MODEL_URI.match(value):
        return None
    return "must be an MLflow model URI: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH or a storage URL"


def _image_repository(value: str) -> str | None:
    if re.fullmatch(r"[a-z0-9]+([._:-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*", value) and "@" not in value:
        last = value.rsplit("/", 1)[-1]
        if ":" not in last:
            return None
    return "must be an image repository without tag or digest, e.g. ghcr.io/acme/churn-model"


def _image_reference(value: str) -> str | None:
    if not value:
        return None
    repository, digest = value.split("@", 1) if "@" in value else (value, None)
    tag = None
    if ":" in repository.rsplit("/", 1)[-1]:
        repository, tag = repository.rsplit(":", 1)
    if (_image_repository(repository) is None and (digest or tag)
            and (digest is None or re.fullmatch(r"sha256:[0-9a-f]{64}", digest))
            and (tag is None or re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag))):
        return None
    return "must be empty or an image reference with a tag or digest, e.g. ghcr.io/acme/churn-model@sha256:<64 hex> or ghcr.io/acme/churn-model:1.4"


def _url(value: str) -> str | None:
    return None if re.match(r"^https?://[^\s/]+", value) else "must be an http(s) URL, e.g. http://127.0.0.1:9090"


def _cidr(value: str) -> str | None:
    import ipaddress

    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return "must be a CIDR such as 10.0.0.0/8"
    return None


def _node_selector_entry(value: str) -> str | None:
    label_key, sep, label_value = value.partition("=")
    if sep and _LABEL_KEY.match(label_key) and _LABEL_VALUE.match(label_value):
        return None
    return "must be KEY=VALUE with a valid label key and value, e.g. nvidia.com/gpu.present=true"


def _toleration_entry(value: str) -> str | None:
    toleration = parse_toleration(value)
    if toleration.effect in TAINT_EFFECTS and _LABEL_KEY.match(toleration.key):
        return None
    return f"must be KEY[=VALUE]:EFFECT with EFFECT one of {', '.join(TAINT_EFFECTS)}, e.g. nvidia.com/gpu:NoSchedule"


def _each(values: tuple[str, ...], check: Callable[[str], str | None]) -> str | None:
    for index, value in enumerate(values):
        if (problem := check(value)) is not None:
            return f"item {index} ({value!r}) {problem}"
    return None


def _signing_key(value: str) -> str | None:
    if not value or len(value) >= 32:
        return None
    return f"must be empty or at least 32 characters (a {len(value)}-character key was given)"


def _env_entry(value: str) -> str | None:
    name, sep, _ = value.partition("=")
    if sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        return None
    return "must be NAME=VALUE with NAME a valid environment variable name, e.g. MLFLOW_S3_ENDPOINT_URL=https://minio:9000"


def _annotation_entry(value: str) -> str | None:
    annotation_key, sep, _ = value.partition("=")
    if sep and _LABEL_KEY.match(annotation_key):
        return None
    return "must be KEY=VALUE with a valid annotation key, e.g. eks.amazonaws.com/role-arn=arn:aws:iam::123456789012:role/mlserve"


def _rollout_steps(steps: tuple[int, ...]) -> str | None:
    if not steps:
        return "must list at least one weight, ending at 100"
    if any(not 0 < step <= 100 for step in steps):
        return "every step must be a weight between 1 and 100"
    if list(steps) != sorted(set(steps)):
        return "steps must be strictly ascending"
    if steps[-1] != 100:
        return "the last step must be 100 (promotion)"
    return None

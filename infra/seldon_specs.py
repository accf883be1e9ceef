"""Pure builders of champion/challenger traffic on Seldon Core v1: one SeldonDeployment whose predictors split traffic by
`traffic.challengerWeight`, or mirror it to a shadow challenger.

Each predictor's `componentSpecs` carries exactly the pod template of the plain path (same builders)
and an `hpaSpec`; the graph speaks the Open Inference Protocol (`protocol: v2`) on the model server's
port. The weight appears in the two `traffic` fields and nowhere else, so a weight change previews as a
two-line diff. What the Seldon Core v1.18.2 operator and executor do with it, and why the spec is shaped so
(SeldonIO/seldon-core at v1.18.2):

- disruption budgets: the operator's `createPdb` (operator/controllers/seldondeployment_controller.go)
  selects `seldon-deployment-id: <name>`, i.e. every pod of every predictor, so two predictors' PDBs would
  both cover each pod and the eviction API refuses to evict a pod with more than one PDB (node drains
  stall). No `pdbSpec` here: the stack makes one PodDisruptionBudget per variant, selecting that
  variant's pods by the predictor labels the operator copies onto them;
- OIP names: the executor resolves `/v2/models/{name}/ready` and `/v2/models/{name}` against the graph
  node of that name and forwards `{name}`; `/v2/models/infer` forwards the node's name
  (executor/api/rest/server.go, executor/predictor/predictor_process.go). The node, and so the container
  (the operator pairs them by name), is named after the model (`container_name`), so every call reaches
  the server under the model's own name;
- autoscaling: the operator adds its executor container to the pod, so pod-level CPU and memory
  utilisation would average it in; `metricsv2` uses `ContainerResource` metrics of the model container,
  and `svcOrchSpec` sizes the executor from `seldon.*` config.
"""

from __future__ import annotations

from typing import Any

from infra.config import SELDON_EXECUTOR_PORTS, StackConfig
from infra.services import hpa_metrics, network_policy_spec
from infra.workload import Manifest, container_name, pod_template, selector_labels

SELDON_API_VERSION = "machinelearning.seldon.io/v1"
# The executor container: its name, and where it serves its own metrics (operator/controllers/seldondeployment_engine.go:
# EngineContainerName, a port named `metrics` on the REST port, getPrometheusPath's default).
SELDON_EXECUTOR_CONTAINER = "seldon-container-engine"
SELDON_EXECUTOR_METRICS_PORT = "metrics"
SELDON_EXECUTOR_METRICS_PATH = "/prometheus"


def executor_selector(config: StackConfig, variant: str | None = None) -> str:
    """PromQL matchers (no braces) for the executor's prediction calls of this stack (one predictor when given).
    Labels: executor/api/rest/server.go wrapMetrics (deployment_name, predictor_name, service, code)."""
    matchers = f'namespace="{config.namespace}",job="{config.app_name}",deployment_name="{config.app_name}",service="predictions"'
    return matchers + (f',predictor_name="{variant}"' if variant else "")


def executor_error_selector(config: StackConfig, variant: str | None = None) -> str:
    """The executor's prediction calls answered with a server error (5xx)."""
    return executor_selector(config, variant) + ',code=~"5.."'


def container_hpa_metrics(config: StackConfig) -> list[Manifest]:
    """The plain path's HPA metrics with CPU and memory measured on the model container alone."""
    metrics = []
    for metric in hpa_metrics(config):
        if metric["type"] == "Resource":
            metric = {"type": "ContainerResource", "containerResource": {**metric["resource"], "container": container_name(config)}}
        metrics.append(metric)
    return metrics


def executor_spec(config: StackConfig) -> Manifest:
    """`svcOrchSpec`: requests and limits of the executor container the operator adds to the pod."""
    seldon = config.seldon
    return {
        "resources": {
            "requests": {"cpu": seldon.executor_cpu_request, "memory": seldon.executor_memory_request},
            "limits": {"cpu": seldon.executor_cpu_limit, "memory": seldon.executor_memory_limit},
        }
    }


def predictor(config: StackConfig, variant: str, image: Any, traffic: int | None, shadow: bool = False) -> Manifest:
    """One predictor: the shared pod template, autoscaling, the executor's size, and an OIP v2 graph."""
    component: Manifest = pod_template(config, variant, image)
    if config.autoscaling.enabled:
        component["hpaSpec"] = {
            "minReplicas": config.autoscaling.min_replicas,
            "maxReplicas": config.autoscaling.max_replicas,
            "metricsv2": container_hpa_metrics(config),
        }
    spec: Manifest = {
        "name": variant,
        "labels": selector_labels(config, variant),
        "componentSpecs": [component],
        "svcOrchSpec": executor_spec(config),
        "graph": {
            "name": container_name(config),
            "type": "MODEL",
            # The operator takes the container ports named http and grpc for these (defaults.go,
            # setContainerPredictiveUnitDefaults); the executor sends REST calls to httpPort and gRPC calls to
            # grpcPort (executor/predictor/predictor_process.go, getPort).
            "endpoint": {"type": "REST", "httpPort": config.serving.port, "grpcPort": config.serving.grpc_port},
            "children": [],
        },
    }
    if not config.autoscaling.enabled:
        spec["replicas"] = config.serving.replicas
    if shadow:
        spec["shadow"] = True
    if traffic is not None:
        spec["traffic"] = traffic
    return spec


def seldon_deployment_spec(config: StackConfig, image: Any) -> Manifest:
    """The SeldonDeployment spec: champion, and the challenger as a weighted or shadow predictor."""
    traffic = config.traffic
    predictors = []
    if not config.model.has_challenger:
        predictors.append(predictor(config, "champion", image, traffic=100))
    elif traffic.shadow:
        predictors.append(predictor(config, "champion", image, traffic=100))
        predictors.append(predictor(config, "challenger", image, traffic=None, shadow=True))
    else:
        predictors.append(predictor(config, "champion", image, traffic=traffic.champion_weight))
        predictors.append(predictor(config, "challenger", image, traffic=traffic.challenger_weight))
    return {"name": config.app_name, "protocol": "v2", "predictors": predictors}


def seldon_network_policy_spec(config: StackConfig, variant: str) -> Manifest:
    """The plain path's policy, plus the executor ports Seldon routes through."""
    spec = network_policy_spec(config, variant)
    spec["ingress"][0]["ports"] += [{"port": port, "protocol": "TCP"} for port in SELDON_EXECUTOR_PORTS]
    return spec

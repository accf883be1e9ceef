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

from infra.config import (
    SELDON_EXECUTOR_PORTS, AutoscalingConfig, Identity, LoadBalancerConfig, ModelConfig, PodConfig, SeldonConfig,
    ServingConfig, TrafficConfig,
)
from infra.services import hpa_metrics, network_policy_spec
from infra.workload import Manifest, container_name, pod_template, selector_labels

SELDON_API_VERSION = "machinelearning.seldon.io/v1"
# The executor container: its name, and where it serves its own metrics (operator/controllers/seldondeployment_engine.go:
# EngineContainerName, a port named `metrics` on the REST port, getPrometheusPath's default).
SELDON_EXECUTOR_CONTAINER = "seldon-container-engine"
SELDON_EXECUTOR_METRICS_PORT = "metrics"
SELDON_EXECUTOR_METRICS_PATH = "/prometheus"


def executor_selector(identity: Identity, variant: str | None = None) -> str:
    """PromQL matchers (no braces) for the executor's prediction calls of this stack (one predictor when given).
    Labels: executor/api/rest/server.go wrapMetrics (deployment_name, predictor_name, service, code)."""
    matchers = (f'namespace="{identity.namespace}",job="{identity.app_name}",deployment_name="{identity.app_name}",'
                'service="predictions"')
    return matchers + (f',predictor_name="{variant}"' if variant else "")


def executor_error_selector(identity: Identity, variant: str | None = None) -> str:
    """The executor's prediction calls answered with a server error (5xx)."""
    return executor_selector(identity, variant) + ',code=~"5.."'


def container_hpa_metrics(model: ModelConfig, autoscaling: AutoscalingConfig) -> list[Manifest]:
    """The plain path's HPA metrics with CPU and memory measured on the model container alone."""
    metrics = []
    for metric in hpa_metrics(autoscaling):
        if metric["type"] == "Resource":
            metric = {"type": "ContainerResource", "containerResource": {**metric["resource"], "container": container_name(model)}}
        metrics.append(metric)
    return metrics


def executor_spec(seldon: SeldonConfig) -> Manifest:
    """`svcOrchSpec`: requests and limits of the executor container the operator adds to the pod."""
    return {
        "resources": {
            "requests": {"cpu": seldon.executor_cpu_request, "memory": seldon.executor_memory_request},
            "limits": {"cpu": seldon.executor_cpu_limit, "memory": seldon.executor_memory_limit},
        }
    }


def predictor(
    pod: PodConfig, autoscaling: AutoscalingConfig, seldon: SeldonConfig, variant: str, image: Any,
    traffic: int | None, shadow: bool = False,
) -> Manifest:
    """One predictor: the shared pod template, autoscaling, the executor's size, and an OIP v2 graph."""
    component: Manifest = pod_template(pod, variant, image)
    if autoscaling.enabled:
        component["hpaSpec"] = {
            "minReplicas": autoscaling.min_replicas,
            "maxReplicas": autoscaling.max_replicas,
            "metricsv2": container_hpa_metrics(pod.model, autoscaling),
        }
    spec: Manifest = {
        "name": variant,
        "labels": selector_labels(pod.identity, variant),
        "componentSpecs": [component],
        "svcOrchSpec": executor_spec(seldon),
        "graph": {
            "name": container_name(pod.model),
            "type": "MODEL",
            # The operator takes the container ports named http and grpc for these (defaults.go,
            # setContainerPredictiveUnitDefaults); the executor sends REST calls to httpPort and gRPC calls to
            # grpcPort (executor/predictor/predictor_process.go, getPort).
            "endpoint": {"type": "REST", "httpPort": pod.serving.port, "grpcPort": pod.serving.grpc_port},
            "children": [],
        },
    }
    if not autoscaling.enabled:
        spec["replicas"] = pod.serving.replicas
    if shadow:
        spec["shadow"] = True
    if traffic is not None:
        spec["traffic"] = traffic
    return spec


def seldon_deployment_spec(
    pod: PodConfig, autoscaling: AutoscalingConfig, seldon: SeldonConfig, traffic: TrafficConfig, image: Any
) -> Manifest:
    """The SeldonDeployment spec: champion, and the challenger as a weighted or shadow predictor."""
    # (variant, traffic weight, shadow) of each predictor
    shares: list[tuple[str, int | None, bool]]
    if not pod.model.has_challenger:
        shares = [("champion", 100, False)]
    elif traffic.shadow:
        shares = [("champion", 100, False), ("challenger", None, True)]
    else:
        shares = [("champion", traffic.champion_weight, False), ("challenger", traffic.challenger_weight, False)]
    predictors = [
        predictor(pod, autoscaling, seldon, variant, image, traffic=weight, shadow=shadow) for variant, weight, shadow in shares
    ]
    return {"name": pod.identity.app_name, "protocol": "v2", "predictors": predictors}


def seldon_network_policy_spec(
    identity: Identity, serving: ServingConfig, load_balancer: LoadBalancerConfig, variant: str
) -> Manifest:
    """The plain path's policy, plus the executor ports Seldon routes through."""
    spec = network_policy_spec(identity, serving, load_balancer, variant)
    spec["ingress"][0]["ports"] += [{"port": port, "protocol": "TCP"} for port in SELDON_EXECUTOR_PORTS]
    return spec

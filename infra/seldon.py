"""Champion/challenger traffic on Seldon Core v1: one SeldonDeployment whose predictors split traffic by
`traffic.challengerWeight`, or mirror it to a shadow challenger.

Each predictor's `componentSpecs` carries exactly the pod template of the plain path (same builders),
an `hpaSpec` (autoscaling/v2 metrics under `metricsv2`, as Seldon 1.18 wants) and a `pdbSpec`. The
graph speaks the Open Inference Protocol (`protocol: v2`) on the model server's port. The weight
appears in the two `traffic` fields and nowhere else, so a weight change previews as a two-line diff.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.config import SELDON_EXECUTOR_PORTS, StackConfig
from infra.serving import hpa_metrics, metadata, network_policy_spec
from infra.workload import CONTAINER_NAME, Manifest, pod_template, resource_name, selector_labels

SELDON_API_VERSION = "machinelearning.seldon.io/v1"


def predictor(config: StackConfig, variant: str, image: Any, traffic: int | None, shadow: bool = False) -> Manifest:
    """One predictor: the shared pod template, autoscaling, disruption budget, and an OIP v2 graph."""
    component: Manifest = {
        **pod_template(config, variant, image),
        "pdbSpec": {"maxUnavailable": config.serving.max_unavailable},
    }
    if config.autoscaling.enabled:
        component["hpaSpec"] = {
            "minReplicas": config.autoscaling.min_replicas,
            "maxReplicas": config.autoscaling.max_replicas,
            "metricsv2": hpa_metrics(config),
        }
    spec: Manifest = {
        "name": variant,
        "labels": selector_labels(config, variant),
        "componentSpecs": [component],
        "graph": {
            "name": CONTAINER_NAME,
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


@dataclass(frozen=True)
class SeldonTrafficArgs:
    config: StackConfig
    image: pulumi.Input[str]


class SeldonTraffic(pulumi.ComponentResource):
    """The SeldonDeployment and a NetworkPolicy per variant."""

    def __init__(self, name: str, args: SeldonTrafficArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlserve:seldon:SeldonTraffic", name, None, opts)
        config = args.config
        child = pulumi.ResourceOptions(parent=self)
        self.seldon_deployment = k8s.apiextensions.CustomResource(
            f"{name}-sdep",
            api_version=SELDON_API_VERSION,
            kind="SeldonDeployment",
            metadata=metadata(config, config.app_name),
            spec=seldon_deployment_spec(config, args.image),
            opts=child,
        )
        for variant in config.variants:
            k8s.networking.v1.NetworkPolicy(
                f"{name}-{variant}-netpol",
                metadata=metadata(config, resource_name(config, variant), variant),
                spec=seldon_network_policy_spec(config, variant),
                opts=child,
            )
        self.register_outputs({})

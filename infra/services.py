"""Pure builders of the plain Kubernetes serving objects: per variant a Deployment, HPA, PodDisruptionBudget,
NetworkPolicy and Service, from the config sections each reads; plain data, exactly as applied, no Pulumi resources.

`infra.serving.ModelServing` wires them into resources on the plain path; `infra.seldon.SeldonTraffic` reuses the
budgets, policies and HPA metrics on the Seldon path (through `infra.seldon_specs`).
"""

from __future__ import annotations

from typing import Any

from infra.config import AutoscalingConfig, Identity, LoadBalancerConfig, PodConfig, ServingConfig
from infra.workload import GRPC_PORT_NAME, PORT_NAME, Manifest, pod_template, resource_name, selector_labels, standard_labels

# The per-pod request rate prometheus-adapter derives from model_predictions_total (see infra/monitoring).
REQUESTS_PER_SECOND_METRIC = "model_requests_per_second"


def deployment_spec(pod: PodConfig, autoscaling: AutoscalingConfig, variant: str, image: Any) -> Manifest:
    """Deployment spec of one variant; replicas are left to the HPA when autoscaling is on."""
    spec: Manifest = {
        "selector": {"matchLabels": selector_labels(pod.identity, variant)},
        "template": pod_template(pod, variant, image),
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "revisionHistoryLimit": 5,
    }
    if not autoscaling.enabled:
        spec["replicas"] = pod.serving.replicas
    return spec


def hpa_metrics(scaling: AutoscalingConfig) -> list[Manifest]:
    """autoscaling/v2 metrics: CPU and memory utilisation, and requests per second per pod."""
    return [
        {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": scaling.target_cpu_utilization}},
        },
        {
            "type": "Resource",
            "resource": {
                "name": "memory",
                "target": {"type": "Utilization", "averageUtilization": scaling.target_memory_utilization},
            },
        },
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": REQUESTS_PER_SECOND_METRIC},
                "target": {"type": "AverageValue", "averageValue": str(scaling.target_requests_per_second)},
            },
        },
    ]


def hpa_spec(identity: Identity, autoscaling: AutoscalingConfig, variant: str) -> Manifest:
    """HorizontalPodAutoscaler spec for one variant's Deployment."""
    return {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": resource_name(identity, variant)},
        "minReplicas": autoscaling.min_replicas,
        "maxReplicas": autoscaling.max_replicas,
        "metrics": hpa_metrics(autoscaling),
        # Scale up at once, scale down slowly: a model pod is expensive to start.
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
    }


def pdb_spec(identity: Identity, serving: ServingConfig, variant: str) -> Manifest:
    return {
        "maxUnavailable": serving.max_unavailable,
        "selector": {"matchLabels": selector_labels(identity, variant)},
    }


def network_policy_spec(
    identity: Identity, serving: ServingConfig, load_balancer: LoadBalancerConfig, variant: str
) -> Manifest:
    """Only the model's HTTP and gRPC ports are reachable (from the entry point, Prometheus and the mesh)."""
    source: Manifest = {"ports": [{"port": port, "protocol": "TCP"} for port in (serving.port, serving.grpc_port)]}
    if load_balancer.source_ranges:
        source["from"] = [{"ipBlock": {"cidr": cidr}} for cidr in load_balancer.source_ranges] + [
            {"namespaceSelector": {}}
        ]
    return {
        "podSelector": {"matchLabels": selector_labels(identity, variant)},
        "policyTypes": ["Ingress"],
        "ingress": [source],
    }


def service_spec(
    identity: Identity, serving: ServingConfig, load_balancer: LoadBalancerConfig, variant: str, public: bool
) -> Manifest:
    """A Service in front of one variant's pods: the LoadBalancer entry point, or a ClusterIP one."""
    spec: Manifest = {
        "selector": selector_labels(identity, variant),
        "ports": [
            {
                "name": PORT_NAME,
                "port": load_balancer.port if public else serving.port,
                "targetPort": PORT_NAME,
                "protocol": "TCP",
            },
            {
                "name": GRPC_PORT_NAME,
                "port": serving.grpc_port,
                "targetPort": GRPC_PORT_NAME,
                "protocol": "TCP",
            },
        ],
        "type": "LoadBalancer" if public else "ClusterIP",
    }
    if public and load_balancer.source_ranges:
        spec["loadBalancerSourceRanges"] = list(load_balancer.source_ranges)
    if public:
        spec["externalTrafficPolicy"] = "Local"
    return spec


def metadata(identity: Identity, name: str, variant: str | None = None) -> Manifest:
    return {"name": name, "namespace": identity.namespace, "labels": standard_labels(identity, variant)}


def load_balancer_address(status: Any) -> str:
    """The LoadBalancer's external IP or hostname; empty until the cloud has assigned one."""
    ingress = getattr(getattr(status, "load_balancer", None), "ingress", None) or []
    for entry in ingress:
        if address := (getattr(entry, "ip", None) or getattr(entry, "hostname", None)):
            return address
    return ""

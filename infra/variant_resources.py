"""One variant's plain Kubernetes workload as Pulumi resources: its Deployment, HPA (with autoscaling on),
PodDisruptionBudget and NetworkPolicy, and a ClusterIP Service in front of it, from the builders of `infra.services`.

Not a component: the plain path (`infra.serving.ModelServing`) and the Gateway API path
(`infra.gateway.GatewayTraffic`) both run their variants this way, and each creates them under itself, so
the resources keep the names and the parent they had when each component made its own.
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from infra.config import AutoscalingConfig, LoadBalancerConfig, PodConfig
from infra.services import deployment_spec, hpa_spec, metadata, network_policy_spec, pdb_spec, service_spec
from infra.workload import resource_name


def create_variant_workload(
    name: str,
    variant: str,
    pod: PodConfig,
    autoscaling: AutoscalingConfig,
    load_balancer: LoadBalancerConfig,
    image: pulumi.Input[str],
    parent: pulumi.Resource,
) -> k8s.apps.v1.Deployment:
    """Create `variant`'s Deployment, HPA (with autoscaling on), PodDisruptionBudget and NetworkPolicy as children
    of `parent`, named `{name}-{variant}` and `{name}-{variant}-hpa|pdb|netpol`; returns the Deployment."""
    identity, serving = pod.identity, pod.serving
    variant_metadata = metadata(identity, resource_name(identity, variant), variant)
    child = pulumi.ResourceOptions(parent=parent)
    deployment = k8s.apps.v1.Deployment(
        f"{name}-{variant}", metadata=variant_metadata, spec=deployment_spec(pod, autoscaling, variant, image), opts=child
    )
    if autoscaling.enabled:
        k8s.autoscaling.v2.HorizontalPodAutoscaler(
            f"{name}-{variant}-hpa", metadata=variant_metadata, spec=hpa_spec(identity, autoscaling, variant), opts=child
        )
    k8s.policy.v1.PodDisruptionBudget(
        f"{name}-{variant}-pdb", metadata=variant_metadata, spec=pdb_spec(identity, serving, variant), opts=child
    )
    k8s.networking.v1.NetworkPolicy(
        f"{name}-{variant}-netpol",
        metadata=variant_metadata,
        spec=network_policy_spec(identity, serving, load_balancer, variant),
        opts=child,
    )
    return deployment


def create_variant_service(
    name: str, variant: str, pod: PodConfig, load_balancer: LoadBalancerConfig, parent: pulumi.Resource
) -> k8s.core.v1.Service:
    """Create the ClusterIP Service `{name}-{variant}-svc` in front of `variant`'s pods, as a child of `parent`."""
    identity = pod.identity
    return k8s.core.v1.Service(
        f"{name}-{variant}-svc",
        metadata=metadata(identity, resource_name(identity, variant), variant),
        spec=service_spec(identity, pod.serving, load_balancer, variant, public=False),
        opts=pulumi.ResourceOptions(parent=parent),
    )

"""Plain Kubernetes serving: per variant a Deployment, HPA, PodDisruptionBudget and NetworkPolicy, plus
one LoadBalancer Service as the entry point.

Used when `traffic.router` is `service`: the entry point selects the champion's pods. A configured
challenger still runs (with its own ClusterIP Service for smoke tests) but gets no public traffic;
weighted splits are the Seldon path's job. The spec builders are pure (`infra.services`); `ModelServing` wires them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.config import AutoscalingConfig, LoadBalancerConfig, PodConfig
from infra.services import deployment_spec, hpa_spec, load_balancer_address, metadata, network_policy_spec, pdb_spec, service_spec
from infra.workload import resource_name


@dataclass(frozen=True)
class ModelServingArgs:
    pod: PodConfig
    autoscaling: AutoscalingConfig
    load_balancer: LoadBalancerConfig
    image: pulumi.Input[str]


class ModelServing(pulumi.ComponentResource):
    """Deployments, HPAs, PDBs and NetworkPolicies per variant, and the public LoadBalancer Service."""

    endpoint: pulumi.Output[str]

    def __init__(self, name: str, args: ModelServingArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlserve:serving:ModelServing", name, None, opts)
        pod, identity, serving, load_balancer = args.pod, args.pod.identity, args.pod.serving, args.load_balancer
        child = pulumi.ResourceOptions(parent=self)
        self.deployments: dict[str, k8s.apps.v1.Deployment] = {}
        for variant in pod.model.variants:
            workload = resource_name(identity, variant)
            self.deployments[variant] = k8s.apps.v1.Deployment(
                f"{name}-{variant}",
                metadata=metadata(identity, workload, variant),
                spec=deployment_spec(pod, args.autoscaling, variant, args.image),
                opts=child,
            )
            if args.autoscaling.enabled:
                k8s.autoscaling.v2.HorizontalPodAutoscaler(
                    f"{name}-{variant}-hpa",
                    metadata=metadata(identity, workload, variant),
                    spec=hpa_spec(identity, args.autoscaling, variant),
                    opts=child,
                )
            k8s.policy.v1.PodDisruptionBudget(
                f"{name}-{variant}-pdb",
                metadata=metadata(identity, workload, variant),
                spec=pdb_spec(identity, serving, variant),
                opts=child,
            )
            k8s.networking.v1.NetworkPolicy(
                f"{name}-{variant}-netpol",
                metadata=metadata(identity, workload, variant),
                spec=network_policy_spec(identity, serving, load_balancer, variant),
                opts=child,
            )
            if variant != "champion":
                k8s.core.v1.Service(
                    f"{name}-{variant}-svc",
                    metadata=metadata(identity, workload, variant),
                    spec=service_spec(identity, serving, load_balancer, variant, public=False),
                    opts=child,
                )
        entry = k8s.core.v1.Service(
            f"{name}-entry",
            metadata=metadata(identity, identity.app_name),
            spec=service_spec(identity, serving, load_balancer, "champion", public=True),
            opts=child,
        )
        self.endpoint = entry.status.apply(load_balancer_address)
        self.register_outputs({"endpoint": self.endpoint})

"""Plain Kubernetes serving: per variant a Deployment, HPA, PodDisruptionBudget and NetworkPolicy, plus
one LoadBalancer Service as the entry point.

Used when `traffic.router` is `service`: the entry point selects the champion's pods. A configured
challenger still runs (with its own ClusterIP Service for smoke tests) but gets no public traffic;
weighted splits are the Seldon path's job. The spec builders are pure (`infra.services`); `ModelServing` wires them,
per variant through `infra.variant_resources`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.config import AutoscalingConfig, LoadBalancerConfig, PodConfig
from infra.services import load_balancer_address, metadata, service_spec
from infra.variant_resources import create_variant_service, create_variant_workload


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
        identity = args.pod.identity
        self.deployments: dict[str, k8s.apps.v1.Deployment] = {}
        for variant in args.pod.model.variants:
            self.deployments[variant] = create_variant_workload(
                name, variant, args.pod, args.autoscaling, args.load_balancer, args.image, parent=self
            )
            if variant != "champion":  # the champion's way in is the entry point below
                create_variant_service(name, variant, args.pod, args.load_balancer, parent=self)
        entry = k8s.core.v1.Service(
            f"{name}-entry",
            metadata=metadata(identity, identity.app_name),
            spec=service_spec(identity, args.pod.serving, args.load_balancer, "champion", public=True),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.endpoint = entry.status.apply(load_balancer_address)
        self.register_outputs({"endpoint": self.endpoint})

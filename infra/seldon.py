"""Champion/challenger traffic on Seldon Core v1: the `SeldonTraffic` component, which wires the pure builders of
`infra.seldon_specs` (where the shape of the SeldonDeployment, and why, is explained) into resources.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.config import AutoscalingConfig, LoadBalancerConfig, PodConfig, SeldonConfig, TrafficConfig
from infra.seldon_specs import SELDON_API_VERSION, seldon_deployment_spec, seldon_network_policy_spec
from infra.services import metadata, pdb_spec
from infra.workload import resource_name


@dataclass(frozen=True)
class SeldonTrafficArgs:
    pod: PodConfig
    autoscaling: AutoscalingConfig
    load_balancer: LoadBalancerConfig
    seldon: SeldonConfig
    traffic: TrafficConfig
    image: pulumi.Input[str]


class SeldonTraffic(pulumi.ComponentResource):
    """The SeldonDeployment, and per variant a PodDisruptionBudget and a NetworkPolicy."""

    def __init__(self, name: str, args: SeldonTrafficArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlserve:seldon:SeldonTraffic", name, None, opts)
        identity, serving = args.pod.identity, args.pod.serving
        child = pulumi.ResourceOptions(parent=self)
        self.seldon_deployment = k8s.apiextensions.CustomResource(
            f"{name}-sdep",
            api_version=SELDON_API_VERSION,
            kind="SeldonDeployment",
            metadata=metadata(identity, identity.app_name),
            spec=seldon_deployment_spec(args.pod, args.autoscaling, args.seldon, args.traffic, args.image),
            opts=child,
        )
        for variant in args.pod.model.variants:
            k8s.policy.v1.PodDisruptionBudget(
                f"{name}-{variant}-pdb",
                metadata=metadata(identity, resource_name(identity, variant), variant),
                spec=pdb_spec(identity, serving, variant),
                opts=child,
            )
            k8s.networking.v1.NetworkPolicy(
                f"{name}-{variant}-netpol",
                metadata=metadata(identity, resource_name(identity, variant), variant),
                spec=seldon_network_policy_spec(identity, serving, args.load_balancer, variant),
                opts=child,
            )
        self.register_outputs({})

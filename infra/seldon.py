"""Champion/challenger traffic on Seldon Core v1: the `SeldonTraffic` component, which wires the pure builders of
`infra.seldon_specs` (where the shape of the SeldonDeployment, and why, is explained) into resources.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.config import StackConfig
from infra.seldon_specs import SELDON_API_VERSION, seldon_deployment_spec, seldon_network_policy_spec
from infra.services import metadata, pdb_spec
from infra.workload import resource_name


@dataclass(frozen=True)
class SeldonTrafficArgs:
    config: StackConfig
    image: pulumi.Input[str]


class SeldonTraffic(pulumi.ComponentResource):
    """The SeldonDeployment, and per variant a PodDisruptionBudget and a NetworkPolicy."""

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
        for variant in config.model.variants:
            k8s.policy.v1.PodDisruptionBudget(
                f"{name}-{variant}-pdb",
                metadata=metadata(config, resource_name(config, variant), variant),
                spec=pdb_spec(config, variant),
                opts=child,
            )
            k8s.networking.v1.NetworkPolicy(
                f"{name}-{variant}-netpol",
                metadata=metadata(config, resource_name(config, variant), variant),
                spec=seldon_network_policy_spec(config, variant),
                opts=child,
            )
        self.register_outputs({})

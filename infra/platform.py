"""Add-ons a fresh cluster needs for Seldon traffic splitting, each switchable in config: the `Platform`
component, which makes Helm releases and the Istio gateway objects from the pure builders of `infra.helm`
(chart versions, values, and what each add-on is for, are there).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.config import Identity, LoadBalancerConfig, PlatformConfig, TrafficConfig
from infra.helm import (
    GATEWAY_NAME,
    GATEWAY_RELEASE,
    ISTIO_CHART_REPO,
    ISTIO_CHART_VERSION,
    SELDON_CHART_REPO,
    SELDON_CHART_VERSION,
    entry_service_spec,
    gateway_values,
    release_args,
    seldon_gateway_spec,
    seldon_operator_values,
)
from infra.services import load_balancer_address
from infra.workload import standard_labels




@dataclass(frozen=True)
class PlatformArgs:
    identity: Identity
    platform: PlatformConfig
    load_balancer: LoadBalancerConfig
    traffic: TrafficConfig


class Platform(pulumi.ComponentResource):
    """Istio with the Seldon gateway and its LoadBalancer, and the Seldon Core operator, as configured."""

    ready: list[pulumi.Resource]
    endpoint: pulumi.Output[str] | None

    def __init__(self, name: str, args: PlatformArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlserve:platform:Platform", name, None, opts)
        identity, platform = args.identity, args.platform
        self.ready = []
        self.endpoint = None
        if platform.install_istio:
            istio_ns = platform.istio_namespace
            base = k8s.helm.v3.Release("istio-base", **release_args("istio-base", "base", ISTIO_CHART_REPO, ISTIO_CHART_VERSION,
                                                        istio_ns, {}), opts=pulumi.ResourceOptions(parent=self))
            after_base = pulumi.ResourceOptions(parent=self, depends_on=[base])
            istiod = k8s.helm.v3.Release("istiod", **release_args("istiod", "istiod", ISTIO_CHART_REPO, ISTIO_CHART_VERSION,
                                                      istio_ns, {}), opts=after_base)
            gateway = k8s.helm.v3.Release(GATEWAY_RELEASE, **release_args(GATEWAY_RELEASE, "gateway", ISTIO_CHART_REPO,
                                                              ISTIO_CHART_VERSION, istio_ns, gateway_values()),
                              opts=pulumi.ResourceOptions(parent=self, depends_on=[istiod]))
            labels = standard_labels(identity)
            k8s.apiextensions.CustomResource(
                f"{name}-{GATEWAY_NAME}",
                api_version="networking.istio.io/v1beta1",
                kind="Gateway",
                metadata={"name": GATEWAY_NAME, "namespace": istio_ns, "labels": labels},
                spec=seldon_gateway_spec(),
                opts=after_base,
            )
            if args.traffic.router == "seldon":
                # The gateway is the way in only on the Seldon path; the plain path has its own entry point.
                entry = k8s.core.v1.Service(
                    f"{name}-entry",
                    metadata={"name": f"{identity.app_name}-gateway", "namespace": istio_ns, "labels": labels},
                    spec=entry_service_spec(args.load_balancer),
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[gateway]),
                )
                self.endpoint = entry.status.apply(load_balancer_address)
            self.ready += [istiod, gateway]
        if platform.install_seldon:
            operator = k8s.helm.v3.Release(
                "seldon-core-operator",
                **release_args("seldon-core-operator", "seldon-core-operator", SELDON_CHART_REPO, SELDON_CHART_VERSION,
                               platform.seldon_namespace, seldon_operator_values(platform)),
                opts=pulumi.ResourceOptions(parent=self, depends_on=list(self.ready)),
            )
            self.ready.append(operator)
        self.register_outputs({"endpoint": self.endpoint})

"""Add-ons a fresh cluster needs for Seldon traffic splitting, each switchable in config.

`platform.installIstio`: Istio (base CRDs, istiod, an ingress gateway), the `seldon-gateway` Istio
Gateway the Seldon operator attaches its VirtualServices to, and a LoadBalancer Service in front of
the gateway pods as the public entry point. `platform.installSeldon`: the Seldon Core v1 operator,
configured for that gateway, usage telemetry off. Chart versions are pinned here; values are pure.
"""

from __future__ import annotations

from dataclasses import dataclass
import pulumi
import pulumi_kubernetes as k8s

from infra.config import StackConfig
from infra.serving import load_balancer_address
from infra.workload import Manifest, standard_labels

SELDON_CHART_REPO = "https://storage.googleapis.com/seldon-charts"
SELDON_CHART_VERSION = "1.18.2"
ISTIO_CHART_REPO = "https://istio-release.storage.googleapis.com/charts"
ISTIO_CHART_VERSION = "1.24.3"
GATEWAY_NAME = "seldon-gateway"
GATEWAY_RELEASE = "istio-ingressgateway"
# The gateway chart labels its pods `istio: <release name without the istio- prefix>`.
GATEWAY_POD_LABELS = {"istio": "ingressgateway", "app": GATEWAY_RELEASE}
GATEWAY_HTTP_PORT = 80


def seldon_operator_values(config: StackConfig) -> Manifest:
    return {
        "istio": {"enabled": True, "gateway": f"{config.platform.istio_namespace}/{GATEWAY_NAME}"},
        "usageMetrics": {"enabled": False},
        "crd": {"create": True},
    }


def gateway_values() -> Manifest:
    # Our own LoadBalancer Service (below) is the entry point, so the chart's stays internal.
    return {"service": {"type": "ClusterIP"}, "labels": GATEWAY_POD_LABELS}


def seldon_gateway_spec() -> Manifest:
    return {
        "selector": {"istio": GATEWAY_POD_LABELS["istio"]},
        "servers": [{"port": {"number": GATEWAY_HTTP_PORT, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}],
    }


def entry_service_spec(config: StackConfig) -> Manifest:
    """The public LoadBalancer in front of the Istio gateway that splits traffic between predictors."""
    spec: Manifest = {
        "type": "LoadBalancer",
        "selector": GATEWAY_POD_LABELS,
        "ports": [{"name": "http", "port": config.load_balancer.port, "targetPort": GATEWAY_HTTP_PORT, "protocol": "TCP"}],
        "externalTrafficPolicy": "Local",
    }
    if config.load_balancer.source_ranges:
        spec["loadBalancerSourceRanges"] = list(config.load_balancer.source_ranges)
    return spec


def helm_release(name: str, chart: str, repo: str, version: str, namespace: str, values: Manifest, opts: pulumi.ResourceOptions) -> k8s.helm.v3.Release:
    return k8s.helm.v3.Release(
        name,
        name=name,
        chart=chart,
        version=version,
        repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=repo),
        namespace=namespace,
        create_namespace=True,
        atomic=True,
        values=values,
        opts=opts,
    )


@dataclass(frozen=True)
class PlatformArgs:
    config: StackConfig


class Platform(pulumi.ComponentResource):
    """Istio with the Seldon gateway and its LoadBalancer, and the Seldon Core operator, as configured."""

    ready: list[pulumi.Resource]
    endpoint: pulumi.Output[str] | None

    def __init__(self, name: str, args: PlatformArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlserve:platform:Platform", name, None, opts)
        config = args.config
        platform = config.platform
        self.ready = []
        self.endpoint = None
        if platform.install_istio:
            istio_ns = platform.istio_namespace
            base = helm_release("istio-base", "base", ISTIO_CHART_REPO, ISTIO_CHART_VERSION, istio_ns, {},
                                pulumi.ResourceOptions(parent=self))
            after_base = pulumi.ResourceOptions(parent=self, depends_on=[base])
            istiod = helm_release("istiod", "istiod", ISTIO_CHART_REPO, ISTIO_CHART_VERSION, istio_ns, {}, after_base)
            gateway = helm_release(GATEWAY_RELEASE, "gateway", ISTIO_CHART_REPO, ISTIO_CHART_VERSION, istio_ns,
                                   gateway_values(), pulumi.ResourceOptions(parent=self, depends_on=[istiod]))
            labels = standard_labels(config)
            k8s.apiextensions.CustomResource(
                f"{name}-{GATEWAY_NAME}",
                api_version="networking.istio.io/v1beta1",
                kind="Gateway",
                metadata={"name": GATEWAY_NAME, "namespace": istio_ns, "labels": labels},
                spec=seldon_gateway_spec(),
                opts=after_base,
            )
            if config.traffic.router == "seldon":
                # The gateway is the way in only on the Seldon path; the plain path has its own entry point.
                entry = k8s.core.v1.Service(
                    f"{name}-entry",
                    metadata={"name": f"{config.app_name}-gateway", "namespace": istio_ns, "labels": labels},
                    spec=entry_service_spec(config),
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[gateway]),
                )
                self.endpoint = entry.status.apply(load_balancer_address)
            self.ready += [istiod, gateway]
        if platform.install_seldon:
            operator = helm_release(
                "seldon-core-operator", "seldon-core-operator", SELDON_CHART_REPO, SELDON_CHART_VERSION,
                platform.seldon_namespace, seldon_operator_values(config),
                pulumi.ResourceOptions(parent=self, depends_on=list(self.ready)),
            )
            self.ready.append(operator)
        self.register_outputs({"endpoint": self.endpoint})

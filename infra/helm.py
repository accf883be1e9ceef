"""Pure builders of the Helm releases a fresh cluster needs: chart coordinates (pinned here), values, and the
arguments of a `helm.v3.Release`; plus the Istio gateway objects that go with those charts. No Pulumi resources:
`infra.platform.Platform` and `infra.monitoring.Monitoring` make the releases from these.

`platform.installIstio`: Istio (base CRDs, istiod, an ingress gateway), the `seldon-gateway` Istio Gateway the
Seldon operator attaches its VirtualServices to, and a LoadBalancer Service in front of the gateway pods as the
public entry point. `platform.installSeldon`: the Seldon Core v1 operator, configured for that gateway, usage
telemetry off. The monitoring charts' values are in `infra.monitors`.
"""

from __future__ import annotations

from typing import Any

import pulumi_kubernetes as k8s

from infra.config import LoadBalancerConfig, PlatformConfig
from infra.workload import Manifest

SELDON_CHART_REPO = "https://storage.googleapis.com/seldon-charts"
SELDON_CHART_VERSION = "1.18.2"
ISTIO_CHART_REPO = "https://istio-release.storage.googleapis.com/charts"
ISTIO_CHART_VERSION = "1.24.3"
GATEWAY_NAME = "seldon-gateway"
GATEWAY_RELEASE = "istio-ingressgateway"
# The gateway chart labels its pods `istio: <release name without the istio- prefix>`.
GATEWAY_POD_LABELS = {"istio": "ingressgateway", "app": GATEWAY_RELEASE}
GATEWAY_HTTP_PORT = 80


def release_args(name: str, chart: str, repo: str, version: str, namespace: str, values: Manifest) -> dict[str, Any]:
    """Keyword arguments of `k8s.helm.v3.Release` for one pinned chart: atomic, namespace created if missing."""
    return {
        "name": name,
        "chart": chart,
        "version": version,
        "repository_opts": k8s.helm.v3.RepositoryOptsArgs(repo=repo),
        "namespace": namespace,
        "create_namespace": True,
        "atomic": True,
        "values": values,
    }


def seldon_operator_values(platform: PlatformConfig) -> Manifest:
    return {
        "istio": {"enabled": True, "gateway": f"{platform.istio_namespace}/{GATEWAY_NAME}"},
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


def entry_service_spec(load_balancer: LoadBalancerConfig) -> Manifest:
    """The public LoadBalancer in front of the Istio gateway that splits traffic between predictors."""
    spec: Manifest = {
        "type": "LoadBalancer",
        "selector": GATEWAY_POD_LABELS,
        "ports": [{"name": "http", "port": load_balancer.port, "targetPort": GATEWAY_HTTP_PORT, "protocol": "TCP"}],
        "externalTrafficPolicy": "Local",
    }
    if load_balancer.source_ranges:
        spec["loadBalancerSourceRanges"] = list(load_balancer.source_ranges)
    return spec

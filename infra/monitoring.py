"""Monitoring of the model pods: the `Monitoring` component, which wires the pure builders of `infra.monitors`
(PodMonitor, PrometheusRule, the dashboard ConfigMap's data, the Prometheus Helm values; what each holds is described
there) and the optional kube-prometheus-stack and prometheus-adapter Helm releases into resources.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.config import AlertsConfig, Identity, ModelConfig, MonitoringConfig, TrafficConfig
from infra.helm import release_args
from infra.monitors import (
    DASHBOARD_LABEL,
    KUBE_PROMETHEUS_STACK_CHART,
    KUBE_PROMETHEUS_STACK_VERSION,
    MONITORING_API_VERSION,
    PROMETHEUS_ADAPTER_CHART,
    PROMETHEUS_ADAPTER_VERSION,
    PROMETHEUS_CHART_REPO,
    dashboard_data,
    kube_prometheus_stack_values,
    monitor_labels,
    pod_monitor_spec,
    prometheus_adapter_values,
    prometheus_rule_spec,
)
from infra.workload import standard_labels


@dataclass(frozen=True)
class MonitoringArgs:
    identity: Identity
    model: ModelConfig
    monitoring: MonitoringConfig
    alerts: AlertsConfig
    traffic: TrafficConfig


class Monitoring(pulumi.ComponentResource):
    """The model pods' PodMonitor, PrometheusRule and dashboard, and the optional Prometheus Helm releases."""

    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlserve:monitoring:Monitoring", name, None, opts)
        identity, monitoring = args.identity, args.monitoring
        child = pulumi.ResourceOptions(parent=self)
        self.releases: list[k8s.helm.v3.Release] = []
        # Helm creates monitoring.namespace; without either release it must exist already (the stack's home).
        if monitoring.install_stack:
            self.releases.append(
                k8s.helm.v3.Release(
                    monitoring.release_label,
                    **release_args(monitoring.release_label, KUBE_PROMETHEUS_STACK_CHART, PROMETHEUS_CHART_REPO,
                                   KUBE_PROMETHEUS_STACK_VERSION, monitoring.namespace,
                                   kube_prometheus_stack_values(monitoring)),
                    opts=child,
                )
            )
        if monitoring.install_adapter:
            self.releases.append(
                k8s.helm.v3.Release(
                    PROMETHEUS_ADAPTER_CHART,
                    **release_args(PROMETHEUS_ADAPTER_CHART, PROMETHEUS_ADAPTER_CHART, PROMETHEUS_CHART_REPO,
                                   PROMETHEUS_ADAPTER_VERSION, monitoring.namespace, prometheus_adapter_values(monitoring)),
                    opts=pulumi.ResourceOptions(parent=self, depends_on=list(self.releases)),
                )
            )
        # The monitors need the operator's CRDs, which the stack release brings when it is ours.
        after_stack = pulumi.ResourceOptions(parent=self, depends_on=list(self.releases))
        self.rule_name = f"{identity.app_name}-alerts" if monitoring.enabled else ""
        if monitoring.enabled:
            k8s.apiextensions.CustomResource(
                f"{name}-podmonitor",
                api_version=MONITORING_API_VERSION,
                kind="PodMonitor",
                metadata={"name": identity.app_name, "namespace": identity.namespace,
                          "labels": monitor_labels(identity, monitoring)},
                spec=pod_monitor_spec(identity, args.model, monitoring, args.traffic),
                opts=after_stack,
            )
            k8s.apiextensions.CustomResource(
                f"{name}-alerts",
                api_version=MONITORING_API_VERSION,
                kind="PrometheusRule",
                metadata={"name": self.rule_name, "namespace": identity.namespace,
                          "labels": monitor_labels(identity, monitoring)},
                spec=prometheus_rule_spec(identity, args.alerts, args.traffic),
                opts=after_stack,
            )
            k8s.core.v1.ConfigMap(
                f"{name}-dashboard",
                metadata={
                    "name": f"{identity.app_name}-dashboard",
                    "namespace": monitoring.namespace,
                    "labels": {**standard_labels(identity), **DASHBOARD_LABEL},
                },
                data=dashboard_data(identity, args.model, args.alerts),
                opts=after_stack,
            )
        self.register_outputs({"releases": [release.name for release in self.releases], "ruleName": self.rule_name})

"""Monitoring of the model pods: scrape config, alerts, dashboard, and the optional Prometheus add-ons.

`Monitoring` renders, when `monitoring.enabled`:
- a PodMonitor scraping every model pod's `/metrics` on the `http` port. It selects pods by
  `app.kubernetes.io/name` + `app.kubernetes.io/part-of: mlserve`, which the plain Deployments and
  Seldon's predictor pods both carry (Seldon makes its own Services, so a ServiceMonitor would miss them),
  and keeps only the model-server container (Seldon adds its executor container, with its own ports, to the pod);
- a PrometheusRule: a variant's model-error rate and p95 latency above the `alerts.*` thresholds, a
  variant with no available pods, successful predictions stopping while requests still reach the model
  (failing or hung), and no model pod being scraped at all;
- the Grafana dashboard of `infra.dashboard` in a ConfigMap the kube-prometheus-stack Grafana sidecar loads.

The monitors and rules carry `release: <monitoring.releaseLabel>`, which kube-prometheus-stack's
Prometheus selects by. `monitoring.installStack` and `monitoring.installAdapter` add Helm releases of
kube-prometheus-stack (Prometheus, Alertmanager, Grafana, kube-state-metrics, operator CRDs) and
prometheus-adapter (serving `model_requests_per_second` to the HPAs) in `monitoring.namespace`.
These builders are pure and return plain Kubernetes data or Helm values; `infra.monitoring.Monitoring` wires them.
"""

from __future__ import annotations

from infra.config import AlertsConfig, Identity, ModelConfig, MonitoringConfig, TrafficConfig
from infra.dashboard import DASHBOARD_KEY_SUFFIX, dashboard_json
from infra.selectors import model_errors_selector, model_selector
from infra.drift import drift_rule_group
from infra.seldon_specs import (
    SELDON_EXECUTOR_CONTAINER, SELDON_EXECUTOR_METRICS_PATH, SELDON_EXECUTOR_METRICS_PORT, executor_error_selector,
    executor_selector,
)
from infra.services import REQUESTS_PER_SECOND_METRIC
from infra.workload import PORT_NAME, Manifest, container_name, standard_labels
from service.names import ACTIVE_METRIC, ERRORS_METRIC, EXECUTOR_REQUESTS_METRIC, LATENCY_METRIC, PREDICTIONS_METRIC

MONITORING_API_VERSION = "monitoring.coreos.com/v1"
PROMETHEUS_CHART_REPO = "https://prometheus-community.github.io/helm-charts"
KUBE_PROMETHEUS_STACK_CHART = "kube-prometheus-stack"
KUBE_PROMETHEUS_STACK_VERSION = "75.6.2"
PROMETHEUS_ADAPTER_CHART = "prometheus-adapter"
PROMETHEUS_ADAPTER_VERSION = "5.1.0"
PROMETHEUS_PORT = 9090
# The Grafana sidecar of kube-prometheus-stack loads ConfigMaps carrying this label.
DASHBOARD_LABEL = {"grafana_dashboard": "1"}
# Rate window of the alerts: long enough to smooth a few scrapes, short enough to page promptly.
ALERT_WINDOW = "5m"
# Rate window of the adapter's requests-per-second metric the HPAs act on.
ADAPTER_WINDOW = "2m"
# Alert names, shared with the tests.
HIGH_ERROR_RATE = "ModelHighErrorRate"
HIGH_LATENCY = "ModelHighLatency"
NO_READY_PODS = "ModelNoReadyPods"
PREDICTIONS_STOPPED = "ModelPredictionsStopped"
NOT_SCRAPED = "ModelMetricsMissing"
EXECUTOR_ERRORS = "ModelGatewayErrorRate"


# --------------------------------------------------------------------------------------------------
# Pure builders
# --------------------------------------------------------------------------------------------------


def monitor_labels(identity: Identity, monitoring: MonitoringConfig) -> dict[str, str]:
    """Our standard labels plus the `release` label kube-prometheus-stack's Prometheus selects by."""
    return {**standard_labels(identity), "release": monitoring.release_label}


def executor_endpoint(monitoring: MonitoringConfig) -> Manifest:
    """Seldon's executor serves its own metrics (every request through the gateway, with the status code it
    answered, including its own failures) on the `metrics` port at /prometheus."""
    return {
        "port": SELDON_EXECUTOR_METRICS_PORT,
        "path": SELDON_EXECUTOR_METRICS_PATH,
        "scheme": "http",
        "interval": monitoring.scrape_interval,
        "relabelings": [
            {"sourceLabels": ["__meta_kubernetes_pod_container_name"], "regex": SELDON_EXECUTOR_CONTAINER, "action": "keep"}
        ],
    }


def pod_monitor_spec(
    identity: Identity, model: ModelConfig, monitoring: MonitoringConfig, traffic: TrafficConfig
) -> Manifest:
    """Scrape `/metrics` of every model pod of this stack, plain or Seldon, every `monitoring.scrapeInterval`;
    on Seldon also the executor's own metrics."""
    spec = {
        "selector": {
            "matchLabels": {
                "app.kubernetes.io/name": identity.app_name,
                "app.kubernetes.io/part-of": "mlserve",
            }
        },
        "namespaceSelector": {"matchNames": [identity.namespace]},
        # job="<appName>" on every series: the alerts, dashboard and adapter select on it.
        "jobLabel": "app.kubernetes.io/name",
        "podMetricsEndpoints": [
            {
                "port": PORT_NAME,
                "path": "/metrics",
                "scheme": "http",
                "interval": monitoring.scrape_interval,
                "relabelings": [
                    # Seldon adds its executor container to the pod; only our container serves model_* metrics.
                    {
                        "sourceLabels": ["__meta_kubernetes_pod_container_name"],
                        "regex": container_name(model),
                        "action": "keep",
                    }
                ],
            }
        ],
    }
    if traffic.router == "seldon":
        spec["podMetricsEndpoints"].append(executor_endpoint(monitoring))
    return spec


def deployment_matcher(identity: Identity) -> str:
    """kube-state-metrics matchers for the model Deployments: `APP-VARIANT` here, `APP-VARIANT-0-CONTAINER` under Seldon."""
    return f'namespace="{identity.namespace}",deployment=~"{identity.app_name}-.+"'


def alert_rules(identity: Identity, alerts: AlertsConfig, traffic: TrafficConfig) -> list[Manifest]:
    """The alerting rules, thresholds from `alerts.*`, each with severity, summary and description."""
    selector = model_selector(identity)
    window = ALERT_WINDOW
    by = "namespace, model_name, variant"
    requests = f"sum by ({by}) (rate({PREDICTIONS_METRIC}{{{selector}}}[{window}]))"
    all_errors = f"sum by ({by}) (rate({ERRORS_METRIC}{{{selector}}}[{window}]))"
    model_errors = f"sum by ({by}) (rate({ERRORS_METRIC}{{{model_errors_selector(identity)}}}[{window}]))"
    p95 = f"histogram_quantile(0.95, sum by ({by}, le) (rate({LATENCY_METRIC}_bucket{{{selector}}}[{window}])))"
    deployments = deployment_matcher(identity)
    threshold_percent = f"{alerts.error_rate_percent:g}"
    threshold_seconds = f"{alerts.p95_latency_ms / 1000:g}"
    where = "{{ $labels.variant }} of {{ $labels.model_name }} in {{ $labels.namespace }}"
    lasting = alerts.for_duration
    return [
        {
            "alert": HIGH_ERROR_RATE,
            "expr": f"100 * {model_errors} / {requests} > {threshold_percent}",
            "for": lasting,
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": f"Model {where} fails {{{{ $value | printf \"%.2f\" }}}}% of predictions",
                "description": (
                    f"Over the last {window}, {{{{ $value | printf \"%.2f\" }}}}% of prediction requests to {where} "
                    f"failed with a model error (client 4xx errors not counted); the limit is {threshold_percent}%, "
                    f"held for {lasting}."
                ),
            },
        },
        {
            "alert": HIGH_LATENCY,
            "expr": f"{p95} > {threshold_seconds}",
            "for": lasting,
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": f"Model {where} answers slowly (p95 {{{{ $value | humanizeDuration }}}})",
                "description": (
                    f"The 95th percentile of prediction latency of {where} over the last {window} is "
                    f"{{{{ $value | humanizeDuration }}}}, above the limit of {alerts.p95_latency_ms} ms, "
                    f"held for {lasting}."
                ),
            },
        },
        {
            "alert": NO_READY_PODS,
            "expr": (
                f"kube_deployment_status_replicas_available{{{deployments}}} == 0 "
                f"and on (namespace, deployment) kube_deployment_spec_replicas{{{deployments}}} > 0"
            ),
            "for": lasting,
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": "Deployment {{ $labels.namespace }}/{{ $labels.deployment }} has no ready model pods",
                "description": (
                    "No pod of {{ $labels.namespace }}/{{ $labels.deployment }} has been available for "
                    f"{lasting} although replicas are wanted: that variant answers no requests. Check the pods' "
                    "events, readiness probe (/readyz, the model load) and image pull."
                ),
            },
        },
        {
            "alert": PREDICTIONS_STOPPED,
            # Successful predictions are every request less the failed ones (no error series: none failed).
            # It fires while the model itself fails (5xx) or holds requests in flight and none succeeds:
            # a hung or broken model, not a client sending only bad input.
            "expr": (
                f"({requests} - ({all_errors} or {requests} * 0)) <= 0 "
                f"and on ({by}) ({model_errors} > 0 or sum by ({by}) ({ACTIVE_METRIC}{{{selector}}}) > 0)"
            ),
            "for": lasting,
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": f"Model {where} makes no successful predictions although requests arrive",
                "description": (
                    f"For {lasting}, {where} has had requests failing with model errors or stuck in flight, and "
                    f"not one successful prediction over the last {window}: the model is broken or hung."
                ),
            },
        },
        *executor_alert_rules(identity, alerts, traffic),
        {
            "alert": NOT_SCRAPED,
            "expr": f"absent(up{{{selector}}} == 1)",
            "for": lasting,
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": f"Prometheus scrapes no model pod of {identity.app_name} in {identity.namespace}",
                "description": (
                    f"No target of job {identity.app_name} in namespace {identity.namespace} has answered on "
                    f"/metrics for {lasting}: either no model pod runs or the PodMonitor does not reach them. "
                    "The other model alerts cannot fire without these metrics."
                ),
            },
        },
    ]


def executor_alert_rules(identity: Identity, alerts: AlertsConfig, traffic: TrafficConfig) -> list[Manifest]:
    """Seldon only: the share of prediction calls the executor answered with a 5xx, per predictor. It sees what
    the model_* series cannot: the model unreachable, timeouts, the executor's own errors."""
    if traffic.router != "seldon":
        return []
    by = "namespace, predictor_name"
    window = ALERT_WINDOW
    calls = f"sum by ({by}) (rate({EXECUTOR_REQUESTS_METRIC}{{{executor_selector(identity)}}}[{window}]))"
    failed = f"sum by ({by}) (rate({EXECUTOR_REQUESTS_METRIC}{{{executor_error_selector(identity)}}}[{window}]))"
    threshold_percent = f"{alerts.error_rate_percent:g}"
    where = "predictor {{ $labels.predictor_name }} of " + f"{identity.app_name} in {{{{ $labels.namespace }}}}"
    return [
        {
            "alert": EXECUTOR_ERRORS,
            "expr": f"100 * ({failed} or {calls} * 0) / {calls} > {threshold_percent}",
            "for": alerts.for_duration,
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": f"Seldon answers {{{{ $value | printf \"%.2f\" }}}}% of predictions to {where} with a server error",
                "description": (
                    f"Over the last {window}, Seldon's executor answered {{{{ $value | printf \"%.2f\" }}}}% of prediction "
                    f"calls to {where} with 5xx (model errors, and failures the model never saw: unreachable, "
                    f"timed out); the limit is {threshold_percent}%."
                ),
            },
        }
    ]


def prometheus_rule_spec(identity: Identity, alerts: AlertsConfig, traffic: TrafficConfig) -> Manifest:
    """The PrometheusRule spec: the model alerts, and input drift (`infra.drift`); also a valid Prometheus rules file."""
    return {"groups": [{"name": f"mlserve.{identity.app_name}.alerts", "rules": alert_rules(identity, alerts, traffic)},
                       drift_rule_group(identity, alerts)]}


def dashboard_data(identity: Identity, model: ModelConfig, alerts: AlertsConfig) -> dict[str, str]:
    """ConfigMap data: one dashboard JSON file, named after the app."""
    return {f"mlserve-{identity.app_name}{DASHBOARD_KEY_SUFFIX}": dashboard_json(identity, model, alerts)}


def prometheus_url(monitoring: MonitoringConfig) -> str:
    """In-cluster URL of kube-prometheus-stack's Prometheus (its fullname is pinned to the release label)."""
    return f"http://{monitoring.release_label}-prometheus.{monitoring.namespace}.svc"


def kube_prometheus_stack_values(monitoring: MonitoringConfig) -> Manifest:
    """Values of kube-prometheus-stack: predictable names, and a Grafana that loads dashboards from every namespace."""
    return {
        # Service names become `<releaseLabel>-prometheus` etc., whatever the chart's name truncation would do.
        "fullnameOverride": monitoring.release_label,
        "grafana": {
            "sidecar": {
                "dashboards": {
                    "enabled": True,
                    "label": next(iter(DASHBOARD_LABEL)),
                    "labelValue": DASHBOARD_LABEL["grafana_dashboard"],
                    "searchNamespace": "ALL",
                }
            }
        },
        # Monitors and rules are picked by `release: <releaseLabel>` (the chart's defaults, spelled out).
        "prometheus": {
            "prometheusSpec": {
                "podMonitorSelectorNilUsesHelmValues": True,
                "serviceMonitorSelectorNilUsesHelmValues": True,
                "ruleSelectorNilUsesHelmValues": True,
                "scrapeInterval": monitoring.scrape_interval,
            }
        },
    }


def adapter_rules() -> list[Manifest]:
    """prometheus-adapter custom rules: `model_predictions_total` per pod as the `model_requests_per_second` Pods metric."""
    return [
        {
            "seriesQuery": f'{PREDICTIONS_METRIC}{{namespace!="",pod!=""}}',
            "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
            "name": {"matches": f"^{PREDICTIONS_METRIC}$", "as": REQUESTS_PER_SECOND_METRIC},
            "metricsQuery": f"sum(rate(<<.Series>>{{<<.LabelMatchers>>}}[{ADAPTER_WINDOW}])) by (<<.GroupBy>>)",
        }
    ]


def prometheus_adapter_values(monitoring: MonitoringConfig) -> Manifest:
    """Values of prometheus-adapter: where Prometheus is, and only our rule (the chart's defaults off)."""
    return {
        "prometheus": {"url": prometheus_url(monitoring), "port": PROMETHEUS_PORT},
        "rules": {"default": False, "custom": adapter_rules()},
    }

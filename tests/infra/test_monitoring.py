"""Monitoring as rendered: monitors and rules against the real CRDs, alerts through promtool, the dashboard, Helm add-ons."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from infra.dashboard import dashboard_queries
from infra.monitors import (
    EXECUTOR_ERRORS,
    ADAPTER_WINDOW,
    DASHBOARD_LABEL,
    HIGH_ERROR_RATE,
    HIGH_LATENCY,
    KUBE_PROMETHEUS_STACK_VERSION,
    NO_READY_PODS,
    NOT_SCRAPED,
    PREDICTIONS_STOPPED,
    PROMETHEUS_ADAPTER_VERSION,
    PROMETHEUS_CHART_REPO,
)
from infra.services import REQUESTS_PER_SECOND_METRIC
from infra.workload import PORT_NAME, container_name
from tests.infra.conftest import GATEWAY_PROD, KUBERNETES_VERSION, manifests, stack_config
from tests.infra.crd import validate_against_crd

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus; scripts/setup.sh installs it)")
PROMTOOL_TESTS = Path(__file__).parent / "promtool"

PLAIN = {"traffic.router": "service", "traffic.challengerWeight": 0}
SELDON = {"traffic.router": "seldon"}
# The alert config tests/infra/promtool/alerts_test.yaml was written for, independent of Pulumi.prod.yaml.
PINNED_ALERTS = {
    "namespace": "mlserve",
    "appName": "churn-model",
    "alerts.errorRatePercent": "5",
    "alerts.p95LatencyMs": 500,
    "alerts.forDuration": "5m",
}
ADD_ONS = {"monitoring.installStack": True, "monitoring.installAdapter": True}
RENDERS = {
    "dev": ("dev", {}),
    "prod-plain": ("prod", PLAIN),
    "prod-seldon": ("prod", SELDON),
    "prod-gateway": ("prod", GATEWAY_PROD),
}


def one(rendered, kind: str) -> dict:
    found = manifests(rendered, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def releases(rendered) -> dict[str, dict]:
    """Helm releases by release name, as their Pulumi inputs."""
    return {r.inputs["name"]: r.inputs for r in rendered if r.type == "kubernetes:helm.sh/v3:Release"}


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True)


def write_rules(path: Path, groups: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------ monitors, rules


@pytest.mark.parametrize("name", RENDERS)
@pytest.mark.parametrize("kind", ["PodMonitor", "PrometheusRule"])
def test_monitors_and_rules_validate_against_the_crds(render, name, kind):
    stack, overrides = RENDERS[name]
    validate_against_crd(one(render(stack, **overrides), kind))


@pytest.mark.parametrize("kind", ["PodMonitor", "PrometheusRule"])
def test_crd_validation_rejects_unknown_fields(render, kind):
    manifest = one(render("prod"), kind)
    manifest = {**manifest, "spec": {**manifest["spec"], "endpoints": []}}
    with pytest.raises(AssertionError, match=r"spec: Additional properties are not allowed \('endpoints'"):
        validate_against_crd(manifest)


@pytest.mark.parametrize("kind", ["PodMonitor", "PrometheusRule"])
def test_monitors_carry_the_release_label_prometheus_selects_by(render, kind):
    rendered = render("prod", **{"monitoring.releaseLabel": "prom"})
    assert one(rendered, kind)["metadata"]["labels"]["release"] == "prom"


@pytest.mark.parametrize("name", ["prod-plain", "prod-seldon", "prod-gateway"])
def test_pod_monitor_scrapes_the_model_pods_of_every_path(render, name):
    stack, overrides = RENDERS[name]
    rendered = render(stack, **overrides)
    monitor = one(rendered, "PodMonitor")
    if name != "prod-seldon":
        templates = [d["spec"]["template"] for d in manifests(rendered, "Deployment")]
    else:
        sdep = one(rendered, "SeldonDeployment")
        templates = [c for p in sdep["spec"]["predictors"] for c in p["componentSpecs"]]
    assert len(templates) == 2
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector["app.kubernetes.io/part-of"] == "mlserve"
    for template in templates:
        assert selector.items() <= template["metadata"]["labels"].items()
        model = next(c for c in template["spec"]["containers"] if c["name"] == container_name(stack_config("prod").model))
        assert PORT_NAME in [port["name"] for port in model["ports"]]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["mlserve"]}
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == (PORT_NAME, "/metrics", "15s")
    # Only the model-server container, not the executor Seldon adds to the pod.
    assert endpoint["relabelings"] == [
        {"action": "keep", "regex": container_name(stack_config("prod").model), "sourceLabels": ["__meta_kubernetes_pod_container_name"]}
    ]
    # On Seldon also the executor's own metrics (operator/controllers/seldondeployment_engine.go: the executor
    # container `seldon-container-engine` has a port named `metrics`; getPrometheusPath defaults to /prometheus).
    executor = monitor["spec"]["podMetricsEndpoints"][1:]
    if name == "prod-seldon":
        assert executor == [{
            "interval": "15s", "path": "/prometheus", "port": "metrics", "scheme": "http",
            "relabelings": [{"action": "keep", "regex": "seldon-container-engine", "sourceLabels": ["__meta_kubernetes_pod_container_name"]}],
        }]
    else:
        assert executor == []


def test_rule_has_every_alert_with_severity_summary_and_description(render):
    rules = one(render("prod"), "PrometheusRule")["spec"]["groups"][0]["rules"]
    assert [rule["alert"] for rule in rules] == [
        HIGH_ERROR_RATE, HIGH_LATENCY, NO_READY_PODS, PREDICTIONS_STOPPED, EXECUTOR_ERRORS, NOT_SCRAPED
    ]
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule["for"] == "5m"


def test_alert_thresholds_come_from_stack_config(render):
    rendered = render("prod", **{"alerts.errorRatePercent": "2.5", "alerts.p95LatencyMs": 250, "alerts.forDuration": "10m"})
    rules = {r["alert"]: r for r in one(rendered, "PrometheusRule")["spec"]["groups"][0]["rules"]}
    assert rules[HIGH_ERROR_RATE]["expr"].endswith("> 2.5")
    assert rules[HIGH_LATENCY]["expr"].endswith("> 0.25")
    assert {rule["for"] for rule in rules.values()} == {"10m"}
    # Client mistakes (4xx) never count against the model.
    assert 'error_type!~"invalid_input|payload_too_large"' in rules[HIGH_ERROR_RATE]["expr"]


def test_monitoring_disabled_renders_no_monitors_rules_or_dashboard(render):
    kinds = {m["kind"] for m in manifests(render("prod", **{"monitoring.enabled": False}))}
    assert not kinds & {"PodMonitor", "PrometheusRule", "ConfigMap"}


def test_a_weight_change_leaves_monitoring_untouched(render):
    def monitoring_objects(weight):
        rendered = render("prod", **{"traffic.challengerWeight": weight})
        return [m for m in manifests(rendered) if m["kind"] in {"PodMonitor", "PrometheusRule", "ConfigMap"}]

    assert monitoring_objects(10) == monitoring_objects(50)


# ------------------------------------------------------------------------------------ promtool


@needs_promtool
@pytest.mark.parametrize("name", RENDERS)
def test_promtool_accepts_the_rules_as_rendered(render, name, tmp_path):
    stack, overrides = RENDERS[name]
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(one(render(stack, **overrides), "PrometheusRule")["spec"]))
    result = promtool("check", "rules", str(rules), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # The model alerts (5, 6 with the Seldon gateway alert) and the 3 input drift rules (tests/infra/test_drift_rules.py).
    assert f"SUCCESS: {(6 if name == 'prod-seldon' else 5) + 3} rules found" in result.stdout


@needs_promtool
def test_alerts_fire_on_bad_series_and_stay_silent_on_healthy_ones(render, tmp_path):
    rendered = render("prod", **PINNED_ALERTS)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(one(rendered, "PrometheusRule")["spec"]))
    shutil.copy(PROMTOOL_TESTS / "alerts_test.yaml", tmp_path)
    result = promtool("test", "rules", "alerts_test.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_every_dashboard_and_adapter_query_parses(render, stack, tmp_path):
    rendered = render(stack, **ADD_ONS)
    dashboard = json.loads(next(iter(one(rendered, "ConfigMap")["data"].values())))
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert exprs
    # Grafana fills $__rate_interval; the adapter fills its <<.Series>> template.
    queries = [expr.replace("$__rate_interval", "5m") for expr in exprs]
    for rule in releases(rendered)["prometheus-adapter"]["values"]["rules"]["custom"]:
        queries.append(rule["seriesQuery"])
        queries.append(
            rule["metricsQuery"]
            .replace("<<.Series>>", "model_predictions_total")
            .replace("<<.LabelMatchers>>", 'namespace="mlserve",pod=~"a|b"')
            .replace("<<.GroupBy>>", "pod")
        )
    rules = [{"record": f"mlserve:parse_check_{index}", "expr": query} for index, query in enumerate(queries)]
    path = write_rules(tmp_path / "queries.yaml", [{"name": "parse-check", "rules": rules}])
    result = promtool("check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------ dashboard


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_dashboard_configmap_is_loaded_by_the_grafana_sidecar(render, stack):
    configmap = one(render(stack), "ConfigMap")
    kubernetes_validate.validate(configmap, KUBERNETES_VERSION, strict=True)
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert DASHBOARD_LABEL.items() <= configmap["metadata"]["labels"].items()
    (name, content), = configmap["data"].items()
    assert name.endswith(".json")
    dashboard = json.loads(content)
    assert dashboard["uid"] and len(dashboard["uid"]) <= 40


def test_dashboard_shows_each_signal_by_variant_and_the_challenger_share(render):
    dashboard = json.loads(next(iter(one(render("prod"), "ConfigMap")["data"].values())))
    panels = {panel["title"]: panel for panel in dashboard["panels"] if panel["type"] != "row"}
    for title in [
        "Prediction requests per second, by variant",
        "p95 prediction latency, by variant",
        "Error rate, by variant (%)",
        "Active requests, by variant",
    ]:
        assert all("by (variant" in target["expr"] for target in panels[title]["targets"]), title
        assert all(target["legendFormat"].startswith("{{variant}}") for target in panels[title]["targets"]), title
    share = panels["Challenger traffic share, measured (%)"]["targets"][0]["expr"]
    assert share == dashboard_queries(stack_config("prod").identity)["challenger_traffic_share_percent"]
    assert 'variant="challenger"' in share
    assert "by (variant)" in panels["Traffic share by variant, measured (%)"]["targets"][0]["expr"]
    for panel in panels.values():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert all('namespace="mlserve",job="churn-model"' in t["expr"] for t in panel["targets"])
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(set(ids)) == len(ids)


def test_dashboard_draws_the_alert_thresholds(render):
    dashboard = json.loads(next(iter(one(render("prod", **{"alerts.p95LatencyMs": 300}), "ConfigMap")["data"].values())))
    latency = next(p for p in dashboard["panels"] if p["title"].startswith("p95"))
    assert latency["fieldConfig"]["defaults"]["thresholds"]["steps"][1]["value"] == 0.3


# ------------------------------------------------------------------------------------ Helm add-ons


def test_add_ons_are_off_unless_switched_on(render):
    assert not {"kube-prometheus-stack", "prometheus-adapter"} & set(releases(render("prod")))


def test_kube_prometheus_stack_release_is_pinned_and_named_for_the_release_label(render):
    stack = releases(render("prod", **ADD_ONS))["kube-prometheus-stack"]
    assert stack["chart"] == "kube-prometheus-stack"
    assert stack["version"] == KUBE_PROMETHEUS_STACK_VERSION
    assert stack["repositoryOpts"]["repo"] == PROMETHEUS_CHART_REPO
    assert stack["namespace"] == "monitoring"
    assert stack["values"]["fullnameOverride"] == "kube-prometheus-stack"
    sidecar = stack["values"]["grafana"]["sidecar"]["dashboards"]
    assert {sidecar["label"]: sidecar["labelValue"]} == DASHBOARD_LABEL


def test_adapter_serves_the_pods_metric_the_hpas_ask_for(render):
    rendered = render("prod", **PLAIN, **ADD_ONS)
    adapter = releases(rendered)["prometheus-adapter"]
    assert (adapter["chart"], adapter["version"]) == ("prometheus-adapter", PROMETHEUS_ADAPTER_VERSION)
    assert adapter["values"]["prometheus"] == {"url": "http://kube-prometheus-stack-prometheus.monitoring.svc", "port": 9090}
    (rule,) = adapter["values"]["rules"]["custom"]
    assert rule["name"] == {"matches": "^model_predictions_total$", "as": REQUESTS_PER_SECOND_METRIC}
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    assert f"rate(<<.Series>>{{<<.LabelMatchers>>}}[{ADAPTER_WINDOW}])" in rule["metricsQuery"]
    hpa_metrics = {
        m["pods"]["metric"]["name"]
        for hpa in manifests(rendered, "HorizontalPodAutoscaler")
        for m in hpa["spec"]["metrics"]
        if m["type"] == "Pods"
    }
    assert hpa_metrics == {REQUESTS_PER_SECOND_METRIC}


def test_dashboard_has_per_variant_quality_panels(render):
    dashboard = json.loads(next(iter(one(render("prod"), "ConfigMap")["data"].values())))
    panels = {panel["title"]: panel for panel in dashboard["panels"] if panel["type"] != "row"}
    quality = [title for title in panels if title.startswith(("Accuracy", "Log loss", "Mean absolute error"))]
    assert len(quality) == 3
    for title in quality:
        for target in panels[title]["targets"]:
            assert "model_feedback_total" in target["expr"] and "by (variant)" in target["expr"], title
            assert target["legendFormat"].startswith("{{variant}}"), title


@needs_promtool
def test_quality_queries_compute_accuracy_and_losses_per_variant(tmp_path):
    """promtool evaluates the dashboard's quality queries on counters /feedback would have written."""
    queries = dashboard_queries(stack_config("prod").identity)
    rules = [{"record": f"quality:{name}", "expr": queries[name]}
             for name in ("accuracy_percent", "mean_log_loss", "mean_absolute_error")]
    write_rules(tmp_path / "rules.yaml", [{"name": "quality", "rules": rules}])
    labels = 'namespace="mlserve",job="churn-model",model_name="m",model_version="1"'
    # Over an hour, 600 rows per variant: 480 correct for the champion, 420 for the challenger.
    series = {
        "model_feedback_total": (600, 600), "model_feedback_correct_total": (480, 420),
        "model_feedback_log_loss_total": (240, 330), "model_feedback_absolute_error_total": (0, 0),
    }
    input_series = [
        {"series": f'{metric}{{{labels},variant="{variant}"}}', "values": f"0+{per_hour / 60:g}x60"}
        for metric, totals in series.items() for variant, per_hour in zip(("champion", "challenger"), totals)
    ]
    test = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": input_series,
            "promql_expr_test": [
                {"expr": f'quality:{name}{{variant="{variant}"}}', "eval_time": "60m",
                 "exp_samples": [{"labels": f'quality:{name}{{variant="{variant}"}}', "value": value}]}
                for name, values in (("accuracy_percent", (80, 70)), ("mean_log_loss", (0.4, 0.55)))
                for variant, value in zip(("champion", "challenger"), values)
            ],
        }],
    }
    (tmp_path / "quality_test.yaml").write_text(yaml.safe_dump(test))
    result = promtool("test", "rules", "quality_test.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_has_an_explanations_row_apart_from_predictions(render):
    dashboard = json.loads(next(iter(one(render("prod"), "ConfigMap")["data"].values())))
    rows = [panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"]
    assert any(title.startswith("Explanations (/explain)") for title in rows), rows
    explain = [panel for panel in dashboard["panels"] if panel["type"] != "row"
               and any("model_explain_" in target["expr"] for target in panel["targets"])]
    assert {panel["title"].split(":")[0] for panel in explain} == {
        "Explanation requests per second", "p95 explanation latency, by variant"}
    for panel in explain:
        for target in panel["targets"]:
            assert "model_prediction" not in target["expr"] and "by (variant" in target["expr"], panel["title"]


@needs_promtool
def test_explanation_queries_count_answers_and_refusals_per_variant(tmp_path):
    """promtool evaluates the explanation panels' queries on counters the server would have written."""
    from infra.dashboard import explain_queries

    queries = explain_queries(stack_config("prod").identity, window="5m")
    rules = [{"record": f"explain:{name}", "expr": queries[name]} for name in ("requests_per_second", "errors_per_second")]
    write_rules(tmp_path / "rules.yaml", [{"name": "explain", "rules": rules}])
    labels = 'namespace="mlserve",job="churn-model",model_name="m",model_version="1"'
    # Per minute: the champion explains 120 requests and refuses 6 as busy; the challenger explains 60.
    input_series = [
        {"series": f'model_explain_requests_total{{{labels},variant="champion"}}', "values": "0+120x60"},
        {"series": f'model_explain_requests_total{{{labels},variant="challenger"}}', "values": "0+60x60"},
        {"series": f'model_explain_errors_total{{{labels},variant="champion",error_type="unavailable"}}',
         "values": "0+6x60"},
    ]
    test = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": input_series,
            "promql_expr_test": [
                {"expr": 'explain:requests_per_second{variant="champion"}', "eval_time": "30m",
                 "exp_samples": [{"labels": 'explain:requests_per_second{variant="champion"}', "value": 2}]},
                {"expr": 'explain:requests_per_second{variant="challenger"}', "eval_time": "30m",
                 "exp_samples": [{"labels": 'explain:requests_per_second{variant="challenger"}', "value": 1}]},
                {"expr": "explain:errors_per_second", "eval_time": "30m",
                 "exp_samples": [{"labels": 'explain:errors_per_second{error_type="unavailable",variant="champion"}',
                                  "value": 0.1}]},
            ],
        }],
    }
    (tmp_path / "explain_test.yaml").write_text(yaml.safe_dump(test))
    result = promtool("test", "rules", "explain_test.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr

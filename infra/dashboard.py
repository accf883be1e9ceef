"""The Grafana dashboard of the model pods, as code, and the PromQL vocabulary of the model server's metrics.

Pure: `dashboard_json(identity, model, alerts)` returns the dashboard as a JSON string (built with
grafana-foundation-sdk), which `infra.monitoring` ships in a ConfigMap that kube-prometheus-stack's Grafana sidecar
loads. The metric names and the label selector live here, below the component, because the alert rules in
`infra.monitoring` and the dashboard must query exactly the same series.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders.common import GraphThresholdsStyleConfig, ReduceDataOptions, VizLegendOptions
from grafana_foundation_sdk.builders.dashboard import Dashboard, DatasourceVariable, Row, ThresholdsConfig
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import GraphTresholdsStyleMode, LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import DataSourceRef, Threshold, ThresholdsMode

from infra.config import AlertsConfig, Identity, ModelConfig
from infra.drift import output_share_query, worst_columns_query
from infra.selectors import model_errors_selector, model_selector
# The metrics the model server exports (service/metrics.py), each labelled model_name, model_version, variant.
from service.names import ACTIVE_METRIC, CLIENT_ERROR_TYPES, ERRORS_METRIC, LATENCY_METRIC, PREDICTIONS_METRIC
from service.quality import FEEDBACK_METRICS, FEEDBACK_REJECTED_METRIC

DASHBOARD_KEY_SUFFIX = ".json"
DATASOURCE_VARIABLE = "datasource"
# Grafana's own rate window: at least four scrape intervals, whatever the zoom.
RATE_WINDOW = "$__rate_interval"
# Ground truth trickles in: quality is averaged over a long window so a few rows do not swing it.
QUALITY_WINDOW = "1h"


def dashboard_uid(identity: Identity) -> str:
    """Stable dashboard uid (Grafana allows 40 characters), so links survive re-deploys."""
    return f"mlserve-{identity.app_name}-{identity.stack}"[:40]


def dashboard_queries(identity: Identity, window: str = RATE_WINDOW) -> dict[str, str]:
    """Every PromQL expression on the dashboard, by a short name; `window` replaces Grafana's rate interval."""
    selector = model_selector(identity)
    requests = f"sum by (variant) (rate({PREDICTIONS_METRIC}{{{selector}}}[{window}]))"
    return {
        "requests_per_second": requests,
        "p95_latency_seconds": (
            f"histogram_quantile(0.95, sum by (variant, le) (rate({LATENCY_METRIC}_bucket{{{selector}}}[{window}])))"
        ),
        "model_error_percent": (
            f"100 * sum by (variant) (rate({ERRORS_METRIC}{{{model_errors_selector(identity)}}}[{window}])) / {requests}"
        ),
        "client_error_percent": (
            f'100 * sum by (variant) (rate({ERRORS_METRIC}{{{selector},error_type=~"{"|".join(CLIENT_ERROR_TYPES)}"}}[{window}]))'
            f" / {requests}"
        ),
        "active_requests": f"sum by (variant) ({ACTIVE_METRIC}{{{selector}}})",
        "challenger_traffic_share_percent": (
            f'100 * sum(rate({PREDICTIONS_METRIC}{{{selector},variant="challenger"}}[{window}]))'
            f" / sum(rate({PREDICTIONS_METRIC}{{{selector}}}[{window}]))"
        ),
        **quality_queries(identity),
        "traffic_share_percent": (
            f"100 * sum by (variant) (rate({PREDICTIONS_METRIC}{{{selector}}}[{window}]))"
            f" / ignoring (variant) group_left sum(rate({PREDICTIONS_METRIC}{{{selector}}}[{window}]))"
        ),
    }


def quality_queries(identity: Identity, window: str = QUALITY_WINDOW) -> dict[str, str]:
    """Per-variant quality from the feedback counters (`service.quality`), averaged over `window`."""
    selector = model_selector(identity)

    def total(field: str) -> str:
        return f"sum by (variant) (increase({FEEDBACK_METRICS[field]}{{{selector}}}[{window}]))"

    def mean(field: str) -> str:
        return f"{total(field)} / {total('count')}"

    return {
        "accuracy_percent": f"100 * {mean('correct')}",
        "mean_log_loss": mean("log_loss"),
        "mean_brier": mean("brier"),
        "mean_absolute_error": mean("absolute_error"),
        "feedback_rows_per_second": f"sum by (variant) (rate({FEEDBACK_METRICS['count']}{{{selector}}}[{RATE_WINDOW}]))",
        "feedback_rejected_per_second": (
            f"sum by (reason) (rate({FEEDBACK_REJECTED_METRIC}{{{selector}}}[{RATE_WINDOW}]))"
        ),
    }


def _query(expr: str, legend: str, ref_id: str = "A") -> Dataquery:
    return Dataquery().expr(expr).legend_format(legend).ref_id(ref_id)


def _thresholds(limit: float) -> ThresholdsConfig:
    return (
        ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=None, color="green"), Threshold(value=limit, color="red")])
    )


def _stat(title: str, description: str, expr: str, legend: str) -> Stat:
    """A big-number panel showing the last value of one percentage."""
    return (
        Stat()
        .title(title)
        .description(description)
        .unit("percent")
        .min(0)
        .max(100)
        .span(8)
        .height(6)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]))
        .with_target(_query(expr, legend))
    )


def _timeseries(title: str, description: str, unit: str) -> Timeseries:
    """A per-variant graph with a table legend (last, max) under it."""
    return (
        Timeseries()
        .title(title)
        .description(description)
        .unit(unit)
        .min(0)
        .span(12)
        .height(9)
        .legend(
            VizLegendOptions()
            .show_legend(True)
            .display_mode(LegendDisplayMode.TABLE)
            .placement(LegendPlacement.BOTTOM)
            .calcs(["lastNotNull", "max"])
        )
    )


def _with_alert_line(panel: Timeseries, limit: float) -> Timeseries:
    """Draw the alert threshold as a dashed red line."""
    return panel.thresholds(_thresholds(limit)).thresholds_style(
        GraphThresholdsStyleConfig().mode(GraphTresholdsStyleMode.DASHED)
    )


def build_dashboard(identity: Identity, model: ModelConfig, alerts: AlertsConfig) -> Dashboard:
    """The dashboard builder: per-variant traffic, latency, errors and load, and the challenger's share."""
    queries = dashboard_queries(identity)
    datasource = DataSourceRef(type_val="prometheus", uid=f"${{{DATASOURCE_VARIABLE}}}")
    by_variant = "{{variant}}"
    return (
        Dashboard(f"mlserve / {identity.app_name} ({identity.stack})")
        .uid(dashboard_uid(identity))
        .description(
            f"Model {model.name} served by mlserve stack {identity.stack!r} in namespace {identity.namespace}: "
            "champion and challenger side by side."
        )
        .tags(["mlserve", identity.app_name, identity.stack])
        .refresh("30s")
        .time("now-1h", "now")
        .with_variable(DatasourceVariable(DATASOURCE_VARIABLE).label("Prometheus").type("prometheus"))
        .with_row(Row("Traffic split"))
        .with_panel(
            _stat(
                "Challenger traffic share, measured (%)",
                "Share of prediction requests the challenger answered over the rate window: the weight actually "
                "in effect (compare with traffic.challengerWeight in stack config).",
                queries["challenger_traffic_share_percent"],
                "challenger share",
            ).datasource(datasource)
        )
        .with_panel(
            _timeseries(
                "Traffic share by variant, measured (%)",
                "Each variant's share of prediction requests: a canary rollout shows as a staircase. The configured "
                "weight is stack config (`pulumi config get --path traffic.challengerWeight`, stack output "
                "`challengerWeight`); it is not written into this dashboard, so a weight change stays a one-object diff.",
                "percent",
            )
            .max(100)
            .span(16)
            .height(6)
            .datasource(datasource)
            .with_target(_query(queries["traffic_share_percent"], by_variant))
        )
        .with_row(Row("Per variant"))
        .with_panel(
            _timeseries(
                "Prediction requests per second, by variant",
                f"{PREDICTIONS_METRIC}: every prediction request, successful or not.",
                "reqps",
            )
            .datasource(datasource)
            .with_target(_query(queries["requests_per_second"], by_variant))
        )
        .with_panel(
            _with_alert_line(
                _timeseries(
                    "p95 prediction latency, by variant",
                    f"Dashed line: the ModelHighLatency threshold ({alerts.p95_latency_ms} ms).",
                    "s",
                ),
                alerts.p95_latency_ms / 1000,
            )
            .datasource(datasource)
            .with_target(_query(queries["p95_latency_seconds"], by_variant))
        )
        .with_panel(
            _with_alert_line(
                _timeseries(
                    "Error rate, by variant (%)",
                    "Model errors (5xx) count against the model; client errors (4xx: "
                    f"{', '.join(CLIENT_ERROR_TYPES)}) are shown apart. Dashed line: the ModelHighErrorRate "
                    f"threshold ({alerts.error_rate_percent:g}%).",
                    "percent",
                ),
                alerts.error_rate_percent,
            )
            .datasource(datasource)
            .with_target(_query(queries["model_error_percent"], f"{by_variant} model errors", "A"))
            .with_target(_query(queries["client_error_percent"], f"{by_variant} client errors (4xx)", "B"))
        )
        .with_panel(
            _timeseries("Active requests, by variant", f"{ACTIVE_METRIC}: prediction requests in flight.", "short")
            .datasource(datasource)
            .with_target(_query(queries["active_requests"], by_variant))
        )
        .with_row(Row("Quality, from ground truth sent to /feedback"))
        .with_panel(
            _timeseries(
                f"Accuracy, by variant (%, last {QUALITY_WINDOW})",
                "Share of classifier predictions whose ground truth, sent later to /feedback, matched the predicted "
                "class; counted for the variant that made the prediction (its signed prediction_id says which). "
                "The rollout's quality gate judges the same counters.",
                "percent",
            )
            .max(100)
            .datasource(datasource)
            .with_target(_query(queries["accuracy_percent"], by_variant))
        )
        .with_panel(
            _timeseries(
                f"Log loss and Brier score, by variant (last {QUALITY_WINDOW})",
                "Mean log loss (natural log) and Brier score of classifier predictions with probabilities: lower is "
                "better.",
                "short",
            )
            .datasource(datasource)
            .with_target(_query(queries["mean_log_loss"], f"{by_variant} log loss", "A"))
            .with_target(_query(queries["mean_brier"], f"{by_variant} Brier", "B"))
        )
        .with_panel(
            _timeseries(
                f"Mean absolute error, by variant (last {QUALITY_WINDOW})",
                "Regression models: mean absolute error against the ground truth sent to /feedback, in the target's "
                "units.",
                "short",
            )
            .datasource(datasource)
            .with_target(_query(queries["mean_absolute_error"], by_variant))
        )
        .with_panel(
            _timeseries(
                "Feedback rows per second: recorded by variant, refused by reason",
                "Refused rows (forged, expired, wrong key, malformed, duplicate, bad truth) never reach the quality "
                "figures.",
                "short",
            )
            .datasource(datasource)
            .with_target(_query(queries["feedback_rows_per_second"], f"{by_variant} recorded", "A"))
            .with_target(_query(queries["feedback_rejected_per_second"], "refused: {{reason}}", "B"))
        )
        # Input drift and what the variants predict (issue 24; queries and rules in infra.drift).
        .with_row(Row("Drift: live inputs against the training data, and what each variant predicts"))
        .with_panel(
            _with_alert_line(
                _timeseries(
                    f"Input drift, the worst columns (PSI, last {alerts.drift_window})",
                    "Population stability index of each input column's live values against the model version's "
                    "reference profile (its training data), per variant: the five highest. Dashed line: the "
                    f"ModelInputDrift threshold ({alerts.drift_psi_threshold:g}).",
                    "short",
                ),
                alerts.drift_psi_threshold,
            )
            .datasource(datasource)
            .with_target(_query(worst_columns_query(identity), "{{column}} ({{variant}})"))
        )
        .with_panel(
            _timeseries(
                "Predicted class share, by variant (%)",
                "How often each variant predicts each class on the same traffic: what the rollout's label-free "
                "gate compares (rollout.divergence.*).",
                "percent",
            )
            .max(100)
            .datasource(datasource)
            .with_target(_query(output_share_query(identity, RATE_WINDOW), "{{variant}}: {{output}}"))
        )
        .with_row(Row("Explanations (/explain), apart from predictions"))
        .with_panel(
            _timeseries("Explanation requests per second: answered and refused, by variant",
                        "Refused: 503 when the explainer processes are busy or too slow, 409 without background data, "
                        "4xx for bad rows; none of it counts in the prediction series above.", "reqps")
            .datasource(datasource)
            .with_target(_query(explain_queries(identity)["requests_per_second"], f"{by_variant} all", "A"))
            .with_target(_query(explain_queries(identity)["errors_per_second"], f"{by_variant} {{{{error_type}}}}", "B"))
        )
        .with_panel(
            _timeseries("p95 explanation latency, by variant", "Including the wait for an explainer process.",
                        "s")
            .datasource(datasource)
            .with_target(_query(explain_queries(identity)["p95_latency_seconds"], by_variant))
        )
    )


def explain_queries(identity: Identity, window: str = RATE_WINDOW) -> dict[str, str]:
    """The explanation panels' PromQL (the model_explain_* series of service/metrics.py)."""
    selector = model_selector(identity)
    return {
        "requests_per_second": f"sum by (variant) (rate(model_explain_requests_total{{{selector}}}[{window}]))",
        "errors_per_second": (
            f"sum by (variant, error_type) (rate(model_explain_errors_total{{{selector}}}[{window}]))"
        ),
        "p95_latency_seconds": (
            f"histogram_quantile(0.95, sum by (variant, le) "
            f"(rate(model_explain_latency_seconds_bucket{{{selector}}}[{window}])))"
        ),
    }


def dashboard_json(identity: Identity, model: ModelConfig, alerts: AlertsConfig) -> str:
    """The dashboard as Grafana's JSON model, keys sorted so renders diff cleanly; rows and panels are numbered
    1, 2, ... in the order they appear (Grafana needs each id unique within the dashboard)."""
    dashboard = build_dashboard(identity, model, alerts).build()
    for panel_id, panel in enumerate(dashboard.panels or [], start=1):
        panel.id_val = panel_id
    return JSONEncoder(sort_keys=True, indent=2).encode(dashboard)

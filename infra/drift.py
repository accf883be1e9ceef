"""Input drift in Prometheus: recording rules for a per-column drift score, and the alert on it (pure builders).

The model server counts every valid input row into its reference profile's bins (`model_input_bin_rows_total{column,
bin}`) and exports the reference shares beside them (`model_input_reference_share{column, bin}`; `service.drift`,
`service.profiles`). Two recording rules turn them into the population stability index of each column, per variant,
over the last `alerts.drift.window`:

- `mlserve:model_input_bin_share`: each bin's share of the window's rows;
- `mlserve:model_input_drift_psi`: sum over bins of (live - reference) * ln(live / reference), both shares floored at
  `SHARE_FLOOR` so an empty bin counts as a large (finite) shift rather than an infinite one.

PSI under 0.1 is usually read as no shift, 0.1-0.25 as moderate, above 0.25 as a major one. `ModelInputDrift` fires
when a column's score stays above `alerts.drift.psiThreshold` for `alerts.drift.forDuration`, with at least
`MIN_ROWS` rows in the window (a handful of rows always looks shifted). A live category the reference never saw
(`other`) has no reference share to compare with and is left out of the score.
"""

from __future__ import annotations

from infra.config import AlertsConfig, Identity
from infra.selectors import model_selector
from infra.workload import Manifest
from service.drift import INPUT_BINS_METRIC, OUTPUTS_METRIC, REFERENCE_SHARE_METRIC

BIN_SHARE_RULE = "mlserve:model_input_bin_share"
DRIFT_SCORE_RULE = "mlserve:model_input_drift_psi"
INPUT_DRIFT = "ModelInputDrift"
SHARE_FLOOR = "0.0001"
# Fewer rows than this in the window are not judged: PSI over a few rows is noise.
MIN_ROWS = 200
# The scrape job is kept, so stacks sharing a Prometheus (even in one namespace) never read each other's series.
BY_COLUMN = "namespace, job, model_name, model_version, variant, column"


def drift_rules(identity: Identity, alerts: AlertsConfig) -> list[Manifest]:
    """The recording rules and the alert, in evaluation order (the score reads the shares recorded just before)."""
    return drift_rules_for(model_selector(identity), alerts.drift_window, alerts.drift_psi_threshold,
                           alerts.drift_for_duration)


def drift_rules_for(selector: str, window: str, psi_threshold: float, for_duration: str) -> list[Manifest]:
    """`drift_rules` for any label matchers (no braces): the local demo's Prometheus has no namespaces."""
    rows = f"sum by ({BY_COLUMN}) (increase({INPUT_BINS_METRIC}{{{selector}}}[{window}]))"
    share = (f"sum by ({BY_COLUMN}, bin) (increase({INPUT_BINS_METRIC}{{{selector}}}[{window}])) "
             f"/ ignoring (bin) group_left {rows}")
    reference = f"clamp_min(max by ({BY_COLUMN}, bin) ({REFERENCE_SHARE_METRIC}{{{selector}}}), {SHARE_FLOOR})"
    namespace = f"{{{selector}}}"
    live = f"clamp_min({BIN_SHARE_RULE}{namespace}, {SHARE_FLOOR})"
    threshold = f"{psi_threshold:g}"
    where = "{{ $labels.column }} of {{ $labels.model_name }} {{ $labels.model_version }} ({{ $labels.variant }})"
    return [
        {"record": BIN_SHARE_RULE, "expr": share},
        {"record": DRIFT_SCORE_RULE, "expr": f"sum by ({BY_COLUMN}) (({live} - {reference}) * ln({live} / {reference}))"},
        {
            "alert": INPUT_DRIFT,
            "expr": f"{DRIFT_SCORE_RULE}{namespace} > {threshold} and on ({BY_COLUMN}) {rows} >= {MIN_ROWS}",
            "for": for_duration,
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": f"Input column {where} drifted from the training data (PSI {{{{ $value | printf \"%.2f\" }}}})",
                "description": (
                    f"Over the last {window}, the values of {where} are distributed unlike the model's reference "
                    f"profile: population stability index {{{{ $value | printf \"%.2f\" }}}}, above {threshold} for "
                    f"{for_duration}. The model now sees data it did not learn from; check the source of "
                    "the column, and consider retraining."
                ),
            },
        },
    ]


def drift_rule_group(identity: Identity, alerts: AlertsConfig) -> Manifest:
    """The drift rules as one rule group of the stack's PrometheusRule."""
    return {"name": f"mlserve.{identity.app_name}.drift", "rules": drift_rules(identity, alerts)}


def worst_columns_query(identity: Identity) -> str:
    """PromQL for the dashboard: the five columns with the highest drift score (per variant)."""
    return f"topk(5, max by (column, variant) ({DRIFT_SCORE_RULE}{{{model_selector(identity)}}}))"


def output_share_query(identity: Identity, window: str) -> str:
    """PromQL for the dashboard: each variant's share of predictions per output class, in percent."""
    rows = f"rate({OUTPUTS_METRIC}{{{model_selector(identity)}}}[{window}])"
    return f"100 * sum by (variant, output) ({rows}) / ignoring (output) group_left sum by (variant) ({rows})"

"""Canary analysis as pure functions: PromQL for a variant's traffic, and the judgement of one check.

`variant_queries` builds the PromQL the scheduler sends to a `MetricsProvider`; `judge` turns what came
back for the champion and the challenger into a `Measurement` whose `Phase` says passed, failed,
inconclusive or error. Nothing here talks to the network, so every rule is table-tested.

The rules, in order:

- a challenger that served fewer than `min_requests` requests in the window is not judged
  (inconclusive): small samples neither promote nor roll back;
- error rate: the challenger fails only when its observed error rate is above the absolute limit *and*
  significantly worse than the champion's (one-sided Fisher exact test on the 2x2 table of errors and
  successes). Above the limit but not significantly worse is inconclusive: the rollout holds, gathering
  traffic; it neither promotes a challenger over the limit nor blames it for what the champion does too
  (a failing dependency, say). Without champion traffic to compare with, the excess over the limit
  itself must be significant (one-sided exact binomial test). Each test runs at `significance` 0.005;
  the scheduler confirms a failure only on fresh traffic (see `rollout.scheduler`), which is what keeps
  identical variants from being rolled back by repeated looks at the same requests (`bench/rollout.py`);
- latency: the challenger's p95 must stay under the absolute limit, and must not be more than
  `max_p95_ratio` times the champion's p95 (plus `p95_slack_seconds`, so histogram bucket rounding on
  fast models is not mistaken for a regression);
- quality (when ground truth reaches `/feedback` and `QualityThresholds` are set): the difference between
  the challenger's and the champion's mean loss on the chosen metric (error rate for accuracy, log loss,
  Brier score, absolute error) since the rollout began, judged by an always-valid confidence sequence
  (`quality_confidence_sequence`), so the scheduler may look every interval without inflating its error
  rates. Its lower bound above `max_degradation` fails conclusively (roll back now: the sequence already
  accounts for every look); a point estimate above it, not yet significant, holds; anything else passes, but
  with `required_for_promotion` the last step before 100 holds until the upper bound is within
  `max_degradation`. Fewer than `min_feedback` rows for either variant is not judged, so a rollout with no
  feedback behaves exactly as one without the quality gate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Callable

from scipy import stats

from service.names import CLIENT_ERROR_TYPES, ERRORS_METRIC, EXECUTOR_REQUESTS_METRIC, LATENCY_METRIC
from service.names import PREDICTIONS_METRIC as REQUESTS_METRIC
from service.quality import FEEDBACK_METRICS, QUALITY_METRICS

# error_type values that are the client's fault (4xx), as a PromQL regex; everything else counts against the model.
CLIENT_ERRORS_REGEX = "|".join(CLIENT_ERROR_TYPES)


class Phase(str, Enum):
    """Outcome of one analysis check (argo-rollouts' measurement phases)."""

    PASSED = "passed"
    FAILED = "failed"
    INCONCLUSIVE = "inconclusive"
    ERROR = "error"


@dataclass(frozen=True)
class VariantSample:
    """What one variant did during the analysis window: requests served, of which failed, and p95."""

    variant: str
    requests: int
    errors: int
    p95_seconds: float | None = None

    @property
    def error_rate(self) -> float | None:
        """Failed share of requests, or None when the variant served nothing."""
        return self.errors / self.requests if self.requests else None


@dataclass(frozen=True)
class Thresholds:
    """Limits a challenger must meet; `significance` is the false-alarm rate of each statistical test."""

    min_requests: int
    max_error_rate: float
    max_p95_seconds: float
    significance: float = 0.005
    max_p95_ratio: float = 2.0
    p95_slack_seconds: float = 0.05


@dataclass(frozen=True)
class QualityThresholds:
    """The quality gate: which metric, the largest degradation tolerated, and when to judge.

    `max_degradation` is in the metric's units (accuracy as a fraction: 0.01 is one point; log loss in nats;
    Brier; absolute error in the target's units). `significance` bounds the chance, over the whole rollout and
    however often it looks, that the confidence sequence excludes the true difference.
    """

    metric: str
    max_degradation: float
    min_feedback: int
    required_for_promotion: bool = False
    significance: float = 0.01

    def __post_init__(self):
        if self.metric not in QUALITY_METRICS:
            raise ValueError(f"quality metric must be one of {', '.join(QUALITY_METRICS)} (got {self.metric!r})")


@dataclass(frozen=True)
class QualitySample:
    """One variant's feedback since the rollout began: rows judged, and the sum and sum of squares of their loss."""

    variant: str
    count: int
    loss_sum: float
    loss_squared_sum: float
    metric: str = "accuracy"

    @property
    def mean_loss(self) -> float | None:
        return self.loss_sum / self.count if self.count else None

    @property
    def score(self) -> float | None:
        """The metric as people quote it: accuracy (fraction correct), or the mean loss for the others."""
        if self.mean_loss is None:
            return None
        return 1 - self.mean_loss if self.metric == "accuracy" else self.mean_loss

    def variance(self, metric: str) -> float:
        """Per-row variance of the loss (smoothed for accuracy, so 0 or 100% correct is not certainty)."""
        if metric == "accuracy":
            rate = (self.loss_sum + 0.5) / (self.count + 1)
            return rate * (1 - rate)
        mean = self.loss_sum / self.count
        return max(self.loss_squared_sum / self.count - mean * mean, 1e-12)


@dataclass(frozen=True)
class ConfidenceInterval:
    """The challenger's loss minus the champion's: estimate and bounds (positive means the challenger is worse)."""

    estimate: float
    lower: float
    upper: float


@dataclass(frozen=True)
class Look:
    """What the scheduler knows about a look besides the window: time since the rollout began, next step."""

    since_start_seconds: float
    promoting: bool = False


@dataclass(frozen=True)
class Check:
    """One rule's verdict, with the numbers it looked at so a report can explain the decision.

    `conclusive` marks a failure that needs no confirmation on fresh traffic (the sequential quality test
    already accounts for every look): the scheduler rolls back at once.
    """

    name: str
    phase: Phase
    detail: str
    conclusive: bool = False


@dataclass(frozen=True)
class Measurement:
    """Result of one analysis: the overall phase, why, and the samples and checks behind it."""

    phase: Phase
    reason: str
    champion: VariantSample | None = None
    challenger: VariantSample | None = None
    checks: tuple[Check, ...] = field(default_factory=tuple)
    quality: tuple[QualitySample, ...] = field(default_factory=tuple)
    quality_difference: ConfidenceInterval | None = None
    # The label-free gate's comparison of what the variants predict (rollout.divergence.Divergence), when judged.
    divergence: object | None = None

    @property
    def conclusive_failure(self) -> bool:
        """A failed check that rolls back without waiting for the failure threshold."""
        return any(check.phase is Phase.FAILED and check.conclusive for check in self.checks)

    def to_dict(self) -> dict:
        """Plain JSON-ready form, with error rates spelled out per variant."""
        data = asdict(self)
        data["phase"] = self.phase.value
        data["checks"] = [{**asdict(check), "phase": check.phase.value} for check in self.checks]
        for role in ("champion", "challenger"):
            sample = getattr(self, role)
            if sample is not None:
                data[role]["error_rate"] = sample.error_rate
        for entry, sample in zip(data["quality"], self.quality):
            entry["mean_loss"] = sample.mean_loss
            entry["score"] = sample.score
        return data


@dataclass(frozen=True)
class VariantQueries:
    """The three PromQL queries that describe one variant over a window."""

    requests: str
    errors: str
    p95_seconds: str


def variant_queries(selector: str, window_seconds: int, executor_selector: str | None = None) -> VariantQueries:
    """PromQL for a variant's request count, server-error count and p95 latency over the last window.

    `selector` is a PromQL label matcher list without braces, e.g. `variant="challenger"`. The model
    server counts every prediction request, successful or not, in `model_predictions_total`, and the
    failed ones again in `model_prediction_errors_total{error_type}`. Client mistakes
    (`invalid_input`, `payload_too_large`) are the caller's fault, not the model's, and are left out.

    With `executor_selector` (the Seldon path: matchers of the variant's prediction calls in the executor's
    metrics), requests and errors are counted where the caller's request enters the pod: every call, and
    every 5xx, including failures the model never saw (unreachable, timed out). Latency stays the model's.
    """
    window = f"{max(int(math.ceil(window_seconds)), 1)}s"
    p95 = f"histogram_quantile(0.95, sum by (le) (rate({LATENCY_METRIC}_bucket{{{selector}}}[{window}])))"
    if executor_selector is not None:
        return VariantQueries(
            requests=f"sum(increase({EXECUTOR_REQUESTS_METRIC}{{{executor_selector}}}[{window}]))",
            errors=f'sum(increase({EXECUTOR_REQUESTS_METRIC}{{{executor_selector},code=~"5.."}}[{window}]))',
            p95_seconds=p95,
        )
    return VariantQueries(
        requests=f"sum(increase({REQUESTS_METRIC}{{{selector}}}[{window}]))",
        errors=f'sum(increase({ERRORS_METRIC}{{{selector},error_type!~"{CLIENT_ERRORS_REGEX}"}}[{window}]))',
        p95_seconds=(
            f"histogram_quantile(0.95, sum by (le) (rate({LATENCY_METRIC}_bucket{{{selector}}}[{window}])))"
        ),
    )


def _judge_error_rate(champion: VariantSample | None, challenger: VariantSample, limits: Thresholds) -> Check:
    rate = challenger.error_rate or 0.0
    described = f"challenger {challenger.errors}/{challenger.requests} failed ({rate:.2%}, limit {limits.max_error_rate:.2%})"
    if rate <= limits.max_error_rate:
        return Check("error_rate", Phase.PASSED, described)
    if champion is not None and champion.requests >= limits.min_requests:
        table = [
            [challenger.errors, challenger.requests - challenger.errors],
            [champion.errors, champion.requests - champion.errors],
        ]
        p_value = float(stats.fisher_exact(table, alternative="greater").pvalue)
        described += (
            f"; champion {champion.errors}/{champion.requests} ({champion.error_rate:.2%}); "
            f"p(challenger worse than champion)={p_value:.4f}"
        )
        if p_value < limits.significance:
            return Check("error_rate", Phase.FAILED, described)
        # Above the limit, but so is the champion (or the gap may be noise): hold, neither promote nor blame.
        return Check("error_rate", Phase.INCONCLUSIVE, described + f" (not significant at {limits.significance})")
    # No champion traffic to compare with: the limit alone, P(X >= errors) if the true rate were the limit.
    p_value = float(stats.binom.sf(challenger.errors - 1, challenger.requests, limits.max_error_rate))
    described += f"; no champion data; p(above the limit)={p_value:.4f}"
    if p_value < limits.significance:
        return Check("error_rate", Phase.FAILED, described)
    return Check("error_rate", Phase.INCONCLUSIVE, described + f" (not significant at {limits.significance})")


def _judge_latency(champion: VariantSample | None, challenger: VariantSample, limits: Thresholds) -> Check:
    p95 = challenger.p95_seconds
    if p95 is None or math.isnan(p95):
        return Check("p95_latency", Phase.INCONCLUSIVE, "no latency data for the challenger")
    described = f"challenger p95 {p95 * 1000:.0f} ms (limit {limits.max_p95_seconds * 1000:.0f} ms)"
    if p95 > limits.max_p95_seconds:
        return Check("p95_latency", Phase.FAILED, described)
    champion_p95 = champion.p95_seconds if champion is not None else None
    if champion_p95 is not None and not math.isnan(champion_p95) and champion.requests >= limits.min_requests:
        allowed = champion_p95 * limits.max_p95_ratio + limits.p95_slack_seconds
        described += f"; champion p95 {champion_p95 * 1000:.0f} ms (allowed {allowed * 1000:.0f} ms)"
        if p95 > allowed:
            return Check("p95_latency", Phase.FAILED, described)
    return Check("p95_latency", Phase.PASSED, described)


def ready_pods_query(namespace: str, deployment_pattern: str) -> str:
    """PromQL for how many pods of the matching Deployments are available (kube-state-metrics)."""
    return f'sum(kube_deployment_status_replicas_available{{namespace="{namespace}",deployment=~"{deployment_pattern}"}})'


def judge(
    champion: VariantSample | None,
    challenger: VariantSample | None,
    limits: Thresholds,
    quality: tuple[QualitySample | None, QualitySample | None] | None = None,
    quality_limits: QualityThresholds | None = None,
    promoting: bool = False,
    interval_fn: Callable[..., ConfidenceInterval] | None = None,
    challenger_ready_pods: float | None = None,
) -> Measurement:
    """Judge one analysis window. Missing data is inconclusive, never passed.

    `quality` is (champion, challenger) feedback since the rollout began; `promoting` says that passing
    this look would promote (the quality gate may then be required). `interval_fn` replaces the quality
    test's interval (the benchmark measures a fixed-sample test that way).

    `challenger_ready_pods` (when known) of 0 fails the check outright: its share of the traffic then fails
    before any pod, where neither the model's nor the executor's metrics can count it, so its silence
    would otherwise only ever hold the rollout.
    """
    if challenger_ready_pods is not None and challenger_ready_pods <= 0:
        return Measurement(
            Phase.FAILED,
            "the challenger has no ready pods: requests routed to it fail before reaching a pod",
            champion,
            challenger,
            (Check("ready_pods", Phase.FAILED, "0 available challenger pods (kube_deployment_status_replicas_available)"),),
        )
    quality_check, difference = (None, None)
    if quality_limits is not None:
        quality_check, difference = judge_quality(*(quality or (None, None)), quality_limits, promoting,
                                                  interval_fn=interval_fn)
    samples = tuple(sample for sample in (quality or ()) if sample is not None)
    if quality_check is not None and quality_check.conclusive:
        return Measurement(Phase.FAILED, f"{quality_check.name}: {quality_check.detail}", champion, challenger,
                           (quality_check,), samples, difference)
    measurement = _judge_traffic(champion, challenger, limits, quality_check)
    return Measurement(measurement.phase, measurement.reason, champion, challenger, measurement.checks, samples,
                       difference)


def _judge_traffic(champion, challenger, limits: Thresholds, quality_check: Check | None) -> Measurement:
    if challenger is None:
        return Measurement(Phase.INCONCLUSIVE, "no data for the challenger", champion, challenger)
    if challenger.requests < limits.min_requests:
        return Measurement(
            Phase.INCONCLUSIVE,
            f"challenger served {challenger.requests} requests, need {limits.min_requests} before judging",
            champion,
            challenger,
        )
    checks = (_judge_error_rate(champion, challenger, limits), _judge_latency(champion, challenger, limits))
    if quality_check is not None:
        checks += (quality_check,)
    for phase in (Phase.FAILED, Phase.INCONCLUSIVE):
        hits = [check for check in checks if check.phase is phase]
        if hits:
            reason = "; ".join(f"{check.name}: {check.detail}" for check in hits)
            return Measurement(phase, reason, champion, challenger, checks)
    reason = "; ".join(f"{check.name}: {check.detail}" for check in checks)
    return Measurement(Phase.PASSED, reason, champion, challenger, checks)


def error_measurement(reason: str) -> Measurement:
    """A measurement that could not be taken (metrics backend unreachable or the query rejected)."""
    return Measurement(Phase.ERROR, reason)


# ---------------------------------------------------------------- quality

def quality_queries(selector: str, window_seconds: int, metric: str) -> dict[str, str]:
    """PromQL for a variant's feedback count and its loss sums over the window (`count`, `sum`, `squared`)."""
    window = f"{max(int(math.ceil(window_seconds)), 1)}s"
    sum_field, squared_field = QUALITY_METRICS[metric]
    fields = {"count": "count", "sum": sum_field, "squared": squared_field}
    return {role: f"sum(increase({FEEDBACK_METRICS[name]}{{{selector}}}[{window}]))" for role, name in fields.items()}


def quality_sample(variant: str, metric: str, count: float | None, loss_sum: float | None,
                   squared_sum: float | None) -> QualitySample | None:
    """A variant's sample from what the queries returned; for accuracy the sum counts correct rows, turned into errors."""
    if count is None:
        return None
    # increase() extrapolates to the window's edges, so counts come back fractional.
    rows = int(round(count))
    total, squared = loss_sum or 0.0, squared_sum or 0.0
    if metric == "accuracy":
        errors = min(max(rows - int(round(total)), 0), rows)
        return QualitySample(variant, rows, float(errors), float(errors), metric)
    return QualitySample(variant, rows, total, squared, metric)


def _mixture_radius(variance_of_difference: float, rho: float, significance: float) -> float:
    """Half-width of the normal-mixture confidence sequence for a difference with variance V.

    Robbins' normal mixture (Howard et al. 2021, "Time-uniform, nonparametric, nonasymptotic confidence
    sequences", eq. 14; in the two-sample form of Johari et al.'s mSPRT): with information t = 1/V,
    P(exists t: |S_t| >= sqrt((t + rho) log((t + rho) / (rho alpha^2)))) <= alpha, where S_t = t * (estimate - truth).
    """
    information = 1.0 / variance_of_difference
    boundary = math.sqrt((information + rho) * math.log((information + rho) / (rho * significance**2)))
    return boundary / information


def quality_confidence_sequence(champion: QualitySample, challenger: QualitySample, limits: QualityThresholds,
                                ) -> ConfidenceInterval:
    """Always-valid bounds on (challenger's mean loss - champion's) from each variant's count, sum and squares.

    The mixture's scale `rho` is tuned so the sequence is tightest when each variant has about
    `min_feedback` rows (Howard et al. 2021, eq. 15), the earliest moment the gate judges.
    """
    champion_variance = champion.variance(limits.metric)
    challenger_variance = challenger.variance(limits.metric)
    variance = challenger_variance / challenger.count + champion_variance / champion.count
    information_at_min = limits.min_feedback / (champion_variance + challenger_variance)
    log_term = 2 * math.log(1 / limits.significance)
    rho = information_at_min / (log_term + math.log(1 + log_term))
    estimate = challenger.mean_loss - champion.mean_loss
    radius = _mixture_radius(variance, rho, limits.significance)
    return ConfidenceInterval(estimate, estimate - radius, estimate + radius)


def fixed_sample_interval(champion: QualitySample, challenger: QualitySample, limits: QualityThresholds,
                          ) -> ConfidenceInterval:
    """The z-interval a fixed-sample test would use at the same significance: valid for one look only.

    Kept to measure what re-running it every interval costs (`bench/rollout.py`), not used by the gate.
    """
    variance = (challenger.variance(limits.metric) / challenger.count
                + champion.variance(limits.metric) / champion.count)
    radius = float(stats.norm.ppf(1 - limits.significance / 2)) * math.sqrt(variance)
    estimate = challenger.mean_loss - champion.mean_loss
    return ConfidenceInterval(estimate, estimate - radius, estimate + radius)


def _describe_difference(limits: QualityThresholds, interval: ConfidenceInterval) -> str:
    level = f"{1 - limits.significance:.0%} always-valid range"
    if limits.metric == "accuracy":
        return (f"challenger accuracy {-interval.estimate * 100:+.1f} points vs the champion "
                f"({level} {-interval.upper * 100:+.1f} to {-interval.lower * 100:+.1f})")
    return (f"challenger {limits.metric} {interval.estimate:+.4g} vs the champion "
            f"({level} {interval.lower:+.4g} to {interval.upper:+.4g})")


def judge_quality(
    champion: QualitySample | None,
    challenger: QualitySample | None,
    limits: QualityThresholds,
    promoting: bool = False,
    interval_fn: Callable[..., ConfidenceInterval] | None = None,
) -> tuple[Check | None, ConfidenceInterval | None]:
    """The quality check, or None when there is too little feedback to judge and nothing requires it."""
    interval_fn = interval_fn or quality_confidence_sequence
    enough = [sample for sample in (champion, challenger) if sample is not None and sample.count >= limits.min_feedback]
    if len(enough) < 2:
        counts = ", ".join(f"{role} {sample.count if sample else 0}"
                           for role, sample in (("champion", champion), ("challenger", challenger)))
        if promoting and limits.required_for_promotion:
            return Check("quality", Phase.INCONCLUSIVE,
                         f"promotion needs the quality gate: feedback rows {counts}, need {limits.min_feedback} each"), None
        return None, None
    interval = interval_fn(champion, challenger, limits)
    tolerated = (f"{limits.max_degradation * 100:g} points" if limits.metric == "accuracy"
                 else f"{limits.max_degradation:g}")
    detail = (f"{_describe_difference(limits, interval)} on {challenger.count}/{champion.count} feedback rows; "
              f"degradation tolerated {tolerated}")
    if interval.lower > limits.max_degradation:
        return Check("quality", Phase.FAILED, detail + " (significantly worse)", conclusive=True), interval
    if interval.estimate > limits.max_degradation:
        return Check("quality", Phase.INCONCLUSIVE, detail + " (worse than tolerated, not yet significant)"), interval
    if promoting and limits.required_for_promotion and interval.upper > limits.max_degradation:
        return Check("quality", Phase.INCONCLUSIVE,
                     detail + " (promotion needs the gate: not yet shown within tolerance)"), interval
    return Check("quality", Phase.PASSED, detail), interval

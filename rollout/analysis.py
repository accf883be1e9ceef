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
  fast models is not mistaken for a regression).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import Enum

from scipy import stats

# Metric names exported by the model server (service/), each labelled model_name, model_version, variant.
REQUESTS_METRIC = "model_predictions_total"
ERRORS_METRIC = "model_prediction_errors_total"
LATENCY_METRIC = "model_prediction_latency_seconds"
# error_type values that are the client's fault (4xx); everything else counts against the model.
CLIENT_ERROR_TYPES = "invalid_input|payload_too_large"


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
class Check:
    """One rule's verdict, with the numbers it looked at so a report can explain the decision."""

    name: str
    phase: Phase
    detail: str


@dataclass(frozen=True)
class Measurement:
    """Result of one analysis: the overall phase, why, and the samples and checks behind it."""

    phase: Phase
    reason: str
    champion: VariantSample | None = None
    challenger: VariantSample | None = None
    checks: tuple[Check, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        """Plain JSON-ready form, with error rates spelled out per variant."""
        data = asdict(self)
        data["phase"] = self.phase.value
        data["checks"] = [{**asdict(check), "phase": check.phase.value} for check in self.checks]
        for role in ("champion", "challenger"):
            sample = getattr(self, role)
            if sample is not None:
                data[role]["error_rate"] = sample.error_rate
        return data


@dataclass(frozen=True)
class VariantQueries:
    """The three PromQL queries that describe one variant over a window."""

    requests: str
    errors: str
    p95_seconds: str


def variant_queries(selector: str, window_seconds: int) -> VariantQueries:
    """PromQL for a variant's request count, server-error count and p95 latency over the last window.

    `selector` is a PromQL label matcher list without braces, e.g. `variant="challenger"`. The model
    server counts every prediction request, successful or not, in `model_predictions_total`, and the
    failed ones again in `model_prediction_errors_total{error_type}`. Client mistakes
    (`invalid_input`, `payload_too_large`) are the caller's fault, not the model's, and are left out.
    """
    window = f"{max(int(math.ceil(window_seconds)), 1)}s"
    return VariantQueries(
        requests=f"sum(increase({REQUESTS_METRIC}{{{selector}}}[{window}]))",
        errors=f'sum(increase({ERRORS_METRIC}{{{selector},error_type!~"{CLIENT_ERROR_TYPES}"}}[{window}]))',
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


def judge(champion: VariantSample | None, challenger: VariantSample | None, limits: Thresholds) -> Measurement:
    """Judge one analysis window. Missing data is inconclusive, never passed."""
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

"""The label-free gate: do the challenger and the champion predict differently on the same traffic?

Ground truth arrives late or never, but the split is random: both variants see the same input distribution, so a
significant difference between their *prediction* distributions is caused by the models alone. Each look compares
how often each variant predicted each output class (`model_prediction_outputs_total`, counted by the server in
`service.drift`; regressors' values are not counted yet, so the gate does not judge them) since the rollout began,
as the quality gate reads feedback since the start: the sample grows and the test is built for that. That is fair
while the inputs are stationary; inputs that shift while the weight rises bias it (the challenger sees more of the
late rows), which the minimum effect only partly absorbs.

The test: for every output category k, the difference of shares d_k = share_challenger(k) - share_champion(k) gets
an always-valid confidence sequence (Robbins' normal mixture, the quality gate's `_mixture_radius`), Bonferroni-split
over the categories (one test for two categories, whose differences are mirror images). The gate fires when some
category's whole sequence lies beyond `min_effect` (in share points: 0.05 is five points), so looking every interval
never inflates its false-alarm rate (bounded by `significance` over the whole rollout, `bench/rollout.py` measures
it) and differences smaller than `min_effect` never act, however much traffic makes them significant.

What firing does is the stack's choice (`rollout.divergence.action`): `warn` records it and changes nothing (a
different model is *meant* to predict differently; only people can tell better from worse without labels), `hold`
stops stepping until a person promotes or aborts, `rollback` rolls back at once (the sequence already accounts for
every look, so no confirmation on fresh traffic is needed). Too few rows (`min_rows` per variant) is not judged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol

from scipy import stats

from rollout.analysis import Check, Measurement, Phase, _mixture_radius
from infra.config import DIVERGENCE_ACTIONS as ACTIONS
from service.drift import OUTPUT_LABEL, OUTPUTS_METRIC


@dataclass(frozen=True)
class DivergenceThresholds:
    """The gate's settings: what firing does, the smallest difference that may act, and when to judge.

    `min_effect` is in shares of predictions (0.05: one variant predicts some output five points more often).
    `significance` bounds the chance, over the whole rollout and however often it looks, that the gate fires
    when the variants' true shares differ by no more than `min_effect`.
    """

    action: str = "warn"
    min_effect: float = 0.05
    min_rows: int = 200
    significance: float = 0.01

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise ValueError(f"divergence action must be one of {', '.join(ACTIONS)} (got {self.action!r})")
        if not 0 <= self.min_effect < 1:
            raise ValueError(f"divergence min_effect must be a share in [0, 1) (got {self.min_effect})")
        if self.min_rows < 1:
            raise ValueError(f"divergence min_rows must be at least 1 (got {self.min_rows})")


@dataclass(frozen=True)
class OutputCounts:
    """How often one variant predicted each output since the rollout began."""

    variant: str
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def share(self, output: str) -> float:
        return self.counts.get(output, 0) / self.total if self.total else 0.0


@dataclass(frozen=True)
class CategoryDifference:
    """One output's share for the challenger minus the champion's, with always-valid bounds."""

    output: str
    champion_share: float
    challenger_share: float
    estimate: float
    lower: float
    upper: float


@dataclass(frozen=True)
class Divergence:
    """A look's comparison: per output, the difference; the largest; total variation; whether it is significant."""

    champion_rows: int
    challenger_rows: int
    differences: tuple[CategoryDifference, ...] = field(default_factory=tuple)
    significant: bool = False
    # The outputs the test judges (of two, the second only: their differences mirror each other).
    tested: tuple[str, ...] = field(default_factory=tuple)

    @property
    def largest(self) -> CategoryDifference | None:
        """The tested output whose share differs most (by point estimate)."""
        return max((diff for diff in self.differences if diff.output in self.tested),
                   key=lambda diff: abs(diff.estimate), default=None)

    @property
    def total_variation(self) -> float:
        """Half the summed absolute share differences: 0 identical, 1 disjoint."""
        return 0.5 * sum(abs(diff.estimate) for diff in self.differences)


def _variance(count: int, total: int) -> float:
    """Per-row variance of "predicted this output", smoothed so 0% or 100% is not certainty."""
    rate = (count + 0.5) / (total + 1)
    return rate * (1 - rate)


def _mixture_scale(information_at_min: float, significance: float) -> float:
    """The normal mixture's rho, tightest when the information is `information_at_min` (Howard et al. 2021, eq. 15)."""
    log_term = 2 * math.log(1 / significance)
    return information_at_min / (log_term + math.log(1 + log_term))


def _tested_outputs(champion: OutputCounts, challenger: OutputCounts) -> list[str]:
    outputs = sorted(set(champion.counts) | set(challenger.counts))
    # With two outputs their differences mirror each other: one test, at the whole significance.
    return outputs[-1:] if len(outputs) == 2 else outputs


def divergence_sequence(champion: OutputCounts, challenger: OutputCounts, limits: DivergenceThresholds,
                        ) -> Divergence:
    """Always-valid bounds on each output's share difference (challenger - champion), Bonferroni over outputs."""
    return _divergence(champion, challenger, limits, _sequence_radius)


def fixed_sample_divergence(champion: OutputCounts, challenger: OutputCounts, limits: DivergenceThresholds,
                            ) -> Divergence:
    """The same comparison with fixed-sample z-intervals: valid for one look only.

    Kept to measure what re-running it every interval costs (`bench/rollout.py`), not used by the gate.
    """
    return _divergence(champion, challenger, limits, _fixed_radius)


def _sequence_radius(variance: float, variance_at_min: float, limits: DivergenceThresholds, alpha: float) -> float:
    rho = _mixture_scale(limits.min_rows / variance_at_min, alpha)
    return _mixture_radius(variance, rho, alpha)


def _fixed_radius(variance: float, variance_at_min: float, limits: DivergenceThresholds, alpha: float) -> float:
    return float(stats.norm.ppf(1 - alpha / 2)) * math.sqrt(variance)


def _divergence(champion: OutputCounts, challenger: OutputCounts, limits: DivergenceThresholds,
                radius_fn: Callable[..., float]) -> Divergence:
    tested = _tested_outputs(champion, challenger)
    alpha = limits.significance / max(len(tested), 1)
    differences = []
    for output in sorted(set(champion.counts) | set(challenger.counts)):
        champion_share, challenger_share = champion.share(output), challenger.share(output)
        estimate = challenger_share - champion_share
        champion_variance = _variance(champion.counts.get(output, 0), champion.total)
        challenger_variance = _variance(challenger.counts.get(output, 0), challenger.total)
        variance = challenger_variance / challenger.total + champion_variance / champion.total
        radius = radius_fn(variance, champion_variance + challenger_variance, limits, alpha)
        differences.append(CategoryDifference(output, champion_share, challenger_share, estimate,
                                              estimate - radius, estimate + radius))
    significant = any(diff.lower > limits.min_effect or diff.upper < -limits.min_effect
                      for diff in differences if diff.output in tested)
    return Divergence(champion.total, challenger.total, tuple(differences), significant, tuple(tested))


def judge_divergence(champion: OutputCounts | None, challenger: OutputCounts | None, limits: DivergenceThresholds,
                     sequence_fn: Callable[..., Divergence] | None = None) -> tuple[Check | None, Divergence | None]:
    """The gate's check and the numbers behind it; (None, None) when either variant has fewer than `min_rows`."""
    if champion is None or challenger is None or min(champion.total, challenger.total) < limits.min_rows:
        return None, None
    divergence = (sequence_fn or divergence_sequence)(champion, challenger, limits)
    largest = divergence.largest
    level = f"{1 - limits.significance:.0%} always-valid range"
    detail = (f"challenger predicts {largest.output!r} {largest.estimate * 100:+.1f} points vs the champion "
              f"({largest.challenger_share:.1%} vs {largest.champion_share:.1%}; {level} "
              f"{largest.lower * 100:+.1f} to {largest.upper * 100:+.1f}) on {challenger.total}/{champion.total} "
              f"rows; total variation {divergence.total_variation:.3f}; minimum effect {limits.min_effect * 100:g} points")
    if not divergence.significant:
        return Check("prediction_divergence", Phase.PASSED, detail), divergence
    if limits.action == "rollback":
        return Check("prediction_divergence", Phase.FAILED, detail + " (significantly different)",
                     conclusive=True), divergence
    if limits.action == "hold":
        return Check("prediction_divergence", Phase.INCONCLUSIVE,
                     detail + " (significantly different: holding until a person promotes or aborts)"), divergence
    return Check("prediction_divergence", Phase.PASSED,
                 detail + " (significantly different; warn only: the rollout goes on)"), divergence


def with_divergence(measurement: Measurement, check: Check | None, divergence: Divergence | None) -> Measurement:
    """`measurement` with the gate's check added; a `rollback` failure fails it, a `hold` keeps it from passing.

    An error measurement (no data at all) stays an error: the gate never turns a missing look into a decision.
    """
    if check is None or measurement.phase is Phase.ERROR:
        return replace(measurement, divergence=divergence)
    checks = measurement.checks + (check,)
    phase, reason = measurement.phase, measurement.reason
    if check.phase is Phase.FAILED:
        phase, reason = Phase.FAILED, f"{check.name}: {check.detail}"
    elif check.phase is Phase.INCONCLUSIVE and phase is Phase.PASSED:
        phase, reason = Phase.INCONCLUSIVE, f"{check.name}: {check.detail}"
    return replace(measurement, phase=phase, reason=reason, checks=checks, divergence=divergence)


class LabelledMetricsProvider(Protocol):
    """A metrics provider that can also answer one value per label value (Prometheus: a vector)."""

    def query_by(self, promql: str, label: str) -> dict[str, float]:
        """Evaluate `promql` (an instant vector) as {value of `label`: sample}; {} when nothing matched."""
        ...


def output_query(selector: str, window_seconds: float) -> str:
    """PromQL for how often a variant predicted each output over the window, one series per output."""
    window = f"{max(int(math.ceil(window_seconds)), 1)}s"
    return f"sum by ({OUTPUT_LABEL}) (increase({OUTPUTS_METRIC}{{{selector}}}[{window}]))"


def collect_outputs(provider, variant: str, selector: str, window_seconds: float) -> OutputCounts | None:
    """How often `variant` predicted each output over the window; None when the server counts none (or the
    provider cannot answer per label)."""
    query_by = getattr(provider, "query_by", None)
    if query_by is None:
        return None
    values = query_by(output_query(selector, window_seconds), OUTPUT_LABEL)
    # increase() extrapolates to the window's edges, so counts come back fractional.
    counts = {output: int(round(value)) for output, value in values.items() if value and value > 0}
    return OutputCounts(variant, counts) if counts else None

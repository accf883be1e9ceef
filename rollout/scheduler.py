"""The canary loop: set a weight, wait an interval, analyse, then advance, hold, roll back or promote.

State lives in the router (the stack's `traffic.challengerWeight`, or HAProxy's runtime weights), not
in this process: a rollout that was killed resumes from whatever weight the router reports. Failed
checks are counted over the whole rollout; at `failure_threshold` the weight goes back to 0 and the
reason is recorded. Inconclusive and error measurements (too little traffic, no data, Prometheus
unreachable) hold the current step: they never advance. Holding has limits, as in Argo Rollouts
(`consecutiveErrorLimit`, `inconclusiveLimit`) and Flagger (progress deadline): past
`consecutive_error_limit` errors in a row, `inconclusive_limit` inconclusive looks in a row, or
`progress_deadline_seconds` at one step, the rollout stops safely (weight back to 0) and says which limit
ended it. Reaching 100 ends the rollout with the verdict `promoted`; the promotion itself (model URIs,
registry aliases: rollout.promotion) is the caller's.

With a quality gate (`RolloutPlan.quality`), each look also reads the feedback both variants received since
the rollout began (not only this step's window: ground truth arrives late, and the sequential test is built
for a growing sample); a conclusive quality failure rolls back at once.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Callable

from rollout.analysis import (
    ConfidenceInterval,
    Look,
    Measurement,
    Phase,
    QualityThresholds,
    Thresholds,
    error_measurement,
    judge,
)
from rollout.divergence import DivergenceThresholds, collect_outputs, judge_divergence, with_divergence
from rollout.errors import MetricsQueryError, MetricsUnreachableError, RolloutError
from rollout.metrics import MetricsProvider, collect_quality, collect_sample
from rollout.router import TrafficRouter


class Decision(str, Enum):
    """What the scheduler did after a measurement (or at the start)."""

    START = "start"
    RESUME = "resume"
    ADVANCE = "advance"
    HOLD = "hold"
    ROLLBACK = "rollback"
    PROMOTE = "promote"
    ABORT = "abort"


class Verdict(str, Enum):
    """How a rollout ended."""

    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"


@dataclass(frozen=True)
class RolloutPlan:
    """Steps, pacing and limits of one rollout, plus the PromQL selectors of the two variants."""

    steps: tuple[int, ...]
    interval_seconds: float
    failure_threshold: int
    thresholds: Thresholds
    quality: QualityThresholds | None = None
    champion_selector: str = 'variant="champion"'
    challenger_selector: str = 'variant="challenger"'
    # On Seldon: matchers of each variant's calls in the executor's metrics, which then count requests and errors.
    champion_executor_selector: str | None = None
    challenger_executor_selector: str | None = None
    # PromQL for the challenger's available pods (kube-state-metrics); 0 fails the check.
    challenger_ready_query: str | None = None
    # The label-free gate: compare what the two variants predict (rollout.divergence); None leaves it out.
    divergence: DivergenceThresholds | None = None
    # Limits on holding a step; None holds without limit.
    consecutive_error_limit: int | None = None
    inconclusive_limit: int | None = None
    progress_deadline_seconds: float | None = None

    def __post_init__(self):
        problems = []
        if not self.steps or any(not 0 < step <= 100 for step in self.steps):
            problems.append(f"steps must be percentages in 1..100, got {list(self.steps)}")
        elif list(self.steps) != sorted(set(self.steps)):
            problems.append(f"steps must be strictly increasing, got {list(self.steps)}")
        if self.interval_seconds <= 0:
            problems.append(f"interval must be positive, got {self.interval_seconds}")
        if self.failure_threshold < 1:
            problems.append(f"failure threshold must be at least 1, got {self.failure_threshold}")
        for name in ("consecutive_error_limit", "inconclusive_limit"):
            if (limit := getattr(self, name)) is not None and limit < 1:
                problems.append(f"{name.replace('_', ' ')} must be at least 1, got {limit}")
        if self.progress_deadline_seconds is not None and self.progress_deadline_seconds <= 0:
            problems.append(f"progress deadline must be positive, got {self.progress_deadline_seconds}")
        if problems:
            raise RolloutError("invalid rollout plan: " + "; ".join(problems))

    def next_step(self, weight: int) -> int:
        """The first step above `weight`; 100 once the listed steps are exhausted."""
        return next((step for step in self.steps if step > weight), 100)

    def to_dict(self) -> dict:
        """JSON-ready summary for reports: steps, pacing, limits and thresholds."""
        return {
            "steps": list(self.steps),
            "interval_seconds": self.interval_seconds,
            "failure_threshold": self.failure_threshold,
            "consecutive_error_limit": self.consecutive_error_limit,
            "inconclusive_limit": self.inconclusive_limit,
            "progress_deadline_seconds": self.progress_deadline_seconds,
            "min_requests": self.thresholds.min_requests,
            "max_error_rate": self.thresholds.max_error_rate,
            "max_p95_seconds": self.thresholds.max_p95_seconds,
            "significance": self.thresholds.significance,
            "quality": asdict(self.quality) if self.quality else None,
            "divergence": asdict(self.divergence) if self.divergence else None,
        }


def plan_from_config(rollout_config, metric_sources: dict[str, str] | None = None) -> RolloutPlan:
    """The scheduler's plan from the stack's `rollout.*` config section, plus the stack's `metric_sources`
    (RolloutPlan fields; on Seldon, `rollout.cli.stack_metric_sources`)."""
    return RolloutPlan(
        **(metric_sources or {}),
        steps=tuple(rollout_config.steps),
        interval_seconds=rollout_config.interval_seconds,
        failure_threshold=rollout_config.failure_threshold,
        consecutive_error_limit=rollout_config.consecutive_error_limit,
        inconclusive_limit=rollout_config.inconclusive_limit,
        progress_deadline_seconds=rollout_config.progress_deadline_seconds,
        thresholds=Thresholds(
            min_requests=rollout_config.min_requests,
            max_error_rate=float(rollout_config.max_error_rate_percent) / 100,
            max_p95_seconds=rollout_config.max_p95_latency_ms / 1000,
        ),
        quality=QualityThresholds(
            metric=rollout_config.quality_metric,
            max_degradation=rollout_config.quality_max_degradation,
            min_feedback=rollout_config.quality_min_feedback,
            required_for_promotion=rollout_config.quality_required_for_promotion,
        ),
        divergence=DivergenceThresholds(
            action=rollout_config.divergence_action,
            min_effect=rollout_config.divergence_min_effect,
            min_rows=rollout_config.divergence_min_rows,
        ),
    )


@dataclass(frozen=True)
class StepRecord:
    """One line of a rollout's history: when, at which weight, what was measured, what was decided."""

    time: float
    weight: int
    decision: Decision
    reason: str
    measurement: Measurement | None = None
    failed_checks: int = 0

    def to_dict(self) -> dict:
        """JSON-ready form (ISO time plus epoch seconds)."""
        return {
            "time": datetime.fromtimestamp(self.time, timezone.utc).isoformat(),
            "epoch_seconds": self.time,
            "weight": self.weight,
            "decision": self.decision.value,
            "reason": self.reason,
            "failed_checks": self.failed_checks,
            "measurement": self.measurement.to_dict() if self.measurement else None,
        }


@dataclass
class RolloutResult:
    """A whole run: its verdict, why, and every step."""

    verdict: Verdict | None = None
    reason: str = ""
    records: list[StepRecord] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready form with a top-level `verdict`."""
        return {
            "verdict": self.verdict.value if self.verdict else None,
            "reason": self.reason,
            "steps": [record.to_dict() for record in self.records],
        }


def measure(provider: MetricsProvider, plan: RolloutPlan, window_seconds: float, look: Look | None = None,
            interval_fn: Callable[..., ConfidenceInterval] | None = None,
            divergence_fn: Callable[..., object] | None = None) -> Measurement:
    """Query both variants over the window (and their feedback since the start) and judge them.

    Backend failures become `error` values. Without `look`, the quality window is the step's window.
    `interval_fn` replaces the quality test (see `judge`), `divergence_fn` the label-free gate's bounds
    (`rollout.divergence.divergence_sequence`); the benchmark measures fixed-sample tests that way.
    """
    look = look or Look(since_start_seconds=window_seconds)
    quality = outputs = None
    try:
        champion = collect_sample(provider, "champion", plan.champion_selector, window_seconds, plan.champion_executor_selector)
        challenger = collect_sample(
            provider, "challenger", plan.challenger_selector, window_seconds, plan.challenger_executor_selector
        )
        ready = provider.query(plan.challenger_ready_query) if plan.challenger_ready_query else None
        if plan.quality is not None:
            since = max(look.since_start_seconds, window_seconds)
            quality = (
                collect_quality(provider, "champion", plan.champion_selector, since, plan.quality.metric),
                collect_quality(provider, "challenger", plan.challenger_selector, since, plan.quality.metric),
            )
        if plan.divergence is not None:
            # Like feedback, predictions since the rollout began: the sequential test is built for a growing sample.
            since = max(look.since_start_seconds, window_seconds)
            outputs = (collect_outputs(provider, "champion", plan.champion_selector, since),
                       collect_outputs(provider, "challenger", plan.challenger_selector, since))
    except MetricsUnreachableError as err:
        return error_measurement(str(err))
    except MetricsQueryError as err:
        return error_measurement(f"query failed: {err}")
    measurement = judge(champion, challenger, plan.thresholds, quality, plan.quality, look.promoting, interval_fn,
                        challenger_ready_pods=ready)
    if plan.divergence is not None:
        measurement = with_divergence(measurement, *judge_divergence(*outputs, plan.divergence, divergence_fn))
    return measurement


class Scheduler:
    """Runs one rollout to a verdict.

    `wait(seconds)` sleeps and returns True when the rollout should stop (Ctrl-C, `abort`); `clock`
    gives the current epoch seconds. Both are injectable so tests run a rollout in simulated time.
    """

    def __init__(
        self,
        router: TrafficRouter,
        provider: MetricsProvider,
        plan: RolloutPlan,
        *,
        wait: Callable[[float], bool],
        clock: Callable[[], float] = time.time,
        on_record: Callable[[StepRecord], None] | None = None,
        measure_fn: Callable[..., Measurement] = measure,
    ):
        self.router = router
        self.provider = provider
        self.plan = plan
        self.wait = wait
        self.clock = clock
        self.on_record = on_record
        self.measure_fn = measure_fn
        self.result = RolloutResult()

    def _record(self, weight: int, decision: Decision, reason: str, measurement=None, failed_checks=0) -> None:
        record = StepRecord(self.clock(), weight, decision, reason, measurement, failed_checks)
        self.result.records.append(record)
        if self.on_record:
            self.on_record(record)

    def _finish(self, verdict: Verdict, reason: str) -> RolloutResult:
        self.result.verdict = verdict
        self.result.reason = reason
        return self.result

    def _promote(self, weight: int) -> RolloutResult:
        described = f"challenger passed every step and serves {weight}% of traffic: ready to promote"
        self._record(weight, Decision.PROMOTE, described)
        return self._finish(Verdict.PROMOTED, described)

    def _stop(self, weight: int, reason: str, measurement: Measurement, failed_checks: int) -> None:
        """A limit ran out: the challenger's weight goes back to 0, and the record says which limit and why."""
        self.router.set_weight(0)
        reason = f"stopped at weight {weight}%: {reason}; challenger weight set to 0"
        self._record(0, Decision.ROLLBACK, reason, measurement, failed_checks)
        self._finish(Verdict.ROLLED_BACK, reason)

    def _held_too_long(self, holds: dict[Phase, int], at_step_seconds: float) -> str | None:
        """Which holding limit has run out, in words; None while the rollout may keep holding."""
        plan = self.plan
        if plan.consecutive_error_limit and holds[Phase.ERROR] >= plan.consecutive_error_limit:
            return (f"{holds[Phase.ERROR]} analyses in a row could not be made "
                    f"(consecutive error limit {plan.consecutive_error_limit})")
        if plan.inconclusive_limit and holds[Phase.INCONCLUSIVE] >= plan.inconclusive_limit:
            return (f"{holds[Phase.INCONCLUSIVE]} inconclusive analyses in a row "
                    f"(inconclusive limit {plan.inconclusive_limit})")
        if plan.progress_deadline_seconds and at_step_seconds >= plan.progress_deadline_seconds:
            return (f"no progress for {at_step_seconds:g}s at one step "
                    f"(progress deadline {plan.progress_deadline_seconds:g}s)")
        return None

    def _begin(self) -> int:
        """Read the router's weight: 0 starts at the first step, anything else resumes there."""
        weight = self.router.get_weight()
        if weight == 0:
            weight = self.plan.steps[0]
            self.router.set_weight(weight)
            self._record(weight, Decision.START, f"challenger weight set to {weight}%")
        else:
            self._record(weight, Decision.RESUME, f"resuming at the stack's current weight {weight}%")
        return weight

    def _decide(self, weight: int, measurement: Measurement, failed_checks: int) -> tuple[int, int]:
        """Apply one measurement: advance, hold, roll back or promote. Returns (weight, failed checks)."""
        plan = self.plan
        if measurement.phase is Phase.PASSED:
            weight = plan.next_step(weight)
            self.router.set_weight(weight)
            self._record(weight, Decision.ADVANCE, measurement.reason, measurement, failed_checks)
            if weight >= 100:
                self._promote(weight)
        elif measurement.phase is Phase.FAILED:
            failed_checks += 1
            if failed_checks >= plan.failure_threshold or measurement.conclusive_failure:
                self.router.set_weight(0)
                if measurement.conclusive_failure:
                    reason = f"conclusive failure (valid at every look, no confirmation needed): {measurement.reason}"
                else:
                    reason = f"{failed_checks} failed checks (threshold {plan.failure_threshold}): {measurement.reason}"
                self._record(0, Decision.ROLLBACK, reason, measurement, failed_checks)
                self._finish(Verdict.ROLLED_BACK, reason)
                return 0, failed_checks
            self._record(weight, Decision.HOLD, f"failed check: {measurement.reason}", measurement, failed_checks)
        else:
            self._record(weight, Decision.HOLD, f"{measurement.phase.value}: {measurement.reason}", measurement, failed_checks)
        return weight, failed_checks

    def _look(self, weight: int, started: float) -> Look:
        return Look(since_start_seconds=math.ceil(self.clock() - started), promoting=self.plan.next_step(weight) >= 100)

    def run(self) -> RolloutResult:
        """Start (or resume) and loop until promoted, rolled back or stopped."""
        weight = self._begin()
        if weight >= 100:
            return self._promote(weight)
        step_started = step_entered = rollout_started = self.clock()
        failed_checks = 0
        # Errors and inconclusive looks in a row, for the holding limits.
        holds = {Phase.ERROR: 0, Phase.INCONCLUSIVE: 0}
        while self.result.verdict is None:
            if self.wait(self.plan.interval_seconds):
                self._record(weight, Decision.ABORT, "stopped by the operator; weight left in place")
                return self._finish(Verdict.ABORTED, f"stopped at weight {weight}%")
            window = max(self.clock() - step_started, self.plan.interval_seconds)
            measurement = self.measure_fn(self.provider, self.plan, math.ceil(window),
                                          look=self._look(weight, rollout_started))
            previous = weight
            weight, failed_checks = self._decide(weight, measurement, failed_checks)
            # A new step, or a failed check, starts a fresh window: a failure is confirmed only by new
            # traffic, never by re-reading the requests that failed the check before.
            if weight != previous or measurement.phase is Phase.FAILED:
                step_started = self.clock()
            if weight != previous:
                step_entered = self.clock()
            for phase in holds:
                holds[phase] = holds[phase] + 1 if measurement.phase is phase and weight == previous else 0
            if self.result.verdict is None and (limit := self._held_too_long(holds, self.clock() - step_entered)):
                self._stop(weight, f"{limit}; last analysis {measurement.phase.value}: {measurement.reason}",
                           measurement, failed_checks)
        return self.result

    def run_once(self, failed_checks: int = 0) -> tuple[RolloutResult, int]:
        """One decision and return (config-only mode, where each change goes through a pull request).

        At weight 0 this writes the first step. Otherwise it judges the last `interval_seconds` and
        advances, holds, rolls back or promotes. `failed_checks` carries the count between invocations;
        the result's verdict stays None while the rollout is still under way.
        """
        weight = self.router.get_weight()
        if weight == 0:
            self._begin()
            return self.result, 0
        if weight >= 100:
            self._record(weight, Decision.RESUME, f"stack is at {weight}%")
            self._promote(weight)
            return self.result, 0
        self._record(weight, Decision.RESUME, f"judging the stack's current weight {weight}%")
        # Config-only mode keeps no start time between invocations: quality is judged over one interval.
        look = Look(since_start_seconds=math.ceil(self.plan.interval_seconds),
                    promoting=self.plan.next_step(weight) >= 100)
        measurement = self.measure_fn(self.provider, self.plan, math.ceil(self.plan.interval_seconds), look=look)
        _, failed_checks = self._decide(weight, measurement, failed_checks)
        return self.result, failed_checks

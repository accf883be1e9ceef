"""The canary loop in simulated time: advance, hold, roll back, promote, resume, stop."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from rollout.analysis import QualityThresholds
from rollout.errors import MetricsUnreachableError, RolloutError
from rollout.scheduler import Decision, RolloutPlan, Scheduler, Verdict, measure

from rollout_fakes import FakeRouter, SimClock, scripted


@pytest.mark.parametrize(
    ("case", "start_weight", "phases", "verdict", "weights", "decisions"),
    [
        ("all checks pass: every step then promotion", 0, "PPPP", Verdict.PROMOTED,
         [5, 10, 25, 50, 100], ["start", "advance", "advance", "advance", "advance", "promote"]),
        ("two failed checks roll back", 0, "FF", Verdict.ROLLED_BACK,
         [5, 0], ["start", "hold", "rollback"]),
        ("failed checks count across steps", 0, "PFPF", Verdict.ROLLED_BACK,
         [5, 10, 25, 0], ["start", "advance", "hold", "advance", "rollback"]),
        ("inconclusive and error hold without counting", 0, "IEIEPPPP", Verdict.PROMOTED,
         [5, 10, 25, 50, 100], ["start", "hold", "hold", "hold", "hold", "advance", "advance", "advance", "advance", "promote"]),
        ("resume from the router's weight", 25, "PP", Verdict.PROMOTED,
         [50, 100], ["resume", "advance", "advance", "promote"]),
        ("resume between steps advances to the next step", 30, "PP", Verdict.PROMOTED,
         [50, 100], ["resume", "advance", "advance", "promote"]),
        ("resume at 100 promotes at once", 100, "", Verdict.PROMOTED, [], ["resume", "promote"]),
    ],
    ids=lambda value: value if isinstance(value, str) and " " in value else None,
)
def test_rollout_paths(plan, case, start_weight, phases, verdict, weights, decisions):
    router, clock = FakeRouter(start_weight), SimClock()
    result = Scheduler(router, None, plan, wait=clock.wait, clock=clock, measure_fn=scripted(phases)).run()
    assert result.verdict is verdict
    assert router.history == weights
    assert [record.decision.value for record in result.records] == decisions
    # Routers only move traffic: a promoted rollout leaves the challenger at 100% for its caller to promote.
    assert (router.weight == 100) is (verdict is Verdict.PROMOTED)


def test_rollback_records_why(plan):
    router, clock = FakeRouter(), SimClock()
    result = Scheduler(router, None, plan, wait=clock.wait, clock=clock, measure_fn=scripted("FF")).run()
    assert router.weight == 0
    assert "2 failed checks (threshold 2)" in result.reason
    assert result.to_dict()["verdict"] == "rolled_back"


def test_no_data_never_advances(plan):
    router, clock = FakeRouter(), SimClock(stop_after=50)
    result = Scheduler(router, None, plan, wait=clock.wait, clock=clock, measure_fn=scripted("I" * 25 + "E" * 25)).run()
    assert result.verdict is Verdict.ABORTED
    assert router.history == [5]
    assert router.weight == 5  # stopping leaves the weight for a later resume


def test_failed_check_is_confirmed_on_a_fresh_window(plan):
    router, clock = FakeRouter(), SimClock()
    measure_fn = scripted("IFIF")
    Scheduler(router, None, plan, wait=clock.wait, clock=clock, measure_fn=measure_fn).run()
    assert measure_fn.windows == [60, 120, 60, 120]


def test_window_grows_while_holding(plan):
    router, clock = FakeRouter(), SimClock()
    measure_fn = scripted("IIP" + "PPP")
    Scheduler(router, None, plan, wait=clock.wait, clock=clock, measure_fn=measure_fn).run()
    assert measure_fn.windows[:4] == [60, 120, 180, 60]


class DownProvider:
    def query(self, promql):
        raise MetricsUnreachableError("Prometheus at http://127.0.0.1:1 is unreachable")

    def is_online(self):
        return False


class EmptyProvider:
    def query(self, promql):
        return None

    def is_online(self):
        return True


@pytest.mark.parametrize(("provider", "phase"), [(DownProvider(), "error"), (EmptyProvider(), "inconclusive")])
def test_measure_tells_unreachable_from_no_data(plan, provider, phase):
    assert measure(provider, plan, 60).phase.value == phase


@pytest.mark.parametrize("provider", [DownProvider(), EmptyProvider()])
def test_real_measure_holds_on_missing_metrics(plan, provider):
    router, clock = FakeRouter(), SimClock(stop_after=5)
    result = Scheduler(router, provider, plan, wait=clock.wait, clock=clock).run()
    assert router.history == [5]
    assert {record.decision for record in result.records} == {Decision.START, Decision.HOLD, Decision.ABORT}


class NeverReadyChallengerProvider:
    """Seldon, challenger pods never ready: the champion serves, the challenger's share fails at the gateway, so
    neither the model's nor the executor's series see a single challenger request; kube-state-metrics says 0."""

    def __init__(self, ready_query: str):
        self.ready_query = ready_query

    def query(self, promql):
        if promql == self.ready_query:
            return 0.0
        if 'predictor_name="champion"' in promql and "increase(" in promql:
            return 0.0 if 'code=~"5.."' in promql else 5000.0
        if 'variant="champion"' in promql and "histogram_quantile" in promql:
            return 0.05
        return None

    def is_online(self):
        return True


def test_a_challenger_whose_pods_never_become_ready_is_rolled_back_not_held_on_silence(plan):
    from dataclasses import replace

    ready = 'sum(kube_deployment_status_replicas_available{namespace="mlserve",deployment=~"churn-model-challenger-[0-9]+-.+"})'
    seldon_plan = replace(
        plan,
        champion_executor_selector='deployment_name="churn-model",predictor_name="champion"',
        challenger_executor_selector='deployment_name="churn-model",predictor_name="challenger"',
        challenger_ready_query=ready,
    )
    router, clock = FakeRouter(), SimClock(stop_after=20)
    result = Scheduler(router, NeverReadyChallengerProvider(ready), seldon_plan, wait=clock.wait, clock=clock).run()
    assert result.verdict is Verdict.ROLLED_BACK
    assert router.history == [5, 0]
    assert "no ready pods" in result.reason
    # Without the ready-pods query the same silence only holds the rollout: it never promotes, never rolls back.
    router, clock = FakeRouter(), SimClock(stop_after=5)
    held = Scheduler(router, NeverReadyChallengerProvider(ready), replace(seldon_plan, challenger_ready_query=None),
                     wait=clock.wait, clock=clock).run()
    assert held.verdict is Verdict.ABORTED and router.history == [5]


@pytest.mark.parametrize(
    ("steps", "interval", "threshold", "problem"),
    [((), 60, 2, "steps"), ((10, 5), 60, 2, "increasing"), ((5, 120), 60, 2, "1..100"),
     ((5,), 0, 2, "interval"), ((5,), 60, 0, "failure threshold")],
)
def test_bad_plans_are_refused(limits, steps, interval, threshold, problem):
    with pytest.raises(RolloutError, match=problem):
        RolloutPlan(steps=steps, interval_seconds=interval, failure_threshold=threshold, thresholds=limits)


@pytest.mark.parametrize(
    ("case", "start_weight", "failed_before", "phase", "weight_after", "verdict", "failed_after"),
    [
        ("weight 0 writes the first step", 0, 0, None, 5, None, 0),
        ("a passed check writes the next step", 10, 0, "P", 25, None, 0),
        ("a first failed check only counts", 10, 0, "F", 10, None, 1),
        ("a failed check at the threshold rolls back", 10, 1, "F", 0, Verdict.ROLLED_BACK, 2),
        ("no data holds", 10, 1, "I", 10, None, 1),
        ("passing the last step promotes (its caller then promotes)", 50, 0, "P", 100, Verdict.PROMOTED, 0),
    ],
    ids=lambda value: value if isinstance(value, str) and " " in value else None,
)
def test_run_once_for_config_only_mode(plan, case, start_weight, failed_before, phase, weight_after, verdict, failed_after):
    router, clock = FakeRouter(start_weight), SimClock()
    scheduler = Scheduler(router, None, plan, wait=clock.wait, clock=clock, measure_fn=scripted(phase or ""))
    result, failed = scheduler.run_once(failed_before)
    assert (router.weight, result.verdict, failed) == (weight_after, verdict, failed_after)
    assert clock.waits == 0


class FeedbackProvider:
    """Healthy traffic for both variants, plus feedback counters read from `feedback[variant]` (rows, correct).

    Records the window of every feedback query, so tests see that quality is read since the rollout began.
    """

    QUERY = re.compile(r'^sum\(increase\((\w+)\{variant="(\w+)"[^}]*\}\[(\d+)s\]\)\)$')

    def __init__(self, feedback: dict[str, tuple[int, int]] | None):
        self.feedback = feedback
        self.feedback_windows: list[int] = []

    def is_online(self):
        return True

    def query(self, promql):
        if promql.startswith("histogram_quantile"):
            return 0.02
        metric, variant, window = self.QUERY.match(promql).groups()
        if metric == "model_predictions_total":
            return 1000.0
        if metric == "model_prediction_errors_total":
            return 0.0
        if metric == "model_feedback_total" and variant == "champion":
            self.feedback_windows.append(int(window))
        if self.feedback is None:
            return None
        rows, correct = self.feedback[variant]
        return float(rows if metric == "model_feedback_total" else correct)


@pytest.fixture
def quality_plan(plan):
    return replace(plan, quality=QualityThresholds(metric="accuracy", max_degradation=0.01, min_feedback=200))


def test_clearly_less_accurate_challenger_is_rolled_back_at_the_first_look(quality_plan):
    router, clock = FakeRouter(), SimClock()
    provider = FeedbackProvider({"champion": (5000, 4000), "challenger": (1000, 600)})
    result = Scheduler(router, provider, quality_plan, wait=clock.wait, clock=clock).run()
    assert result.verdict is Verdict.ROLLED_BACK
    assert router.history == [5, 0]
    assert "accuracy -20.0 points" in result.reason and "no confirmation needed" in result.reason


@pytest.mark.parametrize("feedback", [None, {"champion": (0, 0), "challenger": (0, 0)}],
                         ids=["no feedback series", "feedback series at zero"])
def test_without_feedback_the_gate_changes_nothing(quality_plan, feedback):
    router, clock = FakeRouter(), SimClock()
    provider = FeedbackProvider(feedback)
    result = Scheduler(router, provider, quality_plan, wait=clock.wait, clock=clock).run()
    assert result.verdict is Verdict.PROMOTED
    assert router.history == [5, 10, 25, 50, 100]
    # Feedback is read over the whole rollout so far, not only the step's window.
    assert provider.feedback_windows == [60, 120, 180, 240]


def test_required_gate_holds_the_last_step_until_quality_is_shown(quality_plan):
    plan = replace(quality_plan, quality=replace(quality_plan.quality, required_for_promotion=True))
    router, clock = FakeRouter(), SimClock(stop_after=6)
    provider = FeedbackProvider({"champion": (5000, 4000), "challenger": (100, 80)})
    result = Scheduler(router, provider, plan, wait=clock.wait, clock=clock).run()
    assert result.verdict is Verdict.ABORTED
    assert router.weight == 50
    assert "promotion needs the quality gate" in result.records[-2].reason

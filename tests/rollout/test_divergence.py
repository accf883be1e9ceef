"""The label-free gate: what the two variants predict, compared with an always-valid test, acting as configured."""

from __future__ import annotations

import numpy as np
import pytest

from rollout.analysis import Check, Measurement, Phase
from rollout.divergence import (
    DivergenceThresholds,
    OutputCounts,
    collect_outputs,
    divergence_sequence,
    fixed_sample_divergence,
    judge_divergence,
    output_query,
    with_divergence,
)
from rollout.scheduler import RolloutPlan, measure
from rollout.analysis import Thresholds

GATE = DivergenceThresholds(action="rollback", min_effect=0.05, min_rows=200)


def churn(variant: str, rows: int, churned: int) -> OutputCounts:
    return OutputCounts(variant, {"0": rows - churned, "1": churned})


@pytest.mark.parametrize("case, champion, challenger, limits, expected", [
    ("too-few-challenger-rows", churn("champion", 5000, 1250), churn("challenger", 150, 60), GATE, None),
    ("no-challenger-counts", churn("champion", 5000, 1250), None, GATE, None),
    ("same-shares", churn("champion", 5000, 1250), churn("challenger", 1000, 250), GATE, Phase.PASSED),
    ("15-points-more-churn-rollback", churn("champion", 5000, 1250), churn("challenger", 1000, 400), GATE,
     Phase.FAILED),
    ("15-points-more-churn-hold", churn("champion", 5000, 1250), churn("challenger", 1000, 400),
     DivergenceThresholds(action="hold"), Phase.INCONCLUSIVE),
    ("15-points-more-churn-warn", churn("champion", 5000, 1250), churn("challenger", 1000, 400),
     DivergenceThresholds(action="warn"), Phase.PASSED),
    ("15-points-less-churn-rollback", churn("champion", 5000, 1250), churn("challenger", 1000, 100), GATE,
     Phase.FAILED),
    # Significant on a million rows each, but 2 points is under the minimum effect: never acts.
    ("below-minimum-effect", churn("champion", 10**6, 250_000), churn("challenger", 10**6, 270_000), GATE,
     Phase.PASSED),
    ("a-class-only-the-challenger-predicts", OutputCounts("champion", {"a": 900, "b": 100}),
     OutputCounts("challenger", {"a": 700, "b": 100, "c": 200}), GATE, Phase.FAILED),
])
def test_judge_divergence(case, champion, challenger, limits, expected):
    check, divergence = judge_divergence(champion, challenger, limits)
    assert (check.phase if check else None) is expected
    if expected is Phase.FAILED:
        assert check.conclusive and "significantly different" in check.detail
    if check is not None:
        assert divergence.champion_rows == champion.total and divergence.challenger_rows == challenger.total


def test_warning_names_the_output_and_the_shift():
    check, divergence = judge_divergence(churn("champion", 5000, 1250), churn("challenger", 1000, 400),
                                         DivergenceThresholds())
    assert "predicts '1' +15.0 points" in check.detail and "warn only" in check.detail
    assert divergence.significant and divergence.largest.output == "1"
    assert divergence.total_variation == pytest.approx(0.15)


@pytest.mark.parametrize("gate_phase, before, after", [
    (Phase.FAILED, Phase.PASSED, Phase.FAILED),
    (Phase.INCONCLUSIVE, Phase.PASSED, Phase.INCONCLUSIVE),
    (Phase.INCONCLUSIVE, Phase.FAILED, Phase.FAILED),
    (Phase.PASSED, Phase.INCONCLUSIVE, Phase.INCONCLUSIVE),
    (Phase.FAILED, Phase.ERROR, Phase.ERROR),
])
def test_the_gate_combines_with_the_other_checks(gate_phase, before, after):
    gate = Check("prediction_divergence", gate_phase, "differs", conclusive=gate_phase is Phase.FAILED)
    merged = with_divergence(Measurement(before, "traffic"), gate, None)
    assert merged.phase is after
    assert merged.conclusive_failure == (after is Phase.FAILED and gate_phase is Phase.FAILED)


def _repeated_looks(rng, champion_churn, challenger_churn, sequence_fn, looks=120, rows=(100, 10)):
    """One rollout's predictions, judged at every look (no minimum effect); the look it fired at, or None."""
    champion = challenger = champion_churned = challenger_churned = 0
    limits = DivergenceThresholds(action="rollback", min_effect=0.0, min_rows=200)
    for look in range(looks):
        champion += rows[0]
        challenger += rows[1]
        champion_churned += rng.binomial(rows[0], champion_churn)
        challenger_churned += rng.binomial(rows[1], challenger_churn)
        check, _ = judge_divergence(churn("champion", champion, champion_churned),
                                    churn("challenger", challenger, challenger_churned), limits, sequence_fn)
        if check is not None and check.phase is Phase.FAILED:
            return look
    return None


def test_false_alarms_stay_under_the_significance_however_often_it_looks():
    """Identical variants at 120 looks and no minimum effect: the sequence fires in under 1% of 600 rollouts;
    a fixed-sample test at the same significance, re-run at every look, fires several times as often. A
    challenger predicting churn 15 points more often is caught in nearly every run."""
    rng = np.random.default_rng(24)
    runs = 600
    sequential = sum(_repeated_looks(rng, 0.25, 0.25, divergence_sequence) is not None for _ in range(runs))
    fixed = sum(_repeated_looks(rng, 0.25, 0.25, fixed_sample_divergence) is not None for _ in range(runs))
    assert sequential / runs < 0.01
    assert fixed > 3 * max(sequential, 1)
    caught = [_repeated_looks(rng, 0.25, 0.40, divergence_sequence) for _ in range(200)]
    assert sum(look is not None for look in caught) / 200 > 0.95


class ScriptedProvider:
    """Answers the traffic queries with a healthy challenger and the output queries with fixed counts."""

    def __init__(self, outputs: dict[str, dict[str, float]] | None):
        self.outputs = outputs
        self.vector_queries: list[str] = []

    def is_online(self) -> bool:
        return True

    def query(self, promql: str) -> float | None:
        if "histogram_quantile" in promql:
            return 0.02
        return 0.0 if "errors" in promql else 1000.0

    def query_by(self, promql: str, label: str) -> dict[str, float]:
        self.vector_queries.append(promql)
        variant = "challenger" if 'variant="challenger"' in promql else "champion"
        return (self.outputs or {}).get(variant, {})


PLAN = RolloutPlan(steps=(10, 50), interval_seconds=60, failure_threshold=2,
                   thresholds=Thresholds(min_requests=100, max_error_rate=0.01, max_p95_seconds=0.5),
                   divergence=GATE)


def test_measure_rolls_back_a_challenger_that_predicts_differently():
    provider = ScriptedProvider({"champion": {"0": 7500.0, "1": 2500.0}, "challenger": {"0": 600.4, "1": 399.6}})
    measurement = measure(provider, PLAN, 60)
    assert measurement.phase is Phase.FAILED and measurement.conclusive_failure
    assert measurement.divergence.significant
    assert measurement.to_dict()["divergence"]["differences"][1]["output"] == "1"
    assert provider.vector_queries[0] == output_query('variant="champion"', 60)
    assert 'sum by (output) (increase(model_prediction_outputs_total{variant="champion"}[60s]))' == \
        provider.vector_queries[0]


@pytest.mark.parametrize("outputs", [None, {"champion": {"0": 7500.0, "1": 2500.0}}])
def test_without_output_counts_the_rollout_is_judged_as_before(outputs):
    measurement = measure(ScriptedProvider(outputs), PLAN, 60)
    assert measurement.phase is Phase.PASSED and measurement.divergence is None


def test_a_provider_that_cannot_answer_per_label_is_not_judged():
    class ScalarOnly:
        def query(self, promql):
            return 1.0

    assert collect_outputs(ScalarOnly(), "champion", 'variant="champion"', 60) is None


def test_the_stack_defaults_warn_only():
    from infra.config import load_stack_config
    from rollout.scheduler import plan_from_config

    plan = plan_from_config(load_stack_config("prod").rollout)
    assert plan.divergence == DivergenceThresholds(action="warn", min_effect=0.05, min_rows=200)


def test_report_shows_the_divergence_over_time(tmp_path):
    import json

    from matplotlib import image

    from rollout.report import write_report
    from rollout.scheduler import Decision, RolloutResult, StepRecord, Verdict

    records = [StepRecord(1000.0, 5, Decision.START, "challenger weight set to 5%")]
    for minute, (rows, churned) in enumerate([(300, 90), (900, 330), (2000, 800)], start=1):
        check, divergence = judge_divergence(churn("champion", 10 * rows, 25 * rows // 10),
                                             churn("challenger", rows, churned), DivergenceThresholds())
        measurement = with_divergence(Measurement(Phase.PASSED, "traffic"), check, divergence)
        records.append(StepRecord(1000.0 + 60 * minute, 5 * (minute + 1), Decision.ADVANCE, measurement.reason,
                                  measurement))
    report, chart = write_report(RolloutResult(Verdict.PROMOTED, "promoted", records), tmp_path / "run.json")
    steps = json.loads(report.read_text())["steps"]
    assert [step["measurement"]["divergence"]["significant"] for step in steps[1:]] == [False, True, True]
    assert image.imread(chart).shape[0] > 900  # a fourth panel: the divergence


def test_shifted_traffic_moves_monthly_charges_only_after_the_start():
    from rollout.drift_demo import SHIFT_START_SECONDS, shift_monthly_charges

    row = {"tenure": 12, "monthly_charges": 50.0, "total_charges": 600.0, "contract_type": "One year"}
    assert shift_monthly_charges(row, SHIFT_START_SECONDS - 1) == row
    later = shift_monthly_charges(row, SHIFT_START_SECONDS + 50)
    assert later["monthly_charges"] == 100.0 and {k: v for k, v in later.items() if k != "monthly_charges"} == \
        {k: v for k, v in row.items() if k != "monthly_charges"}


def test_demo_drift_rules_select_the_local_jobs():
    from rollout.drift_demo import DEMO_DRIFT_FOR, demo_drift_rule_group

    rules = demo_drift_rule_group()["rules"]
    assert all('job=~"champion|challenger"' in rule["expr"] for rule in rules)
    assert rules[-1]["for"] == DEMO_DRIFT_FOR and "[1m]" in rules[-1]["expr"]

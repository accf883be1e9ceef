"""The rollout benchmark's simulation answers the scheduler's real queries, feedback included."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from bench.rollout import FEEDBACK_DELAY_SECONDS, SimTraffic, default_plan, less_accurate_scenario
from rollout.analysis import quality_queries, variant_queries


def test_feedback_arrives_late_and_only_when_simulated():
    traffic = SimTraffic(np.random.default_rng(1), 50.0, {"champion": 0.0, "challenger": 0.0}, scrape_lag=0,
                         accuracies={"champion": 0.8, "challenger": 0.8})
    traffic.set_weight(50)
    queries = quality_queries('variant="challenger"', 600, "accuracy")
    traffic.wait(FEEDBACK_DELAY_SECONDS)
    assert traffic.query(queries["count"]) == 0
    traffic.wait(60)
    rows, correct = traffic.query(queries["count"]), traffic.query(queries["sum"])
    served = traffic.query(variant_queries('variant="challenger"', 600).requests)
    assert 0.3 * served < rows < 0.7 * served
    assert 0.7 * rows < correct < 0.9 * rows
    silent = SimTraffic(np.random.default_rng(1), 50.0, {"champion": 0.0, "challenger": 0.0}, scrape_lag=0)
    silent.wait(60)
    assert silent.query(queries["count"]) is None


def test_less_accurate_challenger_is_rolled_back_in_simulation():
    plan = default_plan()
    fast = replace(plan, interval_seconds=5, quality=replace(plan.quality, required_for_promotion=True))
    row = less_accurate_scenario("fast", fast, 5, np.random.default_rng(3))
    assert row["rolled_back_share"] == 1.0


def test_the_label_free_gate_rolls_back_a_challenger_predicting_churn_more_often():
    from bench.rollout import divergent_scenario, identical_divergence_scenario
    from rollout.divergence import output_query

    traffic = SimTraffic(np.random.default_rng(1), 40.0, {"champion": 0.0, "challenger": 0.0}, scrape_lag=0,
                         churn_rates={"champion": 0.25, "challenger": 0.40})
    traffic.set_weight(50)
    traffic.wait(60)
    counts = traffic.query_by(output_query('variant="challenger"', 60), "output")
    assert 0.3 < counts["1"] / (counts["0"] + counts["1"]) < 0.5
    plan = default_plan()
    gate = replace(plan, divergence=replace(plan.divergence, action="rollback"))
    assert divergent_scenario("defaults", gate, 5, np.random.default_rng(2))["rolled_back_share"] == 1.0
    assert identical_divergence_scenario("defaults", gate, 5, np.random.default_rng(3))["false_rollbacks"] == 0

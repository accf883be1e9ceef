"""Every rollout ends: errors and inconclusive looks in a row, and time at one step, are capped (Argo Rollouts'
`consecutiveErrorLimit` and `inconclusiveLimit`, Flagger's progress deadline). Past a limit the challenger's
weight goes back to 0 and the result says which limit ended the rollout, also with Prometheus down."""

from __future__ import annotations

from dataclasses import replace

import pytest

from rollout.cli import main
from rollout.errors import RolloutError
from rollout.lock import lock_path
from rollout.metrics import PrometheusProvider
from rollout.progress import EXIT_ROLLED_BACK
from rollout.scheduler import RolloutPlan, Scheduler, Verdict
from service.names import free_port

from rollout_fakes import FakeRouter, SimClock, scripted


@pytest.mark.parametrize(
    ("case", "limits", "phases", "looks", "reason"),
    [
        ("errors in a row", {"consecutive_error_limit": 3}, "EEE", 3, "3 analyses in a row could not be made"),
        ("a pass resets the error count", {"consecutive_error_limit": 3}, "EEPEEE", 6, "consecutive error limit 3"),
        ("inconclusive in a row", {"inconclusive_limit": 4}, "IIII", 4, "4 inconclusive analyses in a row"),
        ("an error breaks an inconclusive run", {"inconclusive_limit": 2}, "IEII", 4, "inconclusive limit 2"),
        ("no progress at one step", {"progress_deadline_seconds": 180}, "IEFI", 3, "progress deadline 180s"),
    ],
    ids=lambda value: value if isinstance(value, str) and " " in value else None,
)
def test_holding_ends_at_its_limit_with_the_weight_at_zero(plan, case, limits, phases, looks, reason):
    router, clock = FakeRouter(), SimClock()
    measure_fn = scripted(phases + "P" * 10)
    result = Scheduler(router, None, replace(plan, failure_threshold=5, **limits), wait=clock.wait, clock=clock,
                       measure_fn=measure_fn).run()
    assert result.verdict is Verdict.ROLLED_BACK
    assert router.weight == 0
    assert reason in result.reason and "challenger weight set to 0" in result.reason
    assert len(measure_fn.windows) == looks
    assert result.records[-1].decision.value == "rollback"


def test_without_limits_holding_is_unbounded_until_stopped(plan):
    router, clock = FakeRouter(), SimClock(stop_after=40)
    result = Scheduler(router, None, plan, wait=clock.wait, clock=clock, measure_fn=scripted("E" * 40)).run()
    assert result.verdict is Verdict.ABORTED and router.weight == 5


@pytest.mark.parametrize("field", ["consecutive_error_limit", "inconclusive_limit", "progress_deadline_seconds"])
def test_limits_must_be_positive(plan, field):
    with pytest.raises(RolloutError, match=field.replace("_", " ").replace(" seconds", "")):
        replace(plan, **{field: 0})


def test_rollout_with_prometheus_down_ends(plan):
    """Nothing listens where Prometheus should be: every look is an error, and the rollout still ends."""
    provider = PrometheusProvider(f"http://127.0.0.1:{free_port()}", timeout_seconds=0.5)
    router, clock = FakeRouter(), SimClock(stop_after=100)
    result = Scheduler(router, provider, replace(plan, consecutive_error_limit=3), wait=clock.wait, clock=clock).run()
    assert result.verdict is Verdict.ROLLED_BACK
    assert router.history == [5, 0]
    assert "3 analyses in a row could not be made" in result.reason and "unreachable" in result.reason
    assert clock.waits == 3


def test_start_with_prometheus_down_exits_and_resets_the_stack(pulumi_cli, capsys):
    """`python -m rollout start` with the stack's defaults for the limits: it ends, weight 0, exit code 1."""
    _, state, _ = pulumi_cli
    code = main(["start", "--stack", "prod", "--set", f"rollout.prometheusUrl=http://127.0.0.1:{free_port()}",
                 "--set", "rollout.intervalSeconds=1", "--set", "rollout.consecutiveErrorLimit=2"])
    out = capsys.readouterr().out
    assert code == EXIT_ROLLED_BACK, out
    import json

    assert json.loads(state.read_text())["stacks"]["prod"]["traffic.challengerWeight"] == "0"
    assert "2 analyses in a row could not be made (consecutive error limit 2)" in out
    assert not lock_path("prod").exists()


def test_plan_from_config_carries_the_declared_limits():
    from infra.config import load_stack_config
    from rollout.scheduler import plan_from_config

    plan = plan_from_config(load_stack_config("prod").rollout)
    assert (plan.consecutive_error_limit, plan.inconclusive_limit, plan.progress_deadline_seconds) == (5, 30, 3600)
    assert isinstance(plan, RolloutPlan)

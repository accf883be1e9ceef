"""The CLI: bad arguments and bad stack config exit 2 naming the problem; reports carry a verdict and a chart."""

from __future__ import annotations

import json

import pytest

from rollout.analysis import Measurement, Phase, VariantSample
from rollout.cli import EXIT_USAGE, main, plan_from_config
from rollout.report import write_report
from rollout.scheduler import Decision, RolloutResult, StepRecord, Verdict


@pytest.fixture(autouse=True)
def state_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MLSERVE_HOME", str(tmp_path))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "required"),
        (["launch", "--stack", "prod"], "invalid choice: 'launch'"),
        (["start"], "the following arguments are required: --stack"),
        (["start", "--stack", "pr od"], "'pr od' is not a stack name"),
        (["start", "--stack", "prod", "--report", "run.txt"], "'run.txt' must end in .json"),
        (["start", "--stack", "prod", "--router", "istio"], "invalid choice: 'istio'"),
        (["start", "--stack", "nope"], "no file Pulumi.nope.yaml"),
        (["start", "--stack", "dev"], "has no model.challengerUri"),
        (["start", "--stack", "prod", "--set", "rollout.steps=[50, 10]"], "rollout.steps"),
        (["start", "--stack", "prod", "--set", "rollout.intervalSeconds=soon"], "rollout.intervalSeconds"),
        (["start", "--stack", "prod", "--set", "nonsense"], "is not KEY.PATH=VALUE"),
        (["start", "--stack", "prod", "--router", "haproxy"], "needs --haproxy-socket"),
        (["start", "--stack", "prod", "--explain-url", "canary=http://127.0.0.1:3000"], "is not VARIANT=URL"),
        (["promote", "--stack", "dev"], "no model.challengerUri to promote"),
    ],
)
def test_bad_arguments_exit_2_naming_the_problem(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_status_reads_the_stack_without_pulumi(capsys):
    assert main(["status", "--stack", "prod", "--set", "rollout.prometheusUrl=http://127.0.0.1:9"]) == 0
    out = capsys.readouterr().out
    assert "models:/customer-churn-classifier@challenger" in out
    assert "rollout running:    no" in out
    assert "unreachable" in out


def test_plan_follows_stack_config():
    from infra.config import load_stack_config

    plan = plan_from_config(load_stack_config("prod", overrides={"rollout.maxErrorRatePercent": "0.5"}).rollout)
    assert plan.steps == (5, 10, 25, 50, 100)
    assert plan.thresholds.max_error_rate == pytest.approx(0.005)
    assert plan.thresholds.max_p95_seconds == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("router", "rollout_router", "expected"),
    [("seldon", "stack", True), ("service", "stack", False), ("gateway", "stack", False), ("seldon", "haproxy", False)],
)
def test_on_seldon_the_plan_reads_the_executors_metrics(router, rollout_router, expected):
    """Through the stack's Seldon deployment the executor counts every call; a local HAProxy split and the Gateway
    API router have no executor: the model pods' own metrics are read."""
    from infra.config import load_stack_config
    from rollout.cli import stack_metric_sources

    config = load_stack_config("prod", overrides={"traffic.router": router, "traffic.challengerWeight": 0,
                                                  "traffic.gateway": "gateway-system/public"})
    plan = plan_from_config(config.rollout, stack_metric_sources(config, rollout_router))
    if expected:
        assert plan.challenger_executor_selector.endswith('predictor_name="challenger"')
        assert 'deployment_name="churn-model"' in plan.champion_executor_selector
        assert plan.challenger_ready_query == (
            'sum(kube_deployment_status_replicas_available{namespace="mlserve",deployment=~"churn-model-challenger-[0-9]+-.+"})'
        )
    else:
        assert plan.champion_executor_selector is plan.challenger_executor_selector is plan.challenger_ready_query is None


def test_report_has_verdict_every_step_and_a_chart(tmp_path):
    sample = VariantSample("challenger", 200, 10, 0.02)
    champion = VariantSample("champion", 2000, 0, 0.015)
    failed = Measurement(Phase.FAILED, "error_rate: 10/200", champion, sample)
    result = RolloutResult(Verdict.ROLLED_BACK, "2 failed checks", [
        StepRecord(1000.0, 5, Decision.START, "challenger weight set to 5%"),
        StepRecord(1060.0, 5, Decision.HOLD, "failed check", failed, 1),
        StepRecord(1120.0, 0, Decision.ROLLBACK, "2 failed checks", failed, 2),
    ])
    report, chart = write_report(result, tmp_path / "run.json", {"stack": "prod"})
    data = json.loads(report.read_text())
    assert data["verdict"] == "rolled_back"
    assert [step["decision"] for step in data["steps"]] == ["start", "hold", "rollback"]
    assert data["steps"][1]["measurement"]["challenger"]["error_rate"] == pytest.approx(0.05)
    assert data["steps"][2]["time"].startswith("1970-01-01T00:18:40")
    assert chart == tmp_path / "run.png" and chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_shows_the_quality_that_decided_a_rollback(tmp_path):
    from rollout.analysis import QualitySample

    quality = (QualitySample("champion", 4000, 800.0, 800.0), QualitySample("challenger", 900, 360.0, 360.0))
    failed = Measurement(Phase.FAILED, "quality: challenger accuracy -20.0 points", None, None, (), quality)
    result = RolloutResult(Verdict.ROLLED_BACK, "conclusive failure", [
        StepRecord(1000.0, 5, Decision.START, "challenger weight set to 5%"),
        StepRecord(1060.0, 0, Decision.ROLLBACK, "conclusive failure", failed, 1),
    ])
    report, chart = write_report(result, tmp_path / "run.json")
    scores = {entry["variant"]: entry["score"] for entry in json.loads(report.read_text())["steps"][1]["measurement"]["quality"]}
    assert scores == pytest.approx({"champion": 0.8, "challenger": 0.6})
    from matplotlib import image

    assert image.imread(chart).shape[0] > 900  # four panels, not three

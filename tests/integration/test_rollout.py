"""Rollouts against real servers: `bentoml serve` (champion, healthy and faulty challengers), HAProxy and
Prometheus on loopback, with bounded load. One environment is shared by the module (starting model
servers dominates the time); each test resets the weights and drives its own traffic.

Covers: rollback of a faulty challenger, promotion of a healthy one, holding while Prometheus is down,
and resuming after the rollout process is killed (plus refusing a second rollout while one runs).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rollout.analysis import Phase, Thresholds
from rollout.local import LoadGenerator, LocalEnvironment, tools_installed
from rollout.lock import REPO_ROOT
from rollout.metrics import PrometheusProvider
from rollout.router import HAProxyRouter
from rollout.scheduler import Decision, RolloutPlan, Scheduler, Verdict
from service.names import DEMO_MODEL_NAME

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not tools_installed("haproxy", "prometheus"), reason="needs haproxy and prometheus (make setup)"),
]

MODEL = DEMO_MODEL_NAME
PLAN = RolloutPlan(
    steps=(20, 50, 100),
    interval_seconds=3,
    failure_threshold=2,
    thresholds=Thresholds(min_requests=30, max_error_rate=0.01, max_p95_seconds=0.5),
)
RATE = 40


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """Registry with champion, healthy and faulty challenger versions; three servers; one split per challenger."""
    home = tmp_path_factory.mktemp("mlserve-home")
    tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
    from service.train import ensure_demo_models, register_demo_models, sample_instances

    healthy = ensure_demo_models(tracking_uri, faulty_challenger=False)
    faulty = register_demo_models(tracking_uri, faulty_challenger=True)
    with LocalEnvironment(home / "env", tracking_uri) as env:
        canary = env.start_canary(MODEL, healthy["champion"],
                                  {"challenger": healthy["challenger"], "faulty": faulty["challenger"]})
        env.healthy_split, env.faulty_split = canary.splits["challenger"], canary.splits["faulty"]
        env.home = home
        env.instances = sample_instances(2000, seed=21)
        yield env


@pytest.fixture
def load(local):
    """Start bounded load against a split; stopped at the end of the test."""
    generators = []

    def start(split, seconds=90):
        generator = LoadGenerator(split.url, local.instances, rate_per_second=RATE,
                                  max_requests=RATE * seconds, max_seconds=seconds).start()
        generators.append(generator)
        return generator

    yield start
    for generator in generators:
        generator.stop()


def router_for(split) -> HAProxyRouter:
    router = HAProxyRouter(split.socket_path)
    router.set_weight(0)
    return router


def run_scheduler(router, prometheus_url, stop: threading.Event, records: list, limit_seconds: float = 75):
    """Run a rollout in this process; after `limit_seconds` it is stopped (verdict aborted), never hung."""
    timer = threading.Timer(limit_seconds, stop.set)
    timer.start()
    try:
        scheduler = Scheduler(router, PrometheusProvider(prometheus_url, timeout_seconds=2), PLAN,
                              wait=stop.wait, on_record=records.append)
        return scheduler.run()
    finally:
        timer.cancel()


def test_faulty_challenger_is_rolled_back(local, load):
    router = router_for(local.faulty_split)
    generator = load(local.faulty_split)
    started = time.monotonic()
    result = run_scheduler(router, local.prometheus_url, threading.Event(), [])
    elapsed = time.monotonic() - started
    stats = generator.stop()
    assert result.verdict is Verdict.ROLLED_BACK, result.reason
    assert router.get_weight() == 0
    assert "error_rate" in result.reason
    assert result.records[-1].measurement.phase is Phase.FAILED
    assert stats.failed("challenger") > 0  # the fault is real: the server answered 5xx
    assert elapsed < 60


def test_healthy_challenger_is_promoted(local, load):
    router = router_for(local.healthy_split)
    generator = load(local.healthy_split)
    result = run_scheduler(router, local.prometheus_url, threading.Event(), [])
    stats = generator.stop()
    assert result.verdict is Verdict.PROMOTED, result.reason
    assert [r.weight for r in result.records if r.decision is Decision.ADVANCE] == [50, 100]
    assert router.get_weight() == 100
    assert stats.failed("challenger") == 0


def test_holds_while_prometheus_is_down(local, load):
    router = router_for(local.healthy_split)
    load(local.healthy_split)
    local.stop_prometheus()
    records, stop = [], threading.Event()
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(result=run_scheduler(router, local.prometheus_url, stop, records)))
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while sum(r.decision is Decision.HOLD for r in records) < 3 and time.monotonic() < deadline:
            time.sleep(0.5)
        holds = [r for r in records if r.decision is Decision.HOLD]
        assert len(holds) >= 3
        assert all(r.measurement.phase is Phase.ERROR and "unreachable" in r.reason for r in holds)
        assert router.get_weight() == PLAN.steps[0]  # never advanced, never rolled back
    finally:
        local.start_prometheus()
    worker.join(90)
    stop.set()
    assert outcome["result"].verdict is Verdict.PROMOTED


def rollout_cli(local, split, *extra) -> list[str]:
    return [
        sys.executable, "-m", "rollout", "start", "--stack", "prod", "--router", "haproxy",
        "--haproxy-socket", str(split.socket_path),
        "--set", f"rollout.prometheusUrl={local.prometheus_url}",
        "--set", f"rollout.intervalSeconds={PLAN.interval_seconds}",
        "--set", f"rollout.steps={list(PLAN.steps)}",
        "--set", f"rollout.minRequests={PLAN.thresholds.min_requests}",
        *extra,
    ]


def test_killed_rollout_resumes_and_second_rollout_is_refused(local, load, tmp_path):
    router = router_for(local.healthy_split)
    load(local.healthy_split)
    env = {**os.environ, "MLSERVE_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "true",
           "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    # The first rollout starts at 50% and can never gather enough requests to pass it: it holds there until
    # killed, so the second is refused however slowly it starts (importing the CLI takes seconds on a loaded
    # machine, longer than an interval).
    holding = ("--set", "rollout.steps=[50, 100]", "--set", "rollout.minRequests=1000000000")
    first = subprocess.Popen(rollout_cli(local, local.healthy_split, *holding),
                             cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 45
        while router.get_weight() < 50 and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.2)
        assert router.get_weight() == 50, first.communicate(timeout=5)[0] if first.poll() is not None else ""
        refused = subprocess.run(rollout_cli(local, local.healthy_split), cwd=REPO_ROOT, env=env,
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode == 3
        assert f"already running on stack 'prod' (pid {first.pid}" in refused.stderr
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    # Killed mid-rollout: the weight stays where it was and the lock is stale.
    assert router.get_weight() == 50
    report = tmp_path / "resumed.json"
    env_lock = Path(env["MLSERVE_HOME"]) / "rollout-prod.lock"
    assert env_lock.read_text().strip() == str(first.pid)
    resumed = subprocess.run(rollout_cli(local, local.healthy_split, "--report", str(report)), cwd=REPO_ROOT,
                             env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resume" in resumed.stdout and "resuming at the stack's current weight 50%" in resumed.stdout
    assert "verdict: promoted" in resumed.stdout
    data = json.loads(report.read_text())
    assert data["verdict"] == "promoted"
    assert data["steps"][0]["decision"] == "resume" and data["steps"][0]["weight"] == 50
    assert report.with_suffix(".png").stat().st_size > 0
    assert not env_lock.exists()

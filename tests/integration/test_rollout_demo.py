"""`python -m rollout demo` end to end, as a user runs it: a faulty challenger is rolled back and the run is
reported; Ctrl-C stops the demo and every process it started. Uses a private MLSERVE_HOME (own registry)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from rollout.local import tools_installed
from rollout.lock import REPO_ROOT

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not tools_installed("haproxy", "prometheus"), reason="needs haproxy and prometheus (make setup)"),
]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("demo-home")


def demo_env(home) -> dict[str, str]:
    env = {**os.environ, "MLSERVE_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true",
           "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def processes_started_under(home) -> list[psutil.Process]:
    """Processes whose command line or environment mentions the demo's private home."""
    found = []
    for process in psutil.process_iter(["cmdline", "pid"]):
        if process.pid == os.getpid():
            continue
        try:
            text = " ".join(process.info["cmdline"] or []) + " " + " ".join(
                f"{k}={v}" for k, v in process.environ().items() if k in ("BENTOML_HOME", "MLSERVE_HOME"))
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        if str(home) in text:
            found.append(process)
    return found


def test_demo_rolls_back_a_faulty_challenger(home):
    report = home / "faulty.json"
    finished = subprocess.run([sys.executable, "-m", "rollout", "demo", "--faulty-challenger", "--report", str(report)],
                              cwd=REPO_ROOT, env=demo_env(home), capture_output=True, text=True, timeout=280)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    data = json.loads(report.read_text())
    assert data["verdict"] == "rolled_back"
    assert data["steps"][-1]["decision"] == "rollback" and data["steps"][-1]["weight"] == 0
    assert "error_rate" in data["reason"]
    assert data["context"]["traffic"]["challenger"]["failed_5xx"] > 0
    assert report.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert processes_started_under(home) == []


@pytest.mark.timeout(480)
def test_demo_rolls_back_a_less_accurate_challenger_on_quality(home):
    """The challenger never errors and is as fast; only the ground truth sent to /feedback shows it is worse."""
    report = home / "worse.json"
    # Training a third model version and starting the servers takes minutes on a loaded machine.
    finished = subprocess.run([sys.executable, "-m", "rollout", "demo", "--worse-challenger", "--report", str(report)],
                              cwd=REPO_ROOT, env=demo_env(home), capture_output=True, text=True, timeout=450)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    data = json.loads(report.read_text())
    assert data["verdict"] == "rolled_back"
    assert data["reason"].startswith("conclusive failure") and "quality: challenger accuracy" in data["reason"]
    traffic = data["context"]["traffic"]
    assert traffic["challenger"]["failed_5xx"] == 0
    assert traffic["challenger"]["feedback_recorded"] > 0 and traffic["champion"]["feedback_recorded"] > 0
    assert data["context"]["feedback_refused"] == 0
    decided = data["steps"][-1]["measurement"]
    scores = {sample["variant"]: sample["score"] for sample in decided["quality"]}
    assert scores["challenger"] < scores["champion"] - 0.05
    # The label-free gate (warn only in the demo) reports beside it; only quality decided.
    assert [check["name"] for check in decided["checks"] if check["name"] != "prediction_divergence"] == ["quality"]
    # Both variants explain: the demo prints their top three reasons for one customer side by side, and the report
    # keeps each variant's mean absolute attribution per raw column.
    printed = finished.stdout.split("why, for one customer", 1)[1].splitlines()[1:5]
    assert printed[0].startswith("demo:   champion: ") and "challenger: " in printed[0], printed
    assert all(f"{rank}. " in line for rank, line in enumerate(printed[1:], start=1)), printed
    attributions = data["context"]["mean_absolute_attribution"]
    columns = {"tenure", "monthly_charges", "total_charges", "contract_type", "payment_method"}
    assert set(attributions) == {"champion", "challenger"}
    assert set(attributions["champion"]) == set(attributions["challenger"]) == columns
    assert attributions["champion"] != attributions["challenger"]  # the worse challenger leans on its columns differently
    assert report.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert processes_started_under(home) == []


@pytest.mark.timeout(480)
def test_shifted_traffic_fires_the_drift_alert_on_the_shifted_column_only(home):
    """monthly_charges drifts upward during the run; the other columns stay as the training data had them."""
    report = home / "shifted.json"
    finished = subprocess.run([sys.executable, "-m", "rollout", "demo", "--shifted-traffic", "--report", str(report)],
                              cwd=REPO_ROOT, env=demo_env(home), capture_output=True, text=True, timeout=450)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    drift = json.loads(report.read_text())["context"]["drift"]
    assert drift["fired_columns"] == ["monthly_charges"], drift
    assert drift["psi_by_column"]["monthly_charges"] > 0.2
    assert all(score < 0.2 for column, score in drift["psi_by_column"].items() if column != "monthly_charges")
    assert processes_started_under(home) == []


def test_ctrl_c_stops_the_demo_and_everything_it_started(home):
    demo = subprocess.Popen([sys.executable, "-m", "rollout", "demo"], cwd=REPO_ROOT, env=demo_env(home),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 200
        for line in demo.stdout:
            if "weight" in line and "start" in line or time.monotonic() > deadline:
                break
        assert processes_started_under(home), "the demo should be running its servers now"
        demo.send_signal(signal.SIGINT)
        demo.wait(60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)
    assert demo.returncode == 130
    assert processes_started_under(home) == []

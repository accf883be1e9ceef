"""`python -m rollout start|abort --stack prod` end to end through the Automation API, against the recording
`pulumi` stand-in and a stand-in Prometheus: every step is a `config set --path` plus an `up`, and promotion
is one more update that swaps the model URIs and resets the weight."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from rollout.cli import main
from rollout.lock import lock_path


class HealthyPrometheus(BaseHTTPRequestHandler):
    """Both variants busy and clean: 1000 requests, no errors, p95 20 ms, whatever the window."""

    def error_count(self, query: str) -> str:
        return "0"

    def do_GET(self):
        query = parse_qs(urlparse(self.path).query).get("query", [""])[0]
        if "histogram_quantile" in query:
            value = "0.02"
        elif "errors" in query or 'code=~"5.."' in query:  # the model's error series, or Seldon's executor's 5xx
            value = self.error_count(query)
        else:
            value = "1000"
        body = {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, value]}]}}
        self.send_response(200)
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def prometheus_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), HealthyPrometheus)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture(autouse=True)
def state_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MLSERVE_HOME", str(tmp_path / "home"))


def stack_calls(calls):
    """The calls that change or read the stack, without the SDK's bookkeeping (version, outputs, history)."""
    kept = []
    for call in calls():
        words = [word for word in call if word != "--non-interactive"]
        if words[:1] == ["version"] or words[:2] in (["stack", "output"], ["stack", "history"], ["stack", "select"]):
            continue
        kept.append(words)
    return kept


def test_start_steps_the_stack_and_promotes(pulumi_cli, prometheus_url, tmp_path, capsys):
    _, state, calls = pulumi_cli
    report = tmp_path / "run.json"
    code = main(["start", "--stack", "prod", "--set", f"rollout.prometheusUrl={prometheus_url}",
                 "--set", "rollout.intervalSeconds=1", "--set", "rollout.steps=[50, 100]", "--report", str(report)])
    assert code == 0, capsys.readouterr()
    weight = ["config", "get", "--path", "traffic.challengerWeight", "--json", "--stack", "prod"]

    def set_path(key, value):
        return ["config", "set", "--path", key, "--plaintext", "--stack", "prod", "--", value]

    def up(message):
        return ["up", "--yes", "--skip-preview", "--message", message, "--client=ADDRESS", "--exec-kind", "auto.inline", "--stack", "prod"]

    assert stack_calls(calls) == [
        weight,
        set_path("traffic.challengerWeight", "50"), up("rollout: traffic.challengerWeight=50"),
        set_path("traffic.challengerWeight", "100"), up("rollout: traffic.challengerWeight=100"),
        ["config", "get", "--path", "model.challengerUri", "--json", "--stack", "prod"],
        set_path("model.championUri", "models:/customer-churn-classifier@challenger"),
        ["config", "rm", "model.challengerUri", "--stack", "prod", "--path"],
        set_path("traffic.challengerWeight", "0"),
        up("rollout: promote models:/customer-churn-classifier@challenger to champion"),
    ]
    assert json.loads(report.read_text())["verdict"] == "promoted"
    assert json.loads(state.read_text())["updates"] == 3
    assert not lock_path("prod").exists()


def test_config_only_writes_one_step_and_stops(pulumi_cli, prometheus_url, capsys):
    _, state, calls = pulumi_cli
    args = ["start", "--stack", "prod", "--config-only", "--set", f"rollout.prometheusUrl={prometheus_url}"]
    assert main(args) == 0
    assert json.loads(state.read_text())["stacks"]["prod"]["traffic.challengerWeight"] == "5"
    assert main(args) == 0  # the next invocation judges 5% and writes the next step
    assert json.loads(state.read_text())["stacks"]["prod"]["traffic.challengerWeight"] == "10"
    assert not any(call[0] == "up" for call in stack_calls(calls))
    assert "apply it through your pull request" in capsys.readouterr().out


def test_abort_stops_the_running_rollout_and_resets_the_weight(pulumi_cli, capsys):
    _, state, calls = pulumi_cli
    data = json.loads(state.read_text())
    data["stacks"]["prod"]["traffic.challengerWeight"] = "25"
    state.write_text(json.dumps(data))
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock_path("prod").parent.mkdir(parents=True, exist_ok=True)
        lock_path("prod").write_text(f"{running.pid}\n")
        assert main(["abort", "--stack", "prod", "--wait", "20", "--reason", "latency alert"]) == 0
        running.wait(10)
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()
    assert running.returncode == -15  # SIGTERM: the rollout's cue to stop between analyses
    assert json.loads(state.read_text())["stacks"]["prod"]["traffic.challengerWeight"] == "0"
    assert "latency alert" in capsys.readouterr().out
    assert stack_calls(calls)[-1][0] == "up"


def test_a_failed_update_stops_the_rollout_and_keeps_the_report(pulumi_cli, prometheus_url, tmp_path, capsys):
    _, state, _ = pulumi_cli
    data = json.loads(state.read_text())
    data["fail_up"] = True
    state.write_text(json.dumps(data))
    report = tmp_path / "run.json"
    code = main(["start", "--stack", "prod", "--set", f"rollout.prometheusUrl={prometheus_url}", "--report", str(report)])
    assert code == 3
    assert "pulumi up failed" in capsys.readouterr().err
    written = json.loads(report.read_text())
    assert written["verdict"] == "aborted" and "cluster is unreachable" in written["reason"]
    assert not lock_path("prod").exists()


@pytest.fixture
def saved_champion(tmp_path):
    """A champion saved with an input example (the rows its report explains), as a file:// model URI."""
    import mlflow
    import pandas as pd

    from tests.service.explain_models import RiskScore

    frame = pd.DataFrame({"amount": [10.0 * i for i in range(40)], "flagged": [i % 3 == 0 for i in range(40)],
                          "level": ["low", "high", "medium", "low"] * 10})
    path = tmp_path / "champion-model"
    mlflow.pyfunc.save_model(path, python_model=RiskScore(), input_example=frame, pip_requirements=["mlflow"],
                             signature=mlflow.models.infer_signature(frame, RiskScore().predict(None, frame)))
    return path.as_uri()


def test_the_report_shows_how_each_variant_decides_or_why_it_cannot(pulumi_cli, prometheus_url, saved_champion,
                                                                   tmp_path, capsys):
    from rollout_fakes import serve_explainer

    champion = serve_explainer((200, {}, {}))
    challenger = serve_explainer((409, {"error": "no background data to explain against"}, {}))
    report = tmp_path / "run.json"
    try:
        code = main(["start", "--stack", "prod", "--set", f"rollout.prometheusUrl={prometheus_url}",
                     "--set", "rollout.intervalSeconds=1", "--set", "rollout.steps=[100]",
                     "--set", f"model.championUri={saved_champion}", "--set", "explain.maxRows=8",
                     "--explain-url", f"champion=http://127.0.0.1:{champion.server_port}/",
                     "--explain-url", f"challenger=http://127.0.0.1:{challenger.server_port}",
                     "--report", str(report)])
    finally:
        champion.shutdown()
        challenger.shutdown()

    assert code == 0, capsys.readouterr()
    data = json.loads(report.read_text())
    assert data["verdict"] == "promoted", "a variant that cannot explain does not fail the rollout"
    section = data["context"]["explanations"]
    assert section["rows"] == 8 and section["rows_from"] == f"the input example logged with {saved_champion}"
    asked = champion.RequestHandlerClass.seen
    assert asked == challenger.RequestHandlerClass.seen and len(asked[0]) == 8, "the same bounded rows for both"
    assert set(asked[0][0]) == {"amount", "flagged", "level"}
    assert section["mean_absolute_attribution"] == {"champion": pytest.approx({"tenure": 0.45, "plan": 0.1})}
    assert "no background data" in section["notes"]["challenger"] and "409" in section["notes"]["challenger"]
    out = capsys.readouterr().out
    assert "champion leans most on: tenure 0.45, plan 0.1" in out


@pytest.mark.parametrize(("extra", "note"), [
    ([], "pass --explain-url champion=URL --explain-url challenger=URL"),
    (["--set", "explain.enabled=false", "--explain-url", "champion=http://127.0.0.1:9"], "explain.enabled: false"),
    (["--set", "model.championUri=file:///nonexistent/model", "--explain-url", "champion=http://127.0.0.1:9"],
     "no rows to explain: cannot read file:///nonexistent/model/MLmodel"),
], ids=["no-urls", "disabled", "no-rows"])
def test_without_servers_to_ask_the_report_says_so(pulumi_cli, prometheus_url, tmp_path, extra, note):
    report = tmp_path / "run.json"
    code = main(["start", "--stack", "prod", "--set", f"rollout.prometheusUrl={prometheus_url}",
                 "--set", "rollout.intervalSeconds=1", "--set", "rollout.steps=[100]", "--report", str(report), *extra])

    assert code == 0
    assert note in json.loads(report.read_text())["context"]["explanations"]["note"]

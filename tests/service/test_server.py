"""The model server as its users see it: real `python -m service serve` processes over HTTP on loopback."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import subprocess
import sys

import pytest
import requests

from service.train import FEATURES, MODEL_NAME, sample_instances

from .conftest import REPO_ROOT

pytestmark = pytest.mark.integration

EXAMPLE = {
    "tenure": 12,
    "monthly_charges": 70.35,
    "total_charges": 844.20,
    "contract_type": "Month-to-month",
    "payment_method": "Electronic check",
}


def oip_request(rows: list[dict]) -> dict:
    """An Open Inference Protocol v2 infer body: one 1-D tensor per feature."""
    return {
        "id": "test",
        "inputs": [
            {
                "name": feature,
                "shape": [len(rows)],
                "datatype": "BYTES" if isinstance(rows[0][feature], str) else "FP64",
                "data": [row[feature] for row in rows],
            }
            for feature in FEATURES
        ],
    }


def metric_value(server_url: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when there are none yet)."""
    text = requests.get(f"{server_url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
            if all(found.get(key) == value for key, value in labels.items()):
                total += float(match.group(2))
    return total


def test_predict_returns_probability_and_the_resolved_version(champion_server, registry):
    response = requests.post(f"{champion_server.url}/predict", json={"instances": [EXAMPLE]}, timeout=10)

    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["predictions"]) == 1 and 0.0 <= body["predictions"][0] <= 1.0
    assert (body["model_name"], body["model_version"], body["variant"]) == (MODEL_NAME, registry.champion, "champion")
    assert response.headers["X-Model-Name"] == MODEL_NAME
    assert response.headers["X-Model-Version"] == registry.champion
    assert response.headers["X-Model-Variant"] == "champion"


def test_predict_scores_every_row(champion_server):
    rows = sample_instances(50, seed=1)
    response = requests.post(f"{champion_server.url}/predict", json={"instances": rows}, timeout=10)

    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 50 and all(0.0 <= p <= 1.0 for p in predictions)
    assert len(set(predictions)) > 1, "different customers should get different probabilities"


def test_oip_infer_returns_the_same_probability_as_predict(champion_server, registry):
    rows = sample_instances(5, seed=2) + [EXAMPLE]
    expected = requests.post(f"{champion_server.url}/predict", json={"instances": rows}, timeout=10).json()

    response = requests.post(
        f"{champion_server.url}/v2/models/{MODEL_NAME}/infer", json=oip_request(rows), timeout=10
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == MODEL_NAME and body["model_version"] == registry.champion
    assert body["id"] == "test"
    [output] = body["outputs"]
    assert output["name"] == "probability" and output["shape"] == [6] and output["datatype"] == "FP64"
    assert output["parameters"] == {"class": "1"}, "the positive class's probability"
    assert output["data"] == pytest.approx(expected["predictions"])
    assert response.headers["X-Model-Variant"] == "champion"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (json.dumps({"dataframe_split": {"columns": list(FEATURES), "data": [[EXAMPLE[f] for f in FEATURES]]}}),
         "application/json"),
        (json.dumps({"dataframe_records": [EXAMPLE]}), "application/json"),
        (json.dumps({"instances": [EXAMPLE]}), "application/json"),
        (json.dumps({"inputs": {f: [EXAMPLE[f]] for f in FEATURES}}), "application/json"),
        (",".join(FEATURES) + "\n" + ",".join(str(EXAMPLE[f]) for f in FEATURES) + "\n", "text/csv"),
    ],
    ids=["dataframe_split", "dataframe_records", "instances", "inputs", "csv"],
)
def test_invocations_answers_the_mlflow_scoring_protocol_like_mlflow(champion_server, registry, body, content_type):
    """What `mlflow models serve` answers for the demo: the class label from pyfunc's predict."""
    import mlflow.pyfunc
    import pandas as pd

    mlflow.set_registry_uri(registry.tracking_uri)
    expected = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{registry.champion}").predict(
        pd.DataFrame([EXAMPLE]).astype({"tenure": float})
    )

    response = requests.post(f"{champion_server.url}/invocations", data=body,
                             headers={"Content-Type": content_type}, timeout=10)

    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": list(expected.tolist())}
    assert response.headers["X-Model-Version"] == registry.champion


def test_predict_batch_matches_predict_under_concurrent_load(champion_server, registry):
    rows = sample_instances(40, seed=3)
    expected = requests.post(f"{champion_server.url}/predict", json={"instances": rows}, timeout=10).json()

    def score(row: dict) -> requests.Response:
        return requests.post(f"{champion_server.url}/predict_batch", json={"instances": [row]}, timeout=30)

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(score, rows))

    assert [r.status_code for r in responses] == [200] * len(rows)
    assert [r.json()[0] for r in responses] == pytest.approx(expected["predictions"])
    assert responses[0].headers["X-Model-Version"] == registry.champion


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/livez", None),
        ("/readyz", None),
        ("/v2/health/live", {"live": True}),
        ("/v2/health/ready", {"ready": True}),
        (f"/v2/models/{MODEL_NAME}/ready", {"name": MODEL_NAME, "ready": True}),
    ],
)
def test_health_endpoints_answer_200_once_the_model_is_loaded(champion_server, path, expected):
    response = requests.get(f"{champion_server.url}{path}", timeout=10)

    assert response.status_code == 200
    if expected is not None:
        assert response.json() == expected


def test_oip_model_metadata_describes_inputs_outputs_and_version(champion_server, registry):
    response = requests.get(f"{champion_server.url}/v2/models/{MODEL_NAME}", timeout=10)

    assert response.status_code == 200
    body = response.json()
    assert body["name"] == MODEL_NAME and body["versions"] == [registry.champion]
    assert [tensor["name"] for tensor in body["inputs"]] == list(FEATURES)
    assert body["outputs"] == [{"name": "probability", "datatype": "FP64", "shape": [-1]}]
    assert body["parameters"]["classes"] == ["0", "1"] and body["parameters"]["signature"] == "columns"


def test_unknown_model_name_is_404(champion_server):
    for request in (
        lambda: requests.get(f"{champion_server.url}/v2/models/other-model", timeout=10),
        lambda: requests.post(f"{champion_server.url}/v2/models/other-model/infer", json=oip_request([EXAMPLE]), timeout=10),
    ):
        response = request()
        assert response.status_code == 404
        assert "other-model" in response.json()["error"]


def with_changes(**changes) -> dict:
    row = {**EXAMPLE, **changes}
    return {key: value for key, value in row.items() if value is not ...}


# (id, path, raw body, expected status, text the message must contain)
BAD_INPUTS = [
    ("malformed-json", "/predict", b'{"instances": [', 400, "json"),
    ("not-json-at-all", "/predict", b"tenure=12", 400, ""),
    ("top-level-list", "/predict", json.dumps([EXAMPLE]), 400, "object"),
    ("missing-instances", "/predict", json.dumps({"rows": [EXAMPLE]}), 400, "instances"),
    ("instances-not-a-list", "/predict", json.dumps({"instances": EXAMPLE}), 400, "array"),
    ("empty-instances", "/predict", json.dumps({"instances": []}), 400, "empty"),
    ("row-not-an-object", "/predict", json.dumps({"instances": [[12, 70.35]]}), 400, "row 0"),
    ("missing-feature", "/predict", json.dumps({"instances": [with_changes(tenure=...)]}), 400, "row 0, feature 'tenure'"),
    ("unknown-feature", "/predict", json.dumps({"instances": [with_changes(age=40)]}), 400, "feature 'age'"),
    ("string-for-number", "/predict", json.dumps({"instances": [with_changes(tenure="12")]}), 400, "feature 'tenure'"),
    ("bool-for-number", "/predict", json.dumps({"instances": [with_changes(total_charges=True)]}), 400, "feature 'total_charges'"),
    ("number-for-category", "/predict", json.dumps({"instances": [with_changes(contract_type=1)]}), 400, "feature 'contract_type'"),
    ("null-value", "/predict", json.dumps({"instances": [with_changes(monthly_charges=None)]}), 400, "feature 'monthly_charges'"),
    ("nan", "/predict", '{"instances": [{"tenure": NaN, "monthly_charges": 70.35, "total_charges": 844.2, '
     '"contract_type": "One year", "payment_method": "Mailed check"}]}', 400, "NaN"),
    ("infinity", "/predict", '{"instances": [{"tenure": 12, "monthly_charges": Infinity, "total_charges": 844.2, '
     '"contract_type": "One year", "payment_method": "Mailed check"}]}', 400, "feature 'monthly_charges'"),
    # A value the signature allows but the model refuses (a category it never saw): 422 with the model's words.
    ("unseen-category", "/predict", json.dumps({"instances": [EXAMPLE, with_changes(contract_type="Three year")]}),
     422, "the model refused row 1: Found unknown categories ['Three year']"),
    ("bad-second-row", "/predict", json.dumps({"instances": [EXAMPLE, with_changes(payment_method=7)]}), 400,
     "row 1, feature 'payment_method'"),
    ("too-many-rows", "/predict", json.dumps({"instances": [EXAMPLE] * 1001}), 413, "maximum of 1000 rows"),
    ("oversized-body", "/predict", b'{"instances": [' + b" " * (1 << 20) + b"]}", 413, "maximum of 1048576 bytes"),
    ("batch-malformed-json", "/predict_batch", b"{", 400, "json"),
    ("batch-empty", "/predict_batch", json.dumps({"instances": []}), 400, ""),
    ("batch-unseen-category", "/predict_batch", json.dumps({"instances": [with_changes(contract_type="Weekly")]}), 422,
     "Weekly"),
    ("batch-string-for-number", "/predict_batch", json.dumps({"instances": [with_changes(tenure="12")]}), 400,
     "tenure"),
    ("batch-nan", "/predict_batch", '{"instances": [{"tenure": NaN, "monthly_charges": 70.35, "total_charges": 844.2, '
     '"contract_type": "One year", "payment_method": "Mailed check"}]}', 400, "tenure"),
    ("batch-too-many-rows", "/predict_batch", json.dumps({"instances": [EXAMPLE] * 1001}), 400, "1000"),
    ("batch-oversized-body", "/predict_batch", b'{"instances": [' + b" " * (1 << 20) + b"]}", 413, "bytes"),
    ("oip-malformed-json", f"/v2/models/{MODEL_NAME}/infer", b"{", 400, "JSON"),
    ("oip-no-inputs", f"/v2/models/{MODEL_NAME}/infer", json.dumps({"inputs": []}), 400, "inputs"),
    ("oip-missing-feature", f"/v2/models/{MODEL_NAME}/infer",
     json.dumps({"inputs": oip_request([EXAMPLE])["inputs"][1:]}), 400, "tenure"),
    ("oip-unknown-feature", f"/v2/models/{MODEL_NAME}/infer",
     json.dumps({"inputs": oip_request([EXAMPLE])["inputs"] + [{"name": "age", "shape": [1], "datatype": "FP64",
                                                                 "data": [1]}]}), 400, "age"),
    ("oip-shape-mismatch", f"/v2/models/{MODEL_NAME}/infer",
     json.dumps({"inputs": [{**tensor, "shape": [2]} for tensor in oip_request([EXAMPLE])["inputs"]]}), 400, "shape"),
    ("oip-unseen-category", f"/v2/models/{MODEL_NAME}/infer",
     json.dumps(oip_request([with_changes(contract_type="Weekly")])), 422, "row 0: Found unknown categories ['Weekly']"),
    ("oip-string-for-number", f"/v2/models/{MODEL_NAME}/infer",
     json.dumps(oip_request([with_changes(tenure="12")])), 400, "row 0, feature 'tenure'"),
    ("invocations-missing-column", "/invocations",
     json.dumps({"dataframe_records": [{k: v for k, v in EXAMPLE.items() if k != "tenure"}]}), 400, "feature 'tenure'"),
    ("invocations-no-format", "/invocations", json.dumps({"rows": [EXAMPLE]}), 400, "dataframe_split"),
    ("oip-oversized-body", f"/v2/models/{MODEL_NAME}/infer", b"{" + b" " * (1 << 20) + b"}", 413, "bytes"),
]


@pytest.mark.parametrize(("path", "body", "status", "message"), [case[1:] for case in BAD_INPUTS],
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_gets_a_4xx_naming_the_problem_and_the_server_keeps_serving(
    champion_server, path, body, status, message
):
    response = requests.post(
        f"{champion_server.url}{path}", data=body, headers={"Content-Type": "application/json"}, timeout=30
    )

    assert response.status_code == status, response.text
    assert message.lower() in response.text.lower()
    assert response.headers["X-Model-Variant"] == "champion"
    healthy = requests.post(f"{champion_server.url}/predict", json={"instances": [EXAMPLE]}, timeout=10)
    assert healthy.status_code == 200


def test_metrics_count_predictions_and_errors_with_the_variant_label(champion_server, registry):
    labels = {"model_name": MODEL_NAME, "model_version": registry.champion, "variant": "champion"}
    before = {
        "predictions": metric_value(champion_server.url, "model_predictions_total", **labels),
        "invalid": metric_value(champion_server.url, "model_prediction_errors_total", **labels,
                                error_type="invalid_input"),
        "latency": metric_value(champion_server.url, "model_prediction_latency_seconds_count", **labels),
        "size": metric_value(champion_server.url, "model_input_size_bytes_count", **labels),
    }

    for _ in range(3):
        assert requests.post(f"{champion_server.url}/predict", json={"instances": [EXAMPLE]}, timeout=10).ok
    requests.post(f"{champion_server.url}/predict", json={"instances": []}, timeout=10)
    requests.post(f"{champion_server.url}/predict_batch", json={"instances": [EXAMPLE]}, timeout=10)

    assert metric_value(champion_server.url, "model_predictions_total", **labels) == before["predictions"] + 5
    assert metric_value(champion_server.url, "model_prediction_errors_total", **labels,
                        error_type="invalid_input") == before["invalid"] + 1
    assert metric_value(champion_server.url, "model_prediction_latency_seconds_count", **labels) == before["latency"] + 5
    assert metric_value(champion_server.url, "model_input_size_bytes_count", **labels) == before["size"] + 5
    text = requests.get(f"{champion_server.url}/metrics", timeout=10).text
    assert re.search(r'^model_active_requests\{[^}]*variant="champion"[^}]*\} 0\.0$', text, re.MULTILINE)
    for error_type in ("model_error", "unavailable"):
        assert re.search(
            rf'^model_prediction_errors_total\{{[^}}]*error_type="{error_type}"[^}}]*variant="champion"[^}}]*\}} 0\.0$',
            text, re.MULTILINE,
        ), f"{error_type} should be exported as 0 before any such error"


def test_faulty_challenger_fails_part_of_the_traffic_with_5xx_and_counts_model_errors(
    faulty_challenger_server, champion_server, registry
):
    labels = {"model_name": MODEL_NAME, "model_version": registry.faulty_challenger, "variant": "challenger"}
    before = metric_value(faulty_challenger_server.url, "model_prediction_errors_total", **labels, error_type="model_error")
    rows = sample_instances(200, seed=9)

    statuses = [
        requests.post(f"{faulty_challenger_server.url}/predict", json={"instances": [row]}, timeout=10).status_code
        for row in rows
    ]
    champion_statuses = {
        requests.post(f"{champion_server.url}/predict", json={"instances": [row]}, timeout=10).status_code
        for row in rows
    }

    failed = statuses.count(500)
    assert set(statuses) <= {200, 500}
    assert 0.03 <= failed / len(rows) <= 0.15, f"{failed} of {len(rows)} failed"
    assert champion_statuses == {200}
    after = metric_value(faulty_challenger_server.url, "model_prediction_errors_total", **labels, error_type="model_error")
    assert after - before == failed
    # The failures are decided by row content: the same rows fail again.
    first_failing = rows[statuses.index(500)]
    again = requests.post(f"{faulty_challenger_server.url}/predict", json={"instances": [first_failing]}, timeout=10)
    assert again.status_code == 500 and "failed" in again.json()["error"]
    assert again.headers["X-Model-Variant"] == "challenger"


def test_serve_cli_exits_2_with_a_clear_message_when_the_model_uri_names_nothing(registry):
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--port", "0", "--model-uri", f"models:/{MODEL_NAME}@missing"],
        cwd=REPO_ROOT, env=registry.env(), capture_output=True, text=True, timeout=120,
    )

    assert result.returncode == 2
    assert f"cannot resolve models:/{MODEL_NAME}@missing" in result.stderr


def test_a_worker_that_cannot_load_the_model_stops_the_server_non_zero(registry, tmp_path):
    """What the container does: `bentoml serve` directly, no respawning workers (BENTOML_CONTAINERIZED)."""
    from service.__main__ import free_port, serve_command

    log_path = tmp_path / "broken.log"
    env = {**registry.env(), "MODEL_URI": f"models:/{MODEL_NAME}@missing", "BENTOML_CONTAINERIZED": "true",
           "BENTOML_HOME": str(tmp_path / "bentoml")}
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            serve_command("127.0.0.1", free_port()), cwd=REPO_ROOT, env=env, stdout=log_file,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        returncode = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    assert returncode != 0
    assert f"mlserve: FATAL: cannot resolve models:/{MODEL_NAME}@missing" in log_path.read_text()


def test_serve_cli_rejects_an_unknown_variant():
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--variant", "canary"], cwd=REPO_ROOT, capture_output=True,
        text=True, timeout=60,
    )

    assert result.returncode == 2
    assert "canary" in result.stderr


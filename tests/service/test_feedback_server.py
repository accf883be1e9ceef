"""Prediction ids and `/feedback` against real servers: ids from every protocol, feedback at another variant's
server, per-row refusals, and the quality counters that result."""

from __future__ import annotations

import base64
import json
import re

import pytest
import requests

from service.prediction_ids import KEY_ENV
from service.train import MODEL_NAME, sample_instances
from tests.service.conftest import start_server, stop_server

KEY = {KEY_ENV: "feedback-test-key-" + "z" * 40}


@pytest.fixture(scope="module")
def signed_pair(registry, tmp_path_factory):
    """Champion and healthy challenger sharing one signing key, as the stack's Secret makes them."""
    logs = tmp_path_factory.mktemp("feedback-logs")
    champion = start_server(registry, logs / "champion.log", "--variant", "champion", env=KEY)
    try:
        challenger = start_server(
            registry, logs / "challenger.log", "--variant", "challenger",
            "--model-uri", f"models:/{MODEL_NAME}/{registry.healthy_challenger}", env=KEY,
        )
    except Exception:
        stop_server(champion)
        raise
    yield champion, challenger
    stop_server(challenger)
    stop_server(champion)


def counter(server, name: str, **labels) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{key}="{value}"' in match.group(1) for key, value in labels.items()):
            total += float(match.group(2))
    return total


def test_every_protocol_returns_one_signed_id_per_row(signed_pair):
    _, challenger = signed_pair
    rows = sample_instances(3, seed=4)
    predicted = requests.post(f"{challenger.url}/predict", json={"instances": rows}, timeout=30).json()
    assert len(predicted["prediction_ids"]) == 3 and len(set(predicted["prediction_ids"])) == 3
    payload = predicted["prediction_ids"][0].split(".")[1]
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert body[:3] == [MODEL_NAME, predicted["model_version"], "challenger"]
    invoked = requests.post(f"{challenger.url}/invocations", json={"dataframe_records": rows}, timeout=30).json()
    assert len(invoked["prediction_ids"]) == 3
    columns = {name: [row[name] for row in rows] for name in rows[0]}
    inputs = [{"name": name, "shape": [3], "datatype": "FP64" if isinstance(values[0], float) else "BYTES",
               "data": values} for name, values in columns.items()]
    inferred = requests.post(f"{challenger.url}/v2/models/{MODEL_NAME}/infer", json={"inputs": inputs}, timeout=30)
    assert inferred.status_code == 200, inferred.text
    assert len(inferred.json()["parameters"]["prediction_ids"]) == 3


def test_feedback_at_the_champion_counts_for_the_challenger_and_refuses_bad_rows(signed_pair):
    champion, challenger = signed_pair
    predicted = requests.post(f"{challenger.url}/predict", json={"instances": sample_instances(4, seed=9)},
                              timeout=30).json()
    ids, version = predicted["prediction_ids"], predicted["model_version"]
    labels = {"variant": "challenger", "model_version": version}
    before = counter(champion, "model_feedback_total", **labels)
    forged = ids[3][:-3] + ("AAA" if not ids[3].endswith("AAA") else "BBB")
    rows = [
        {"prediction_id": ids[0], "truth": 1},
        {"prediction_id": ids[1], "truth": 0},
        {"prediction_id": ids[0], "truth": 0},
        {"prediction_id": ids[2], "truth": "churned"},
        {"prediction_id": forged, "truth": 1},
        {"prediction_id": "not-a-token", "truth": 1},
    ]
    answer = requests.post(f"{champion.url}/feedback", json=rows, timeout=30)
    assert answer.status_code == 200
    assert [result["status"] for result in answer.json()["results"]] == [200, 200, 409, 422, 403, 400]
    assert counter(champion, "model_feedback_total", **labels) == before + 2
    assert counter(champion, "model_feedback_rejected_total", reason="forged") >= 1
    # Feedback is not a prediction: the champion's prediction count is untouched by it.
    assert counter(champion, "model_predictions_total", variant="challenger") == 0


def test_without_a_key_there_are_no_ids_and_feedback_is_off(champion_server):
    predicted = requests.post(f"{champion_server.url}/predict", json={"instances": sample_instances(1)}, timeout=30)
    assert "prediction_ids" not in predicted.json()
    refused = requests.post(f"{champion_server.url}/feedback", json=[{"prediction_id": "x", "truth": 1}], timeout=30)
    assert refused.status_code == 503 and KEY_ENV in refused.json()["error"]

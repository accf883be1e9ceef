"""`/feedback` row by row, without a server: verification, duplicates, truth checks and the counters."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry, Counter

from service.feedback import handle_feedback
from service.prediction_ids import PredictionIdSigner
from service.prediction_ids import RowPrediction as Prediction
from service.quality import QualityMetrics, score

NOW = 1_800_000_000
SIGNER = PredictionIdSigner(b"k" * 32, max_age_seconds=86400)
CHALLENGER = {"model_name": "churn", "model_version": "2", "variant": "challenger"}
REPLICA = {"model_name": "churn", "model_version": "1", "variant": "champion"}


class _Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()

    def Counter(self, **kwargs):  # noqa: N802
        return Counter(registry=self.registry, **kwargs)


@pytest.fixture
def metrics():
    backend = _Metrics()
    return backend, QualityMetrics(backend, list(REPLICA))


def token(prediction=Prediction(probabilities=(0.9,)), issued_at=NOW, signer=SIGNER):
    return signer.issue(CHALLENGER, prediction, issued_at=issued_at)


def post(metrics, rows, signer=SIGNER, max_rows=100):
    body = rows if isinstance(rows, bytes) else json.dumps(rows).encode()
    return handle_feedback(body, signer, metrics[1], REPLICA, max_rows, now=NOW + 10)


def test_good_rows_count_for_the_variant_that_predicted(metrics):
    response = post(metrics, [{"prediction_id": token(), "truth": 1},
                              {"prediction_id": token(Prediction(probabilities=(0.2,))), "truth": 1}])
    assert response.status == 200
    assert response.body["accepted"] == 2
    assert response.body["results"][0] == {"index": 0, "status": 200, "variant": "challenger", "model_version": "2"}
    registry = metrics[0].registry
    assert registry.get_sample_value("model_feedback_total", CHALLENGER) == 2
    assert registry.get_sample_value("model_feedback_correct_total", CHALLENGER) == 1


def test_each_bad_row_gets_its_own_status_and_the_good_ones_still_count(metrics):
    good = token()
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    rows = [
        {"prediction_id": good, "truth": 0},
        {"prediction_id": forged, "truth": 0},
        {"prediction_id": "nonsense", "truth": 0},
        {"prediction_id": token(issued_at=NOW - 2 * 86400), "truth": 0},
        {"prediction_id": token(signer=PredictionIdSigner(b"x" * 32)), "truth": 0},
        {"prediction_id": good, "truth": 1},
        {"prediction_id": token(), "truth": "yes"},
        {"truth": 1},
        {"prediction_id": token(), "truth": 1, "weight": 2},
    ]
    response = post(metrics, rows)
    assert response.status == 200
    got = [(result["status"], result.get("error")) for result in response.body["results"]]
    assert got == [(200, None), (403, "forged"), (400, "malformed"), (410, "expired"), (403, "wrong_key"),
                   (409, "duplicate"), (422, "bad_truth"), (400, "malformed"), (400, "malformed")]
    assert "repeats row 0" in response.body["results"][5]["message"]
    assert response.body["results"][1]["message"].startswith("row 1: ")
    registry = metrics[0].registry
    assert registry.get_sample_value("model_feedback_total", CHALLENGER) == 1
    assert registry.get_sample_value("model_feedback_rejected_total", {**REPLICA, "reason": "forged"}) == 1


@pytest.mark.parametrize(
    ("case", "body", "status", "words"),
    [
        ("not json", b"{nope", 400, "not JSON"),
        ("an object, not a list", {"prediction_id": "x", "truth": 1}, 400, "non-empty JSON list"),
        ("empty list", [], 400, "non-empty JSON list"),
        ("too many rows", [{"prediction_id": "x", "truth": 1}] * 101, 413, "at most 100"),
    ],
    ids=lambda value: value if isinstance(value, str) and " " in value else None,
)
def test_bad_bodies(metrics, case, body, status, words):
    response = post(metrics, body)
    assert response.status == status
    assert words in response.body["error"]


def test_all_rows_refused_alike_answers_their_status(metrics):
    assert post(metrics, [{"prediction_id": token(issued_at=0), "truth": 1}]).status == 410
    mixed = post(metrics, [{"prediction_id": token(issued_at=0), "truth": 1}, {"prediction_id": "x", "truth": 1}])
    assert mixed.status == 400


def test_without_a_key_feedback_is_off_and_says_how_to_turn_it_on(metrics):
    response = post(metrics, [{"prediction_id": token(), "truth": 1}], signer=None)
    assert response.status == 503
    assert "MLSERVE_PREDICTION_ID_KEY" in response.body["error"]


def test_row_predictions_keep_what_each_output_kind_can_be_judged_on():
    import numpy as np

    from service.feedback import row_predictions
    from service.predictor import CLASS_PROBABILITIES, POSITIVE_PROBABILITY, PREDICT, ModelIdentity
    from service.predictor import Prediction as Answer

    who = ModelIdentity("m", "1", "champion", "models:/m/1")
    probabilities = row_predictions(Answer(np.array([[0.2, 0.8]]), CLASS_PROBABILITIES, (np.int64(0), np.int64(1)), who),
                                    classifier=True)
    assert probabilities == [Prediction(probabilities=(0.2, 0.8), classes=(0, 1))]
    positive = row_predictions(Answer(np.array([0.9, 0.1]), POSITIVE_PROBABILITY, ("stay", "churn"), who), True)
    assert positive[0] == Prediction(probabilities=(0.9,), classes=("stay", "churn"))
    assert score(positive[0], "churn").correct and not score(positive[1], "churn").correct
    assert row_predictions(Answer(np.array([0.9]), POSITIVE_PROBABILITY, (0, 1), who), True)[0].classes is None
    assert row_predictions(Answer(np.array(["setosa"]), PREDICT, (), who), True) == [Prediction(label="setosa")]
    assert row_predictions(Answer(np.array([1]), PREDICT, (), who), True) == [Prediction(label=1)]
    assert row_predictions(Answer(np.array([151.5]), PREDICT, (), who), False) == [Prediction(value=151.5)]

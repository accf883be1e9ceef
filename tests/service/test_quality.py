"""Scoring feedback against predictions, and the per-variant counters it feeds."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter

from service.prediction_ids import RowPrediction as Prediction
from service.quality import FEEDBACK_METRICS, QualityMetrics, Score, TruthError, score

BINARY = Prediction(probabilities=(0.8,))
IRIS = Prediction(probabilities=(0.1, 0.7, 0.2), classes=("setosa", "versicolor", "virginica"))


@pytest.mark.parametrize(
    ("case", "prediction", "truth", "expected"),
    [
        ("binary, right", BINARY, 1, Score(correct=True, log_loss=-math.log(0.8), brier=0.04)),
        ("binary, wrong", BINARY, 0, Score(correct=False, log_loss=-math.log(0.2), brier=0.64)),
        ("binary truth as boolean", BINARY, True, Score(correct=True, log_loss=-math.log(0.8), brier=0.04)),
        ("binary truth as 1.0", BINARY, 1.0, Score(correct=True, log_loss=-math.log(0.8), brier=0.04)),
        ("multi-class, right", IRIS, "versicolor",
         Score(correct=True, log_loss=-math.log(0.7), brier=0.01 + 0.09 + 0.04)),
        ("multi-class, wrong", IRIS, "setosa", Score(correct=False, log_loss=-math.log(0.1), brier=0.81 + 0.49 + 0.04)),
        ("probability 0 on the truth is clipped, not infinite", Prediction(probabilities=(1.0,)), 0,
         Score(correct=False, log_loss=-math.log(1e-15), brier=1.0)),
        ("label only, right", Prediction(label="yes"), "yes", Score(correct=True)),
        ("label only, wrong", Prediction(label=1), 0, Score(correct=False)),
        ("regression", Prediction(value=10.0), 13.5, Score(absolute_error=3.5, squared_error=12.25)),
        ("regression over-estimate", Prediction(value=10.0), 8, Score(absolute_error=2.0, squared_error=4.0)),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_score(case, prediction, truth, expected):
    got = score(prediction, truth)
    for field in ("correct", "log_loss", "brier", "absolute_error", "squared_error"):
        want = getattr(expected, field)
        assert getattr(got, field) == (pytest.approx(want) if isinstance(want, float) else want), field


@pytest.mark.parametrize(
    ("prediction", "truth", "message"),
    [
        (Prediction(value=1.0), "high", "must be a finite number"),
        (Prediction(value=1.0), float("nan"), "must be a finite number"),
        (Prediction(value=1.0), True, "must be a finite number"),
        (IRIS, "daisy", "not one of the model's classes ['setosa', 'versicolor', 'virginica']"),
        (BINARY, 2, "not one of the model's classes [0, 1]"),
        (BINARY, "1", "not one of the model's classes"),
        (BINARY, None, "must be a class label"),
        (Prediction(label="a"), ["a"], "must be a class label"),
    ],
)
def test_truth_that_cannot_be_compared_is_named(prediction, truth, message):
    with pytest.raises(TruthError, match=message.replace("[", r"\[").replace("]", r"\]")):
        score(prediction, truth)


class _Metrics:
    """prometheus_client's Counter on a private registry, standing in for bentoml.metrics."""

    def __init__(self):
        self.registry = CollectorRegistry()

    def Counter(self, **kwargs):  # noqa: N802 (mirrors the metrics module's API)
        return Counter(registry=self.registry, **kwargs)


def test_sums_per_variant_and_series_start_at_zero():
    metrics = _Metrics()
    quality = QualityMetrics(metrics, ["model_name", "model_version", "variant"])
    champion = {"model_name": "m", "model_version": "1", "variant": "champion"}
    challenger = {"model_name": "m", "model_version": "2", "variant": "challenger"}
    quality.start(champion)
    quality.start(challenger)
    quality.record(challenger, score(BINARY, 1))
    quality.record(challenger, score(BINARY, 0))
    quality.reject(champion, "forged")

    def value(field, labels):
        return metrics.registry.get_sample_value(FEEDBACK_METRICS[field], labels)

    assert value("count", champion) == 0
    assert value("count", challenger) == 2
    assert value("correct", challenger) == 1
    assert value("log_loss", challenger) == pytest.approx(-math.log(0.8) - math.log(0.2))
    assert value("brier_squared", challenger) == pytest.approx(0.04**2 + 0.64**2)
    assert value("absolute_error", challenger) == 0
    assert metrics.registry.get_sample_value("model_feedback_rejected_total", {**champion, "reason": "forged"}) == 1

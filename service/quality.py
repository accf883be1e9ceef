"""Quality of a prediction once its ground truth is known, and the per-variant sums Prometheus keeps.

`score(prediction, truth)` compares one row's prediction (from its verified `prediction_id`) with the true
answer: for classifiers whether it was correct, its log loss and its Brier score (when the prediction holds
probabilities); for regressors the absolute and squared error. `QualityMetrics.record` adds a score to
counters labelled like every other model_* series (`model_name`, `model_version`, `variant`, taken from the
token, so feedback that reaches a champion replica for a challenger prediction still counts for the
challenger). Each loss is kept with the sum of its squares too: the rollout's sequential test
(`rollout.analysis`) needs each variant's mean *and* variance.

Conventions: log loss is natural-log, probabilities clipped to [1e-15, 1]; Brier is (p - y)^2 for a
binary probability and the sum over classes of (p_k - y_k)^2 for several classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from service.prediction_ids import RowPrediction

PROBABILITY_FLOOR = 1e-15
# A single probability is P(positive class) of a binary classifier with classes 0 and 1.
BINARY_CLASSES = (0, 1)


class TruthError(ValueError):
    """The truth given cannot be compared with the prediction; the message says what would be accepted."""


@dataclass(frozen=True)
class Score:
    """One row's quality. Classifier fields are None for regressors and vice versa."""

    correct: bool | None = None
    log_loss: float | None = None
    brier: float | None = None
    absolute_error: float | None = None
    squared_error: float | None = None


def _class_key(value: Any) -> Any:
    """Compare classes as a JSON client would mean them: 1, 1.0 and True name the same class; "1" does not."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def score(prediction: RowPrediction, truth: Any) -> Score:
    """Score one prediction against its truth; raises TruthError when the two cannot be compared."""
    if prediction.value is not None:
        if not _is_number(truth):
            raise TruthError(f"truth must be a finite number for a regression prediction (got {truth!r})")
        error = float(truth) - prediction.value
        return Score(absolute_error=abs(error), squared_error=error * error)
    if isinstance(truth, (dict, list)) or truth is None:
        raise TruthError(f"truth must be a class label (a string, number or boolean), got {truth!r}")
    if prediction.probabilities is None:
        return Score(correct=_class_key(truth) == _class_key(prediction.label))
    probabilities = prediction.probabilities
    if len(probabilities) == 1:
        probabilities = (1.0 - probabilities[0], probabilities[0])
        classes: tuple[Any, ...] = prediction.classes or BINARY_CLASSES
    else:
        classes = prediction.classes if prediction.classes is not None else tuple(range(len(probabilities)))
    keys = [_class_key(name) for name in classes]
    try:
        index = keys.index(_class_key(truth))
    except ValueError:
        raise TruthError(f"truth {truth!r} is not one of the model's classes {list(classes)}") from None
    predicted = max(range(len(probabilities)), key=probabilities.__getitem__)
    log_loss = -math.log(max(probabilities[index], PROBABILITY_FLOOR))
    if len(probabilities) == 2:
        brier = (probabilities[1] - (1.0 if index == 1 else 0.0)) ** 2
    else:
        brier = sum((p - (1.0 if k == index else 0.0)) ** 2 for k, p in enumerate(probabilities))
    return Score(correct=predicted == index, log_loss=log_loss, brier=brier)


# Counter names (prometheus_client adds nothing: each already ends in _total). The rollout's PromQL
# (`rollout.analysis.quality_queries`) reads the same names from `FEEDBACK_METRICS`.
FEEDBACK_METRICS = {
    "count": "model_feedback_total",
    "correct": "model_feedback_correct_total",
    "log_loss": "model_feedback_log_loss_total",
    "log_loss_squared": "model_feedback_log_loss_squared_total",
    "brier": "model_feedback_brier_total",
    "brier_squared": "model_feedback_brier_squared_total",
    "absolute_error": "model_feedback_absolute_error_total",
    "squared_error": "model_feedback_squared_error_total",
}
FEEDBACK_REJECTED_METRIC = "model_feedback_rejected_total"
# Quality metrics a rollout can judge (`rollout.quality.metric`), each as the per-row loss it compares (lower
# is better; the error rate stands for accuracy), by the FEEDBACK_METRICS fields of its sum and sum of squares.
QUALITY_METRICS = {
    "accuracy": ("correct", "correct"),
    "log_loss": ("log_loss", "log_loss_squared"),
    "brier": ("brier", "brier_squared"),
    "mae": ("absolute_error", "squared_error"),
}
_DOCUMENTATION = {
    "count": "Predictions whose ground truth arrived through /feedback, by the variant that made them",
    "correct": "Classifier predictions whose predicted class was the true one",
    "log_loss": "Sum of the log loss (natural log) of classifier predictions with probabilities",
    "log_loss_squared": "Sum of squared log losses (for the variance the rollout's sequential test needs)",
    "brier": "Sum of Brier scores of classifier predictions with probabilities",
    "brier_squared": "Sum of squared Brier scores (for the rollout's sequential test)",
    "absolute_error": "Sum of absolute errors of regression predictions",
    "squared_error": "Sum of squared errors of regression predictions (also the second moment of the absolute error)",
}


class QualityMetrics:
    """The feedback counters, created through a metrics module such as `bentoml.metrics` (multiprocess-safe).

    `metrics` is anything with prometheus_client's `Counter(name, documentation, labelnames)`;
    `labelnames` are the model_* labels (model_name, model_version, variant).
    """

    def __init__(self, metrics: Any, labelnames: list[str]):
        self.counters = {
            field: metrics.Counter(name=name, documentation=_DOCUMENTATION[field], labelnames=labelnames)
            for field, name in FEEDBACK_METRICS.items()
        }
        self.rejected = metrics.Counter(
            name=FEEDBACK_REJECTED_METRIC,
            documentation="Feedback rows refused, by reason (malformed, forged, wrong_key, expired, duplicate, "
            "bad_truth), labelled with the replica that refused them",
            labelnames=[*labelnames, "reason"],
        )

    def start(self, labels: dict[str, str]) -> None:
        """Create every series of a variant at 0, so "no feedback yet" reads as 0 rather than as missing."""
        for counter in self.counters.values():
            counter.labels(**labels)

    def record(self, labels: dict[str, str], row: Score) -> None:
        """Add one scored row to the variant's sums."""
        self.counters["count"].labels(**labels).inc()
        increments = {
            "correct": None if row.correct is None else float(row.correct),
            "log_loss": row.log_loss,
            "log_loss_squared": None if row.log_loss is None else row.log_loss**2,
            "brier": row.brier,
            "brier_squared": None if row.brier is None else row.brier**2,
            "absolute_error": row.absolute_error,
            "squared_error": row.squared_error,
        }
        for field, amount in increments.items():
            if amount is not None:
                self.counters[field].labels(**labels).inc(amount)

    def reject(self, labels: dict[str, str], reason: str) -> None:
        """Count one refused feedback row under `reason`."""
        self.rejected.labels(**labels, reason=reason).inc()

"""Prediction ids out, ground truth in: `row_predictions` and `POST /feedback`.

`row_predictions` turns one answer of the model (`service.predictor.Prediction`) into what each row's
`prediction_id` carries (class probabilities, a label or a value), so every protocol issues the same ids.

The body is a JSON list of ``{"prediction_id": "...", "truth": ...}``. Each row is verified and scored on
its own (`service.prediction_ids`, `service.quality`): good rows are recorded under the labels the token
carries, bad rows get their own 4xx status and message, and the response lists every row's result. The
HTTP status is 200 when at least one row was recorded (read `results` for the others), otherwise the rows'
common 4xx status (400 when they differ). With no database there is no memory across requests: a
prediction id sent twice in one request is refused, one sent again in a later request counts again (send
each truth once; the token's maximum age bounds how long a replay is possible).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.prediction_ids import RowPrediction
from service.prediction_ids import PredictionIdError, PredictionIdSigner, Rejection
from service.predictor import CLASS_PROBABILITIES, POSITIVE_PROBABILITY, Prediction, to_json_values
from service.quality import QualityMetrics, TruthError, score

# One HTTP status per way a row can be refused.
ROW_STATUS = {
    Rejection.MALFORMED: 400,
    Rejection.FORGED: 403,
    Rejection.WRONG_KEY: 403,
    Rejection.EXPIRED: 410,
    "duplicate": 409,
    "bad_truth": 422,
}


def _json_scalar(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def row_predictions(answer: Prediction, classifier: bool) -> list[RowPrediction]:
    """What each row's prediction_id holds: probabilities (with the classes), a class label, or a value.

    `classifier` says whether plain predictions are class labels (the model has classes) or values. Outputs
    that are neither a number nor a label per row (several output columns) are kept as the row's JSON value,
    judged by exact match.
    """
    classes = tuple(_json_scalar(name) for name in answer.classes)
    if answer.output == CLASS_PROBABILITIES:
        return [RowPrediction(probabilities=tuple(row), classes=classes)
                for row in np.asarray(answer.raw, dtype=float).tolist()]
    if answer.output == POSITIVE_PROBABILITY:
        # (0, 1), the usual binary classes, is the token's default: left out, the id stays short.
        named = None if classes in ((), (0, 1)) else classes
        return [RowPrediction(probabilities=(probability,), classes=named)
                for probability in np.asarray(answer.raw, dtype=float).ravel().tolist()]
    values = to_json_values(answer.raw)
    if isinstance(values, dict):  # a dict of output columns: rows are its columns' entries
        names = list(values)
        values = [dict(zip(names, row)) for row in zip(*(values[name] for name in names))]
    rows = []
    for value in values if isinstance(values, list) else [values]:
        if not classifier and isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append(RowPrediction(value=float(value)))
        else:
            rows.append(RowPrediction(label=value))
    return rows


@dataclass(frozen=True)
class FeedbackResponse:
    """The HTTP status and JSON body `/feedback` answers."""

    status: int
    body: dict[str, Any]


def _refused(status: int, message: str) -> FeedbackResponse:
    return FeedbackResponse(status, {"error": message})


def handle_feedback(
    raw_body: bytes,
    signer: PredictionIdSigner | None,
    metrics: QualityMetrics,
    replica_labels: dict[str, str],
    max_rows: int,
    now: float | None = None,
) -> FeedbackResponse:
    """Verify, score and record each feedback row; `replica_labels` label the refusals this replica counts."""
    if signer is None:
        return _refused(503, "feedback is off on this server: set MLSERVE_PREDICTION_ID_KEY (the stack fills it "
                             "from its Secret) so predictions carry ids that feedback can be verified against")
    try:
        rows = json.loads(raw_body or b"null")
    except (ValueError, UnicodeDecodeError) as err:
        return _refused(400, f"body is not JSON: {err}")
    if not isinstance(rows, list) or not rows:
        return _refused(400, 'body must be a non-empty JSON list of {"prediction_id": ..., "truth": ...}')
    if len(rows) > max_rows:
        return _refused(413, f"{len(rows)} feedback rows in one request; at most {max_rows} (MLSERVE_MAX_ROWS)")
    now = time.time() if now is None else now
    seen: dict[str, int] = {}
    results = []
    for index, row in enumerate(rows):
        result = _one_row(index, row, signer, metrics, seen, now)
        if result["status"] != 200:
            metrics.reject(replica_labels, result["error"])
        results.append(result)
    accepted = sum(result["status"] == 200 for result in results)
    if accepted:
        status = 200
    else:
        statuses = {result["status"] for result in results}
        status = statuses.pop() if len(statuses) == 1 else 400
    return FeedbackResponse(status, {"accepted": accepted, "rejected": len(results) - accepted, "results": results})


def _one_row(index: int, row: Any, signer: PredictionIdSigner, metrics: QualityMetrics, seen: dict[str, int],
             now: float) -> dict[str, Any]:
    def refused(reason: Any, message: str) -> dict[str, Any]:
        name = reason.value if isinstance(reason, Rejection) else reason
        return {"index": index, "status": ROW_STATUS[reason], "error": name, "message": f"row {index}: {message}"}

    if not isinstance(row, dict) or "prediction_id" not in row or "truth" not in row:
        return refused(Rejection.MALFORMED, 'each row must be an object {"prediction_id": ..., "truth": ...}')
    if unknown := sorted(set(row) - {"prediction_id", "truth"}):
        return refused(Rejection.MALFORMED, f"unknown field(s) {unknown}; a row has prediction_id and truth")
    token = row["prediction_id"]
    if isinstance(token, str) and token in seen:
        return refused("duplicate", f"prediction_id repeats row {seen[token]}; send each truth once")
    try:
        record = signer.verify(token, now=now)
    except PredictionIdError as err:
        return refused(err.reason, str(err))
    seen[token] = index
    try:
        row_score = score(record.prediction, row["truth"])
    except TruthError as err:
        return refused("bad_truth", str(err))
    metrics.record(record.labels, row_score)
    return {"index": index, "status": 200, "variant": record.variant, "model_version": record.model_version}

"""Prediction ids: round trip, forgery, a key from elsewhere, expiry, and what a bad key setting says."""

from __future__ import annotations

import base64
import json

import pytest

from service.prediction_ids import (
    KEY_ENV,
    MAX_AGE_ENV,
    PredictionIdError,
    PredictionIdSigner,
    Rejection,
    SigningKeyError,
    signer_from_env,
)
from service.prediction_ids import RowPrediction as Prediction

KEY = b"k" * 32
LABELS = {"model_name": "customer-churn-classifier", "model_version": "3", "variant": "challenger"}
NOW = 1_800_000_000


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "prediction",
    [
        Prediction(probabilities=(0.734512,)),
        Prediction(probabilities=(0.1, 0.7, 0.2), classes=("setosa", "versicolor", "virginica")),
        Prediction(label="virginica"),
        Prediction(label=1),
        Prediction(value=151.25),
    ],
    ids=["binary probability", "class probabilities", "string label", "integer label", "regression value"],
)
def test_round_trip_keeps_who_what_and_when(prediction):
    signer = PredictionIdSigner(KEY)
    token = signer.issue(LABELS, prediction, issued_at=NOW)
    record = signer.verify(token, now=NOW + 60)
    assert record.labels == LABELS
    assert record.issued_at == NOW
    assert record.prediction == prediction


def test_token_is_compact_and_url_safe():
    token = PredictionIdSigner(KEY).issue(LABELS, Prediction(probabilities=(0.7345123456,)), issued_at=NOW)
    assert len(token) < 160
    assert all(ch.isalnum() or ch in "-_." for ch in token)


def test_identical_predictions_in_the_same_second_get_distinct_ids():
    signer = PredictionIdSigner(KEY)
    assert signer.issue(LABELS, Prediction(value=1.0), issued_at=NOW) != signer.issue(LABELS, Prediction(value=1.0), issued_at=NOW)


def test_any_replica_with_the_same_key_verifies():
    token = PredictionIdSigner(KEY).issue(LABELS, Prediction(value=1.0), issued_at=NOW)
    assert PredictionIdSigner(bytes(KEY)).verify(token, now=NOW).variant == "challenger"


def _tamper(token: str, edit) -> str:
    prefix, payload, signature = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    edit(body)
    return f"{prefix}.{_b64(json.dumps(body, separators=(',', ':')).encode())}.{signature}"


@pytest.mark.parametrize(
    ("case", "edit"),
    [
        ("variant swapped to blame the champion", lambda body: body.__setitem__(2, "champion")),
        ("prediction edited", lambda body: body.__setitem__(6, {"p": [0.01]})),
        ("issue time moved forward", lambda body: body.__setitem__(3, body[3] + 86400)),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_edited_token_is_forged(case, edit):
    signer = PredictionIdSigner(KEY)
    token = _tamper(signer.issue(LABELS, Prediction(probabilities=(0.9,)), issued_at=NOW), edit)
    with pytest.raises(PredictionIdError) as caught:
        signer.verify(token, now=NOW)
    assert caught.value.reason is Rejection.FORGED
    assert "altered" in str(caught.value)


def test_signature_from_another_key_pretending_to_be_ours_is_forged():
    ours, theirs = PredictionIdSigner(KEY), PredictionIdSigner(b"x" * 32)
    stolen = theirs.issue(LABELS, Prediction(value=2.0), issued_at=NOW)
    # An attacker copies our public key id into their payload and signs it with their key.
    forged = _tamper(stolen, lambda body: body.__setitem__(4, ours.key_id))
    prefix, payload, _ = forged.split(".")
    resigned = f"{prefix}.{payload}.{theirs.issue(LABELS, Prediction(value=2.0), issued_at=NOW).split('.')[2]}"
    for token in (forged, resigned):
        with pytest.raises(PredictionIdError) as caught:
            ours.verify(token, now=NOW)
        assert caught.value.reason is Rejection.FORGED


def test_token_from_another_key_says_so():
    token = PredictionIdSigner(b"x" * 32).issue(LABELS, Prediction(value=2.0), issued_at=NOW)
    with pytest.raises(PredictionIdError) as caught:
        PredictionIdSigner(KEY).verify(token, now=NOW)
    assert caught.value.reason is Rejection.WRONG_KEY
    assert "another deployment" in str(caught.value)


@pytest.mark.parametrize(
    "token",
    [None, 42, "", "p1", "p1.abc", "p2.e30.e30", "p1.!!!.AAAA", "p1.bm90IGpzb24.AAAA", "p1." + "A" * 5000 + ".A",
     "p1." + _b64(b'{"a":1}') + ".AAAA"],
    ids=["null", "number", "empty", "prefix only", "two parts", "other version", "not base64", "not json",
         "too long", "not a record"],
)
def test_malformed_tokens(token):
    with pytest.raises(PredictionIdError) as caught:
        PredictionIdSigner(KEY).verify(token, now=NOW)
    assert caught.value.reason is Rejection.MALFORMED


@pytest.mark.parametrize(("age_seconds", "accepted"), [(0, True), (3600, True), (7200, True), (7201, False)])
def test_expiry_is_the_configured_maximum_age(age_seconds, accepted):
    signer = PredictionIdSigner(KEY, max_age_seconds=7200)
    token = signer.issue(LABELS, Prediction(label="yes"), issued_at=NOW)
    if accepted:
        assert signer.verify(token, now=NOW + age_seconds).variant == "challenger"
    else:
        with pytest.raises(PredictionIdError) as caught:
            signer.verify(token, now=NOW + age_seconds)
        assert caught.value.reason is Rejection.EXPIRED
        assert MAX_AGE_ENV in str(caught.value)


def test_signer_from_env():
    assert signer_from_env({}) is None
    signer = signer_from_env({KEY_ENV: "s" * 40, MAX_AGE_ENV: "120"})
    assert signer.max_age_seconds == 120
    with pytest.raises(SigningKeyError, match=f"{KEY_ENV} must hold at least 32 bytes"):
        signer_from_env({KEY_ENV: "short"})
    for age in ("soon", "0", "-5", "nan"):
        with pytest.raises(SigningKeyError, match=MAX_AGE_ENV):
            signer_from_env({KEY_ENV: "s" * 40, MAX_AGE_ENV: age})

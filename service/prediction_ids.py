"""Signed prediction ids: a prediction that can be judged later, with no database.

Every prediction row gets a `prediction_id`: a compact token holding who predicted (model name, version,
variant), what it predicted, and when, signed with HMAC-SHA256 under a key every replica of every variant
shares (a Kubernetes Secret, in the environment as `MLSERVE_PREDICTION_ID_KEY`). Ground truth can then
arrive days later at any replica (`POST /feedback`), which trusts nothing but the signature: a forged or
edited token cannot poison the quality metrics.

Token: ``p1.<payload>.<signature>``, both parts base64url without padding, signed and checked by `itsdangerous`
(its `Signer`: a key derived from ours with a salt, HMAC-SHA256 truncated to 128 bits, a constant-time compare).
The issue time lives in the signed payload rather than in itsdangerous' own timestamp part, so a verified token
says when it was issued and the maximum age is checked against a clock the caller can pass. The payload is a JSON array
``[model_name, model_version, variant, issued_at_epoch_seconds, key_id, nonce, prediction]``; `key_id` is the
first 8 hex digits of SHA-256 of the key, so a token signed under another key (a rotated Secret, another stack)
says so instead of reading as forged; `nonce` (48 random bits) makes two identical predictions in the same second
two different ids, so feedback for each is not mistaken for a duplicate. `prediction` is one of ``{"p": [probabilities], "c": [classes]}`` (a classifier's
class probabilities; a single probability is that of the positive class, the second of ``c``, by default
``[0, 1]``), ``{"y": label}`` (a
classifier that answers labels only) or ``{"v": number}`` (a regressor).

Pure: no BentoML, no I/O beyond reading the environment in `signer_from_env`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

from itsdangerous import BadData, BadSignature, Signer
from itsdangerous.encoding import base64_decode, base64_encode
from itsdangerous.signer import HMACAlgorithm

KEY_ENV = "MLSERVE_PREDICTION_ID_KEY"
MAX_AGE_ENV = "MLSERVE_FEEDBACK_MAX_AGE_SECONDS"
DEFAULT_MAX_AGE_SECONDS = 30 * 86400
MIN_KEY_BYTES = 32
TOKEN_PREFIX = "p1"
# Probabilities are rounded in the token: 6 significant digits keep log loss exact to ~1e-6 and the token short.
PROBABILITY_DIGITS = 6
# Tokens longer than this are not ours (a prediction of thousands of classes would exceed it too).
MAX_TOKEN_CHARS = 4096
# itsdangerous derives the signing key from ours and this salt, so the key signs nothing else the same way.
SIGNING_SALT = "mlserve.prediction-id"
SIGNATURE_BYTES = 16


class Rejection(str, Enum):
    """Why a prediction id was refused; each is a client error (4xx) on `/feedback`."""

    MALFORMED = "malformed"
    FORGED = "forged"
    WRONG_KEY = "wrong_key"
    EXPIRED = "expired"


class PredictionIdError(ValueError):
    """A prediction id that does not verify; `reason` says which way, the message says what to do."""

    def __init__(self, reason: Rejection, message: str):
        super().__init__(message)
        self.reason = reason


class SigningKeyError(ValueError):
    """The signing key is missing or too weak; the message names the variable and what it needs."""


@dataclass(frozen=True)
class RowPrediction:
    """One row's prediction as a token carries it: class probabilities, a label, or a value."""

    probabilities: tuple[float, ...] | None = None
    classes: tuple[Any, ...] | None = None
    label: Any = None
    value: float | None = None

    def to_json(self) -> dict[str, Any]:
        if self.probabilities is not None:
            data: dict[str, Any] = {"p": [float(f"{p:.{PROBABILITY_DIGITS}g}") for p in self.probabilities]}
            if self.classes is not None:
                data["c"] = list(self.classes)
            return data
        if self.value is not None:
            return {"v": self.value}
        return {"y": self.label}

    @classmethod
    def from_json(cls, data: Any) -> RowPrediction:
        """Parse a token's prediction; raises ValueError naming what is wrong."""
        if not isinstance(data, dict) or len(data.keys() & {"p", "y", "v"}) != 1:
            raise ValueError("prediction must be an object with exactly one of p, y, v")
        if "p" in data:
            probabilities = data["p"]
            if not isinstance(probabilities, list) or not probabilities or not all(
                isinstance(p, (int, float)) and not isinstance(p, bool) and 0 <= p <= 1 for p in probabilities
            ):
                raise ValueError("p must be a non-empty list of probabilities in [0, 1]")
            classes = data.get("c")
            expected = 2 if len(probabilities) == 1 else len(probabilities)
            if classes is not None and (not isinstance(classes, list) or len(classes) != expected):
                raise ValueError("c must list one class per probability (two for a single positive-class probability)")
            return cls(probabilities=tuple(float(p) for p in probabilities),
                       classes=tuple(classes) if classes is not None else None)
        if "v" in data:
            value = data["v"]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError("v must be a finite number")
            return cls(value=float(value))
        return cls(label=data["y"])


@dataclass(frozen=True)
class PredictionRecord:
    """What a verified token says: who predicted what, and when (epoch seconds)."""

    model_name: str
    model_version: str
    variant: str
    issued_at: float
    prediction: RowPrediction

    @property
    def labels(self) -> dict[str, str]:
        """The model_* metric labels of the prediction (not of the replica that verifies it)."""
        return {"model_name": self.model_name, "model_version": self.model_version, "variant": self.variant}


def key_id(key: bytes) -> str:
    """Short public fingerprint of a key: tells "signed under another key" apart from "forged"."""
    return hashlib.sha256(key).hexdigest()[:8]


class _TruncatedHMAC(HMACAlgorithm):
    """HMAC-SHA256 cut to 128 bits: forging one still takes ~2^128 guesses, and the token stays short."""

    def get_signature(self, key: bytes, value: bytes) -> bytes:
        return super().get_signature(key, value)[:SIGNATURE_BYTES]


class PredictionIdSigner:
    """Issues and verifies prediction ids under one key, with a maximum age for feedback."""

    def __init__(self, key: bytes, max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS):
        if len(key) < MIN_KEY_BYTES:
            raise SigningKeyError(
                f"{KEY_ENV} must hold at least {MIN_KEY_BYTES} bytes (got {len(key)}); "
                f"generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        if not max_age_seconds > 0:
            raise SigningKeyError(f"{MAX_AGE_ENV} must be a positive number of seconds (got {max_age_seconds!r})")
        self._signer = Signer(key, salt=SIGNING_SALT, sep=".", key_derivation="hmac", digest_method=hashlib.sha256,
                              algorithm=_TruncatedHMAC(hashlib.sha256))
        self.key_id = key_id(key)
        self.max_age_seconds = max_age_seconds

    def issue(self, labels: dict[str, str], prediction: RowPrediction, issued_at: float | None = None) -> str:
        """A token for one row predicted by the model described by `labels` (model_name, model_version, variant)."""
        issued = int(time.time() if issued_at is None else issued_at)
        body = [labels["model_name"], labels["model_version"], labels["variant"], issued, self.key_id,
                base64_encode(secrets.token_bytes(6)).decode("ascii"), prediction.to_json()]
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return self._signer.sign(f"{TOKEN_PREFIX}.{base64_encode(payload).decode('ascii')}").decode("ascii")

    def verify(self, token: Any, now: float | None = None) -> PredictionRecord:
        """The record a token holds; raises PredictionIdError (malformed, wrong_key, forged, expired)."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            raise PredictionIdError(Rejection.MALFORMED, "prediction_id must be a string as returned by a prediction")
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
            raise PredictionIdError(
                Rejection.MALFORMED, f"prediction_id is not of the form {TOKEN_PREFIX}.<payload>.<signature>"
            )
        try:
            base64_decode(parts[2])
            body = json.loads(base64_decode(parts[1]).decode("utf-8"))
        except (BadData, ValueError, UnicodeDecodeError) as err:
            raise PredictionIdError(Rejection.MALFORMED, f"prediction_id does not decode: {err}") from err
        if not isinstance(body, list) or len(body) != 7:
            raise PredictionIdError(Rejection.MALFORMED, "prediction_id payload is not a prediction record")
        name, version, variant, issued_at, token_key_id, _nonce, prediction = body
        if token_key_id != self.key_id:
            # Checked before the signature: a token from another key fails both, and this is the useful reason.
            raise PredictionIdError(
                Rejection.WRONG_KEY,
                f"prediction_id was signed with key {token_key_id!r}, this server verifies key {self.key_id!r} "
                "(a rotated key, or a prediction from another deployment)",
            )
        try:
            self._signer.unsign(token)
        except BadSignature as err:
            raise PredictionIdError(
                Rejection.FORGED, "prediction_id signature does not match: the token was altered"
            ) from err
        try:
            if not all(isinstance(part, str) for part in (name, version, variant)):
                raise ValueError("model name, version and variant must be strings")
            if isinstance(issued_at, bool) or not isinstance(issued_at, int):
                raise ValueError("issue time must be integer epoch seconds")
            parsed = RowPrediction.from_json(prediction)
        except ValueError as err:
            # Signed by us yet unreadable: a token from an incompatible server version.
            raise PredictionIdError(Rejection.MALFORMED, f"prediction_id payload: {err}") from err
        age = (time.time() if now is None else now) - issued_at
        if age > self.max_age_seconds:
            raise PredictionIdError(
                Rejection.EXPIRED,
                f"prediction_id is {age / 86400:.1f} days old; feedback is accepted for "
                f"{self.max_age_seconds / 86400:g} days ({MAX_AGE_ENV})",
            )
        return PredictionRecord(name, version, variant, float(issued_at), parsed)


def signer_from_env(environ: dict[str, str] | None = None) -> PredictionIdSigner | None:
    """The signer configured by the environment, or None when no key is set (ids and feedback are off).

    Raises SigningKeyError for a key that is set but too short, or a bad maximum age.
    """
    environ = os.environ if environ is None else environ
    raw_key = environ.get(KEY_ENV, "")
    if not raw_key:
        return None
    raw_age = environ.get(MAX_AGE_ENV, "")
    try:
        max_age = float(raw_age) if raw_age else DEFAULT_MAX_AGE_SECONDS
    except ValueError as err:
        raise SigningKeyError(f"{MAX_AGE_ENV} must be a number of seconds (got {raw_age!r})") from err
    return PredictionIdSigner(raw_key.encode("utf-8"), max_age)

"""The model_* Prometheus metrics and the ASGI middleware that measures every prediction request with them.

Names and labels are what dashboards, alerts and the rollout analysis query: ``model_predictions_total``,
``model_prediction_latency_seconds``, ``model_prediction_errors_total`` (``error_type``), ``model_active_requests``,
``model_input_size_bytes``, each labelled ``model_name``, ``model_version``, ``variant`` and ``protocol`` (``rest`` for
every HTTP route, ``grpc`` for OIP v2 over gRPC; queries that sum over labels read both). They are registered with
``bentoml.metrics``, BentoML's multiprocess-aware registry, so every worker's samples are merged at ``/metrics``.
The middleware also enforces the body size limit and adds the ``X-Model-*`` headers to every prediction response.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
import time
import typing as t

import bentoml
from bentoml import get_current_service
from starlette.responses import JSONResponse

from service.drift import InputMetrics, OutputMetrics
from service.errors import route_error_body
from service.names import (
    ACTIVE_METRIC,
    ERROR_TYPES,
    ERRORS_METRIC,
    INPUT_SIZE_METRIC,
    LATENCY_METRIC,
    PREDICTIONS_METRIC,
)
from service.predictor import MODEL_HEADERS, ModelIdentity
from service.quality import QualityMetrics

# Paths whose traffic is measured by the model_* metrics; health and metrics scrapes are not predictions.
PREDICTION_PATHS = re.compile(r"^/(predict|predict_batch|invocations|v2/models/[^/]+(/versions/[^/]+)?/infer)$")

# bentoml.metrics registers in BentoML's multiprocess-aware registry, so every worker's samples are
# merged at /metrics. Labels are fixed so dashboards and the rollout analysis can compare variants.
MODEL_LABELS = ["model_name", "model_version", "variant", "protocol"]
REST, GRPC = "rest", "grpc"
PREDICTIONS = bentoml.metrics.Counter(
    name=PREDICTIONS_METRIC,
    documentation="Prediction requests handled, successful or not",
    labelnames=MODEL_LABELS,
)
LATENCY = bentoml.metrics.Histogram(
    name=LATENCY_METRIC,
    documentation="Time to answer a prediction request, including parsing and validation",
    labelnames=MODEL_LABELS,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
ERRORS = bentoml.metrics.Counter(
    name=ERRORS_METRIC,
    documentation=f"Prediction requests that failed, by error_type ({', '.join(ERROR_TYPES)})",
    labelnames=MODEL_LABELS + ["error_type"],
)
ACTIVE = bentoml.metrics.Gauge(
    name=ACTIVE_METRIC,
    documentation="Prediction requests in flight",
    labelnames=MODEL_LABELS,
    multiprocess_mode="livesum",
)
INPUT_SIZE = bentoml.metrics.Histogram(
    name=INPUT_SIZE_METRIC,
    documentation="Size of prediction request bodies",
    labelnames=MODEL_LABELS,
    buckets=(128, 512, 2048, 8192, 32768, 131072, 524288, 1 << 20, 4 << 20),
)

# Explanations (/explain, /v2/models/{name}/explain; service.explain_pool): never counted as predictions, so the
# rollout analysis and the prediction alerts see prediction traffic only.
EXPLAIN_REQUESTS = bentoml.metrics.Counter(
    name="model_explain_requests_total",
    documentation="Explanation requests handled, successful or not",
    labelnames=MODEL_LABELS,
)
EXPLAIN_LATENCY = bentoml.metrics.Histogram(
    name="model_explain_latency_seconds",
    documentation="Time to answer an explanation request, including waiting for an explainer",
    labelnames=MODEL_LABELS,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
EXPLAIN_ROWS = bentoml.metrics.Counter(
    name="model_explain_rows_total",
    documentation="Rows explained successfully",
    labelnames=MODEL_LABELS,
)
EXPLAIN_ERRORS = bentoml.metrics.Counter(
    name="model_explain_errors_total",
    documentation="Explanation requests that failed, by error_type (invalid_input, no_background, unavailable, "
    "timeout, model_error, disabled)",
    labelnames=MODEL_LABELS + ["error_type"],
)
EXPLAIN_ACTIVE = bentoml.metrics.Gauge(
    name="model_explain_active_requests",
    documentation="Explanation requests in flight, waiting or computing",
    labelnames=MODEL_LABELS,
    multiprocess_mode="livesum",
)
EXPLAIN_ERROR_TYPES = ("invalid_input", "no_background", "unavailable", "timeout", "model_error", "disabled")

# Ground truth from /feedback (service.feedback), per variant that made the prediction.
QUALITY = QualityMetrics(bentoml.metrics, MODEL_LABELS[:-1])  # ground truth belongs to no protocol
# What each variant predicted, per output (service.drift): the rollout's label-free gate compares them.
OUTPUTS = OutputMetrics(bentoml.metrics, MODEL_LABELS[:-1])
# Valid input rows in the reference profile's bins, and the profile's shares (service.drift, service.profiles).
INPUTS = InputMetrics(bentoml.metrics, MODEL_LABELS[:-1])


def start_series(identity: ModelIdentity, protocols: t.Iterable[str]) -> None:
    """Create every counter series at 0, so "no errors yet" reads as 0 rather than as missing data."""
    for protocol in protocols:
        labels = {**identity.labels, "protocol": protocol}
        PREDICTIONS.labels(**labels)
        for error_type in ERROR_TYPES:
            ERRORS.labels(**labels, error_type=error_type)


def start_explain_series(identity: ModelIdentity) -> None:
    """The model_explain_* counters at 0 for this model (explanations are REST only)."""
    labels = {**identity.labels, "protocol": REST}
    EXPLAIN_REQUESTS.labels(**labels)
    EXPLAIN_ROWS.labels(**labels)
    for error_type in EXPLAIN_ERROR_TYPES:
        EXPLAIN_ERRORS.labels(**labels, error_type=error_type)


@contextlib.contextmanager
def track_explain(identity: ModelIdentity) -> t.Iterator[dict[str, t.Any]]:
    """Measure one explanation request; the caller sets ``rows`` (explained) or ``error_type`` in the yielded dict."""
    labels = {**identity.labels, "protocol": REST}
    outcome: dict[str, t.Any] = {"rows": 0, "error_type": "model_error"}
    started = time.perf_counter()
    EXPLAIN_ACTIVE.labels(**labels).inc()
    try:
        yield outcome
    finally:
        EXPLAIN_ACTIVE.labels(**labels).dec()
        EXPLAIN_REQUESTS.labels(**labels).inc()
        EXPLAIN_LATENCY.labels(**labels).observe(time.perf_counter() - started)
        if outcome["error_type"] is None:
            EXPLAIN_ROWS.labels(**labels).inc(outcome["rows"])
        else:
            EXPLAIN_ERRORS.labels(**labels, error_type=outcome["error_type"]).inc()


@dataclasses.dataclass(frozen=True)
class _Series:
    """The labelled series one (model, protocol) writes on every request, looked up once (``labels()`` sorts and
    hashes the label values on every call, a measurable share of a request's CPU)."""

    predictions: t.Any
    latency: t.Any
    input_size: t.Any
    active: t.Any


@functools.lru_cache(maxsize=64)
def _series(labels: tuple[tuple[str, str], ...]) -> _Series:
    named = dict(labels)
    return _Series(PREDICTIONS.labels(**named), LATENCY.labels(**named), INPUT_SIZE.labels(**named),
                   ACTIVE.labels(**named))


def series(labels: dict[str, str]) -> _Series:
    """The model_* series of one label set (model name, version, variant, protocol)."""
    return _series(tuple(labels.items()))


def record(labels: dict[str, str], status: int, seconds: float, size_bytes: int) -> None:
    """Count one answered prediction request: its latency, its size, and its error type if it failed."""
    counted = series(labels)
    counted.predictions.inc()
    counted.latency.observe(seconds)
    counted.input_size.observe(size_bytes)
    if (error_type := error_type_for(status)) is not None:
        ERRORS.labels(**labels, error_type=error_type).inc()


@dataclasses.dataclass
class RequestOutcome:
    """Filled in while a request is handled; ``track`` reads its status when the request ends."""

    status: int = 500


@contextlib.contextmanager
def track(identity: ModelIdentity, protocol: str, size_bytes: int) -> t.Iterator[RequestOutcome]:
    """Measure one prediction request of ``protocol`` (gRPC calls; HTTP goes through the middleware below)."""
    labels = {**identity.labels, "protocol": protocol}
    outcome = RequestOutcome()
    started = time.perf_counter()
    active = series(labels).active
    active.inc()
    try:
        yield outcome
    finally:
        active.dec()
        record(labels, outcome.status, time.perf_counter() - started, size_bytes)


def error_type_for(status: int) -> str | None:
    """The error_type label for a response status, or None when the request succeeded."""
    if status < 400:
        return None
    if status == 413:
        return "payload_too_large"
    if status == 503:
        return "unavailable"
    return "invalid_input" if status < 500 else "model_error"


class PredictionTrafficMiddleware:
    """ASGI middleware for every prediction route: body size limit, model headers and the model_* metrics.

    Doing this around the routes (rather than inside each handler) measures every request the same way,
    including ones BentoML rejects before our code runs and batched ones whose handler sees many requests.
    """

    def __init__(self, app: t.Any, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: t.Callable, send: t.Callable) -> None:
        model = _current_identity()
        if scope["type"] != "http" or model is None or not PREDICTION_PATHS.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        labels = {**model.labels, "protocol": REST}
        started = time.perf_counter()
        status = 500

        async def send_with_headers(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                known = {name.lower().encode() for name in MODEL_HEADERS}
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in known]
                headers += [(k.lower().encode(), v.encode()) for k, v in model.headers.items()]
                message = {**message, "headers": headers}
            await send(message)

        active = series(labels).active
        active.inc()
        body_size = 0
        disconnected = False
        try:
            # Read the whole body first (bounded), so an oversized one is refused before any parsing.
            body, body_size, disconnected = await self._read_body(scope, receive)
            if body is None:
                if not disconnected:
                    response = JSONResponse(
                        route_error_body(scope.get("path", ""), f"request body exceeds the maximum of "
                                         f"{self.max_body_bytes} bytes (MLSERVE_MAX_BODY_BYTES)", 413),
                        status_code=413,
                    )
                    await response(scope, receive, send_with_headers)
                return
            await self.app(scope, _replay(body, receive), send_with_headers)
        finally:
            active.dec()
            # A client that left before finishing its request asked nothing of the model: not counted.
            if not disconnected:
                record(labels, status, time.perf_counter() - started, body_size)

    async def _read_body(self, scope: dict, receive: t.Callable) -> tuple[bytes | None, int, bool]:
        """(body, size, disconnected); body is None when it is over the limit or the client went away."""
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return None, int(declared), False
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None, size, True
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None, size, False
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), size, False


def count_refused(scope: dict, status: int) -> None:
    """Count a prediction request that admission control answered itself (415, 408, 503) like any other one."""
    identity = _current_identity()
    if identity is None:
        return
    _count_unhandled(identity, status)


def count_proxy_refused(identity: ModelIdentity, count: float) -> None:
    """Count ``count`` HTTP prediction requests the front proxy refused (service.front_proxy.RefusalCounter) as
    admission control's own refusals are counted."""
    _count_unhandled(identity, 503, count)


def _count_unhandled(identity: ModelIdentity, status: int, count: float = 1) -> None:
    """Count HTTP prediction requests answered ``status`` before any handler ran: requests, and errors by type;
    no latency, which the handlers' path alone measures. Admission control and the front proxy stand in front of
    the HTTP routes only."""
    labels = {**identity.labels, "protocol": REST}
    series(labels).predictions.inc(count)
    if (error_type := error_type_for(status)) is not None:
        ERRORS.labels(**labels, error_type=error_type).inc(count)


def _replay(body: bytes, receive: t.Callable) -> t.Callable:
    """An ASGI receive that yields an already-read body once, then defers to the real one."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _current_identity() -> ModelIdentity | None:
    try:
        instance = get_current_service()
    except Exception:  # no service instance in this process yet
        return None
    model = getattr(instance, "model", None)
    return model.identity if model is not None else None

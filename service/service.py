"""The model server: one BentoML 1.4 service that serves the registered MLflow model named by ``MODEL_URI``.

At import the model URI is pinned to one version and its signature read (``service.loading.resolve_model``), so the
API's input types and the OpenAPI document describe that model's columns; each worker then loads it in
``__init__``. Endpoints: ``POST /predict`` (``{"instances": [rows]}`` -> ``{"predictions", "model_name",
"model_version", "variant"}`` plus ``X-Model-*`` headers), ``POST /predict_batch`` (adaptive batching; a list of
predictions), ``POST /invocations`` (the MLflow scoring protocol, JSON or CSV; what ``mlflow models serve``
answers), the Open Inference Protocol v2 REST routes under ``/v2``, and BentoML's ``/livez``, ``/readyz``,
``/metrics``. Settings: ``service.settings``; the protocol-independent core: ``service.predictor``.
"""

from __future__ import annotations

import gc
from http import HTTPStatus
import logging
import os
import sys
import typing as t

import anyio.to_thread
import bentoml
import pydantic
from bentoml.exceptions import BentoMLException
from fastapi import FastAPI, Path, Request
from fastapi.responses import JSONResponse

from service import patches
from service.admission import AdmissionLimits, AdmissionMiddleware
from service.errors import InvalidInput, ModelFailure, ModelLoadError
from service.feedback import handle_feedback, row_predictions
from service.loading import ModelSource, load_model, missing_requirements, parse_model_uri, resolve_model
from service.metrics import ERROR_TYPES, ERRORS, PREDICTIONS, QUALITY, PredictionTrafficMiddleware, count_refused
from service.openapi import DocumentedErrorsMiddleware
from service.prediction_ids import KEY_ENV, SigningKeyError, signer_from_env
from service.predictor import PREDICT, Prediction, ServedModel
from service.protocols import invocation_rows, oip_infer_response, parse_json
from service.schema import InputSchema, row_type
from service.settings import DEMO_MODEL_NAME, REGISTER_DEMO_ENV, RESOLVED_MODEL_ENV, Settings

logger = logging.getLogger("mlserve.service")


def fatal(message: str, status: int = 3) -> t.NoReturn:
    """A server that cannot score must not look healthy: say why and stop the whole process tree."""
    print(f"mlserve: FATAL: {message}", file=sys.stderr, flush=True)
    logger.critical("%s", message)
    os._exit(status)


def warn(message: str) -> None:
    """A start-up warning, on stderr (what `service serve` shows) and in the log."""
    print(f"mlserve: WARNING: {message}", file=sys.stderr, flush=True)
    logger.warning("%s", message)


SETTINGS = Settings.from_env()
patches.apply()
# A server is always told its model (the CLI and the pods set MODEL_URI): pin it now, so the API's types and the
# OpenAPI document describe its columns. Without MODEL_URI (`bentoml build`, which imports this module) nothing is
# resolved; a worker then resolves the default model when it starts.
def resolve_at_start(settings: Settings) -> ModelSource:
    """The pinned model; under `python -m service serve`, the demo is registered first when it is asked for and the
    registry lacks it (a user's registry never receives models it did not ask for)."""
    try:
        return resolve_model(settings)
    except ModelLoadError:
        if not os.environ.get(REGISTER_DEMO_ENV) or parse_model_uri(settings.model_uri)[0] != DEMO_MODEL_NAME:
            raise
        from service.train import demo_models_registered, register_demo_models

        if demo_models_registered(settings.tracking_uri):
            raise
    print(f"mlserve: no {DEMO_MODEL_NAME} champion/challenger in {settings.tracking_uri}; registering the demo models",
          file=sys.stderr, flush=True)
    register_demo_models(settings.tracking_uri)
    return resolve_model(settings)


SOURCE: ModelSource | None = None
if os.environ.get("MODEL_URI"):
    first_to_resolve = RESOLVED_MODEL_ENV not in os.environ
    try:
        SOURCE = resolve_at_start(SETTINGS)
    except ModelLoadError as err:
        fatal(str(err), status=2)
    if first_to_resolve:
        print(f"mlserve: {SETTINGS.model_uri} is {SOURCE.name} version {SOURCE.version}", file=sys.stderr, flush=True)
SCHEMA = SOURCE.schema if SOURCE is not None else InputSchema()

# /predict validates rows itself (for errors naming row, column and value); the schema documents them.
_ROW = row_type(SCHEMA) if SCHEMA.columns else t.Any
_ROW_SCHEMA = pydantic.TypeAdapter(_ROW).json_schema() if SCHEMA.columns else {}
Instances = t.Annotated[list[t.Any], pydantic.WithJsonSchema(
    {"type": "array", "items": _ROW_SCHEMA, "minItems": 1, "maxItems": SETTINGS.max_rows}
)]
# /predict_batch rows of a column signature are validated per request, before BentoML merges them into a batch.
BatchInstances = t.Annotated[list[_ROW], pydantic.Field(min_length=1, max_length=SETTINGS.max_rows)]

IMAGE = bentoml.images.Image(python_version="3.11", lock_python_packages=False).python_packages(
    "mlflow==3.17.2",
    "scikit-learn==1.9.1",
    "scipy==1.17.1",
    "pandas==3.1.1",
    "numpy==2.4.6",
    "skops==0.16.0",
    "fastapi==0.165.0",
    "prometheus-client==0.26.0",
)

oip = FastAPI(title="Open Inference Protocol v2")
scoring = FastAPI(title="MLflow scoring protocol")
ModelName = t.Annotated[str, Path(description="the served model's registered name",
                                  json_schema_extra={"enum": [SOURCE.name]} if SOURCE is not None else None)]


def error_response(err: InvalidInput | ModelFailure) -> JSONResponse:
    """The JSON answer to a request that failed: 4xx naming the client's mistake, 500 for the model's."""
    if isinstance(err, InvalidInput):
        return JSONResponse(err.body(), status_code=err.status)
    return JSONResponse({"error": str(err)}, status_code=500)


@bentoml.service(
    name="model_server",
    image=IMAGE,
    workers=SETTINGS.workers,
    traffic={"timeout": 30},
    # BentoML's per-request access log halved throughput in bench/serving.py (the line is formatted in the worker
    # and copied again by the arbiter); off unless MLSERVE_ACCESS_LOG asks for it.
    logging={"access": {"enabled": SETTINGS.access_log}},
)
@bentoml.asgi_app(oip, path="/v2")
@bentoml.asgi_app(scoring, path="/")
class ModelServer:
    """Serves the registered model named by MODEL_URI through every protocol."""

    def __init__(self) -> None:
        try:
            self.source = SOURCE or resolve_model(SETTINGS)
            self.model: ServedModel = load_model(SETTINGS, self.source)
        except ModelLoadError as err:
            fatal(str(err))
        try:
            # Every replica of every variant shares the key (the stack's Secret), so feedback verifies anywhere.
            self.signer = signer_from_env()
        except SigningKeyError as err:
            fatal(str(err))
        # The model is loaded once and never freed: keep it out of the collector's generations.
        gc.freeze()
        identity = self.model.identity
        QUALITY.start(identity.labels)
        if self.signer is None:
            warn(f"{KEY_ENV} is not set: predictions carry no prediction_ids and /feedback is off")
        # Start every series at 0, so "no errors yet" reads as 0 rather than as missing data.
        PREDICTIONS.labels(**identity.labels)
        for error_type in ERROR_TYPES:
            ERRORS.labels(**identity.labels, error_type=error_type)
        if self.model.schema.kind == "none":
            warn(f"{identity.name} version {identity.version} was logged without a signature: requests are checked "
                 "only for their shape; log the model with a signature to have every column checked")
        if missing := missing_requirements(self.source):
            warn(f"{identity.name} version {identity.version} requires what this environment lacks: "
                 f"{'; '.join(missing)}")
        logger.info("serving %s version %s (%s) as %s through %s", identity.name, identity.version,
                    identity.source_uri, identity.variant, self.model.serving_path)

    def __is_ready__(self) -> bool:
        return getattr(self, "model", None) is not None

    def _prediction_ids(self, answer: Prediction) -> dict[str, list[str]]:
        """`{"prediction_ids": [...]}`, one signed id per row, or nothing when no signing key is set."""
        if self.signer is None:
            return {}
        labels = answer.identity.labels
        rows = row_predictions(answer, classifier=bool(self.model.classes))
        return {"prediction_ids": [self.signer.issue(labels, row) for row in rows]}

    async def _answer(self, call: t.Callable[[], Prediction]) -> Prediction | JSONResponse:
        """Run one prediction (natively on the event loop, through pyfunc in a thread); errors as responses."""
        try:
            if self.model.serving_path == "pyfunc":
                return await anyio.to_thread.run_sync(call)
            return call()
        except InvalidInput as err:
            return error_response(err)
        except ModelFailure as err:
            logger.exception("%s", err)
            return error_response(err)

    # The handlers are async on purpose: validating and scoring a request natively takes well under a
    # millisecond, less than handing the call to a worker thread and back, so they run on the event loop.
    @bentoml.api(route="/predict")
    async def predict(self, instances: Instances) -> dict[str, t.Any]:
        """Predictions for each row of ``instances``, with the model name, version and variant."""
        answer = await self._answer(lambda: self.model.predict_rows(instances))
        if isinstance(answer, JSONResponse):
            return answer
        identity = answer.identity
        return {"predictions": answer.values, **self._prediction_ids(answer), "model_name": identity.name,
                "model_version": identity.version, "variant": identity.variant}

    # max_latency_ms is also BentoML's shedding threshold: a queued request expected to wait longer is answered
    # 503. 50 ms shed requests at concurrency 64 on a busy 2-core machine; the dispatcher learns the real wait
    # from its own timings, so a higher ceiling adds no delay at low concurrency.
    @bentoml.api(route="/predict_batch", batchable=True, max_batch_size=512, max_latency_ms=250)
    async def predict_batch(self, instances: BatchInstances) -> list[t.Any]:
        """Predictions for typed rows; concurrent requests are merged into one batch adaptively.

        A row the model itself refuses (a category it never saw, say) fails the batch it was merged into:
        /predict scores each request on its own.
        """
        try:
            if _ROW is not t.Any:
                prediction = self.model.predict_input(self.model.validator.frame(instances))
            else:
                prediction = self.model.predict_rows(instances)
        except InvalidInput as err:
            raise BentoMLException(err.message, error_code=HTTPStatus(err.status)) from None
        return prediction.values

    @scoring.post("/invocations")
    async def invocations(self, request: Request) -> JSONResponse:
        """The MLflow scoring protocol: what ``mlflow models serve`` answers for the same body."""
        body = await request.body()
        try:
            rows = invocation_rows(body, request.headers.get("content-type", ""), self.model.schema)
        except InvalidInput as err:
            return error_response(err)
        answer = await self._answer(lambda: self.model.predict_rows(rows, output=PREDICT))
        if isinstance(answer, JSONResponse):
            return answer
        return JSONResponse({"predictions": answer.values, **self._prediction_ids(answer)})

    # Not in /docs.json: its per-row 4xx answers and its 503 without a key are described in service/README.md,
    # and the OpenAPI contract test (tests/service/test_openapi_contract.py) covers the prediction routes.
    @scoring.post("/feedback", include_in_schema=False)
    async def feedback(self, request: Request) -> JSONResponse:
        """Ground truth for earlier predictions: ``[{"prediction_id", "truth"}, ...]``, a result per row."""
        answer = handle_feedback(await request.body(), self.signer, QUALITY, self.model.identity.labels,
                                 SETTINGS.max_rows)
        return JSONResponse(answer.body, status_code=answer.status)

    @scoring.get("/ping")
    def ping(self) -> JSONResponse:
        """MLflow's health check: 200 once the model is loaded."""
        return JSONResponse({}, status_code=200 if self.__is_ready__() else 503)

    @oip.get("/health/live")
    def oip_live(self) -> dict[str, bool]:
        return {"live": True}

    @oip.get("/health/ready")
    def oip_ready(self) -> JSONResponse:
        ready = self.__is_ready__()
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    def _unknown(self, name: str) -> JSONResponse | None:
        if name == self.model.identity.name:
            return None
        return JSONResponse({"error": f"unknown model {name!r}; this server serves {self.model.identity.name!r}"},
                            status_code=404)

    @oip.get("/models/{name}")
    def oip_model_metadata(self, name: ModelName) -> JSONResponse:
        """OIP v2 model metadata, derived from the model's signature."""
        return self._unknown(name) or JSONResponse(self.model.oip_metadata())

    @oip.get("/models/{name}/ready")
    def oip_model_ready(self, name: ModelName) -> JSONResponse:
        return self._unknown(name) or JSONResponse({"name": name, "ready": True})

    @oip.post("/models/{name}/infer")
    async def oip_infer(self, name: ModelName, request: Request) -> JSONResponse:
        """OIP v2 inference: one tensor per column (or per input tensor) in, output tensors out."""
        if unknown := self._unknown(name):
            return unknown
        try:
            payload = parse_json(await request.body())
            if not isinstance(payload, dict):
                raise InvalidInput("an infer request is a JSON object with an 'inputs' list of tensors")
        except InvalidInput as err:
            return error_response(err)
        answer = await self._answer(lambda: self.model.predict_tensors(payload.get("inputs")))
        if isinstance(answer, JSONResponse):
            return answer
        body = oip_infer_response(answer, payload.get("id"))
        body["parameters"].update(self._prediction_ids(answer))
        return JSONResponse(body)


# Added first, so it is the outer one: it refuses, sheds and times out bodies before the traffic middleware reads them.
ModelServer.add_asgi_middleware(AdmissionMiddleware, limits=AdmissionLimits.from_env(), on_reject=count_refused)
ModelServer.add_asgi_middleware(PredictionTrafficMiddleware, max_body_bytes=SETTINGS.max_body_bytes)
ModelServer.add_asgi_middleware(DocumentedErrorsMiddleware)

"""The model server: one BentoML 1.4 service that serves the registered MLflow model named by ``MODEL_URI``.

Importing this module does nothing: ``build_model_server``, called once per process when BentoML asks for
``ModelServer``, reads the settings, pins the model URI to one version and reads its signature
(``service.loading.resolve_model``), so the API's input types and the OpenAPI document describe that model's columns;
each worker then loads it in ``__init__``. Endpoints: ``POST /predict`` (``{"instances": [rows]}`` -> ``{"predictions", "model_name",
"model_version", "variant"}`` plus ``X-Model-*`` headers), ``POST /predict_batch`` (the same rows, typed; the list of
predictions), ``POST /invocations`` (the MLflow scoring protocol, JSON or CSV; what ``mlflow models serve``
answers), the Open Inference Protocol v2 REST routes under ``/v2``, and BentoML's ``/livez``, ``/readyz``,
``/metrics``; with ``MLSERVE_GRPC_PORT`` set, each worker also serves the OIP v2 over gRPC on that port
(``service.grpc_server``), answering from the same methods as the ``/v2`` routes. Every prediction route checks its
request on the event loop and then awaits the worker's ``service.batching.ModelRunner``, which merges concurrent
requests into one call on the worker's model thread. Settings: ``service.settings``; the protocol-independent core:
``service.predictor``.
"""

import gc
from http import HTTPStatus
import logging
import os
import pathlib
import sys
import typing as t

import bentoml
import pydantic
from bentoml import get_current_service
from bentoml.exceptions import BentoMLException
from fastapi import FastAPI, Path, Request
from fastapi.responses import JSONResponse

from service import patches
from service.admission import AdmissionLimits, AdmissionMiddleware, Slots
from service.batching import BatchLimits, ModelRunner
from service.errors import InvalidInput, ModelFailure, ModelLoadError, mlflow_error_body
from service.explain import ExplainSettings
from service.explain_pool import ExplainAnswer, ExplainProtocol, explain_openapi
from service.feedback import handle_feedback, row_predictions
from service.front_proxy import RefusalCounter
from service.grpc_server import GrpcServer
from service.loading import ModelSource, load_model, missing_requirements, resolve_model
from service.metrics import (
    GRPC,
    INPUTS,
    OUTPUTS,
    QUALITY,
    REST,
    PredictionTrafficMiddleware,
    RequestOutcome,
    count_proxy_refused,
    count_refused,
    start_series,
    track,
)
from service.names import DEMO_MODEL_NAME
from service.openapi import DocumentedErrorsMiddleware
from service.prediction_ids import KEY_ENV, SigningKeyError, signer_from_env
from service.predictor import PREDICT, Prediction, ServedModel
from service.profiles import drift_observer
from service.protocols import invocation_answer, invocation_rows, oip_infer_response, parse_json
from service.schema import Checked, InputSchema, request_row_type
from service.settings import REGISTER_DEMO_ENV, RESOLVED_MODEL_ENV, Settings, parse_model_uri

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


# The image's packages: the pins of service/requirements.txt (the bento includes it; requirements.txt includes it too).
SERVER_REQUIREMENTS = pathlib.Path(__file__).with_name("requirements.txt")


def server_pins(path: pathlib.Path = SERVER_REQUIREMENTS) -> list[str]:
    """The requirement lines of `path`, without comments and blank lines, in file order."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


# Debian's HAProxy too: with serving.frontProxy the pod's `front-proxy` container runs it from this image.
IMAGE = (bentoml.images.Image(python_version="3.11", lock_python_packages=False)
         .system_packages("haproxy").python_packages(*server_pins()))


# BentoML records an OpenTelemetry span for every request even with tracing off (its sampler always records, for the
# trace ids in its logs: bentoml/_internal/utils/telemetry.py, ParentBasedTraceIdRatio), five of them per prediction,
# which cost more of a worker's CPU than the batched model call. No exporter is configured for them, so nothing reads
# them: the prediction routes and the probes are left out (OpenTelemetry's ExcludeList searches the full URL).
TRACING_EXCLUDED_URLS = [r"/(predict|predict_batch|invocations|livez|readyz|metrics)(\?|$)", r"/v2/"]


async def current_service() -> t.Any:
    """The service instance of this worker (``bentoml.get_current_service``), without a thread hop."""
    return get_current_service()


def error_response(err: InvalidInput | ModelFailure) -> JSONResponse:
    """The JSON answer to a request that failed: 4xx naming the client's mistake, 500 for the model's."""
    if isinstance(err, InvalidInput):
        return JSONResponse(err.body(), status_code=err.status)
    return JSONResponse({"error": str(err)}, status_code=500)


def explain_response(answer: ExplainAnswer) -> JSONResponse:
    return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)


def build_model_server() -> type:
    """Read the environment, apply the BentoML patches, pin the model and define the BentoML service serving it.

    Nothing of this happens when the module is imported: BentoML's entry point, ``service.service:ModelServer``
    (``bentoml serve``, ``bentoml build``), reaches it through the module's ``__getattr__`` below, once per process.
    A server that cannot serve (bad admission limits, a model that does not resolve) stops here with the reason.
    """
    SETTINGS = Settings.from_env()
    # The worker's prediction slots (serving.maxConcurrency, maxQueue, queueTimeoutSeconds), one set for its HTTP routes
    # and its gRPC server together: both score on this worker's one event loop.
    try:
        ADMISSION = Slots(AdmissionLimits.from_env())
    except ValueError as err:
        fatal(f"admission limits: {err}", status=2)
    try:
        BATCHING = BatchLimits.from_env()
    except ValueError as err:
        fatal(f"batching limits: {err}", status=2)
    try:
        EXPLAIN = ExplainSettings.from_env()
    except ValueError as err:
        fatal(f"explanation settings: {err}", status=2)
    patches.apply()
    # A server is always told its model (the CLI and the pods set MODEL_URI): pin it now, so the API's types and the
    # OpenAPI document describe its columns. Without MODEL_URI (`bentoml build`, which imports this module) nothing is
    # resolved; a worker then resolves the default model when it starts.
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
    _ROW = request_row_type(SCHEMA)
    _ROW_SCHEMA = pydantic.TypeAdapter(_ROW).json_schema()
    Instances = t.Annotated[list[t.Any], pydantic.WithJsonSchema(
        {"type": "array", "items": _ROW_SCHEMA, "minItems": 1, "maxItems": SETTINGS.max_rows}
    )]
    # /predict_batch's rows are typed, so BentoML checks them (and words its refusals) as it always has.
    BatchInstances = t.Annotated[list[_ROW], pydantic.Field(min_length=1, max_length=SETTINGS.max_rows)]

    oip = FastAPI(title="Open Inference Protocol v2")
    scoring = FastAPI(title="MLflow scoring protocol")
    for app in (oip, scoring):
        # BentoML hands each route its `self` through FastAPI's Depends(get_current_service)
        # (_bentoml_sdk/_internals.py, make_fastapi_class_views), a plain function, which FastAPI runs in a worker
        # thread on every request; the same lookup as a coroutine runs on the event loop instead.
        app.dependency_overrides[get_current_service] = current_service
    ModelName = t.Annotated[str, Path(description="the served model's registered name",
                                      json_schema_extra={"enum": [SOURCE.name]} if SOURCE is not None else None)]


    @bentoml.service(
        name="model_server",
        image=IMAGE,
        workers=SETTINGS.workers,
        traffic={"timeout": 30},
        # BentoML's per-request access log halved throughput in bench/serving.py (the line is formatted in the worker
        # and copied again by the arbiter); off unless MLSERVE_ACCESS_LOG asks for it.
        logging={"access": {"enabled": SETTINGS.access_log}},
        tracing={"excluded_urls": TRACING_EXCLUDED_URLS},
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
            OUTPUTS.start(identity.labels, self.model.classes)
            self.model.on_prediction = drift_observer(self.model, self.source, OUTPUTS, INPUTS, warn)
            # Every protocol's predictions go through this worker's one model thread, merged into batches
            # (service.batching); the requests the admission slots hold are the ones that may join a batch.
            self.runner = ModelRunner(self.model, BATCHING, expected=lambda: ADMISSION.in_flight)
            if self.signer is None:
                warn(f"{KEY_ENV} is not set: predictions carry no prediction_ids and /feedback is off")
            self.grpc: GrpcServer | None = None
            self.refusals: RefusalCounter | None = None
            self.explainer = ExplainProtocol(self.model, SETTINGS, self.source, EXPLAIN)
            start_series(identity, (REST, GRPC) if SETTINGS.grpc_port else (REST,))
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

        # BentoML runs these hooks in every worker (_bentoml_impl/server/app.py: create_instance, destroy_instance),
        # after __init__ has loaded the model: a worker's gRPC server never answers before its model is loaded.
        @bentoml.on_startup
        async def start_grpc(self) -> None:
            """Serve OIP v2 over gRPC on MLSERVE_GRPC_PORT, the port shared by every worker (SO_REUSEPORT)."""
            if SETTINGS.grpc_port is None:
                return
            self.grpc = GrpcServer(self, SETTINGS.grpc_host, SETTINGS.grpc_port, SETTINGS.max_body_bytes, ADMISSION)
            try:
                await self.grpc.start()
            except RuntimeError as err:
                fatal(str(err))

        @bentoml.on_shutdown
        async def stop_grpc(self) -> None:
            if self.grpc is not None:
                await self.grpc.stop()

        @bentoml.on_startup
        def start_explainer(self) -> None:
            """Start the explainer processes now, so the first /explain finds the model loaded (service.explain_pool)."""
            self.explainer.start()

        @bentoml.on_shutdown
        def stop_explainer(self) -> None:
            self.explainer.stop()

        @bentoml.on_startup
        def start_refusal_counter(self) -> None:
            """Behind a front proxy, the first worker counts the requests the proxy refused (service.front_proxy)."""
            if SETTINGS.front_proxy_stats_port is None or bentoml.server_context.worker_index not in (None, 1):
                return
            identity = self.model.identity
            self.refusals = RefusalCounter(f"http://127.0.0.1:{SETTINGS.front_proxy_stats_port}/metrics",
                                           lambda count: count_proxy_refused(identity, count))
            self.refusals.start()

        @bentoml.on_shutdown
        def stop_refusal_counter(self) -> None:
            if self.refusals is not None:
                self.refusals.stop()

        @bentoml.on_shutdown
        def stop_runner(self) -> None:
            self.runner.close()

        async def _answer(self, check: t.Callable[[], Checked], output: str | None = None) -> Prediction | JSONResponse:
            """Check a request on the event loop, then score it in the model thread with whatever requests are
            waiting (``service.batching``); its errors as responses."""
            try:
                return await self.runner.predict(check(), output)
            except InvalidInput as err:
                return error_response(err)
            except ModelFailure as err:
                logger.exception("%s", err)
                return error_response(err)

        # The handlers are async and never call the model themselves: they read and check the request on the event
        # loop and await the model thread, so the loop stays free to accept, check, shed and answer probes.
        @bentoml.api(route="/predict")
        async def predict(self, instances: Instances) -> dict[str, t.Any]:
            """Predictions for each row of ``instances``, with the model name, version and variant."""
            answer = await self._answer(lambda: self.model.check_rows(instances))
            if isinstance(answer, JSONResponse):
                return answer
            identity = answer.identity
            return {"predictions": answer.values, **self._prediction_ids(answer), "model_name": identity.name,
                    "model_version": identity.version, "variant": identity.variant}

        # Kept for the clients of the earlier batching endpoint: every route is batched now, and this one answers
        # the bare list of predictions, its rows typed and refused by BentoML as before.
        @bentoml.api(route="/predict_batch")
        async def predict_batch(self, instances: BatchInstances) -> list[t.Any]:
            """Predictions for typed rows, batched with every other request as ``/predict`` is; only the list."""
            check = ((lambda: self.model.validator.checked_rows(instances)) if SCHEMA.columns
                     else (lambda: self.model.check_rows(instances)))
            try:
                prediction = await self.runner.predict(check())
            except InvalidInput as err:
                raise BentoMLException(err.message, error_code=HTTPStatus(err.status)) from None
            return prediction.values

        @scoring.post("/invocations")
        async def invocations(self, request: Request) -> JSONResponse:
            """The MLflow scoring protocol: what ``mlflow models serve`` answers for the same body."""
            body = await request.body()
            try:
                rows = invocation_rows(body, request.headers.get("content-type", ""), self.model.schema)
                answer = await self.runner.predict(self.model.check_rows(rows, mlflow=True), PREDICT)
                return JSONResponse({**invocation_answer(answer), **self._prediction_ids(answer)})
            except InvalidInput as err:
                # MLflow's error_code and message, which its clients read, beside our detail.
                return JSONResponse(err.mlflow_body(), status_code=err.status)
            except ModelFailure as err:
                logger.exception("%s", err)
                return JSONResponse(mlflow_error_body(str(err), 500), status_code=500)

        # Not in /docs.json: its per-row 4xx answers and its 503 without a key are described in service/README.md,
        # and the OpenAPI contract test (tests/service/test_openapi_contract.py) covers the prediction routes.
        @scoring.post("/feedback", include_in_schema=False)
        async def feedback(self, request: Request) -> JSONResponse:
            """Ground truth for earlier predictions: ``[{"prediction_id", "truth"}, ...]``, a result per row."""
            answer = handle_feedback(await request.body(), self.signer, QUALITY, self.model.identity.labels,
                                     SETTINGS.max_rows)
            return JSONResponse(answer.body, status_code=answer.status)

        @scoring.post("/explain", openapi_extra=explain_openapi(_ROW_SCHEMA, EXPLAIN.max_rows))
        async def explain(self, request: Request) -> JSONResponse:
            """SHAP attributions per input column for each row (``service.explain_pool``), in their own processes."""
            return explain_response(await self.explainer.rest(await request.body()))

        @scoring.get("/ping")
        def ping(self) -> JSONResponse:
            """MLflow's health check: 200 once the model is loaded."""
            return JSONResponse({}, status_code=200 if self.__is_ready__() else 503)

        # ---- the Open Inference Protocol v2: these methods answer both the /v2 REST routes below and the gRPC
        # server (they are its service.grpc_server.InferenceBackend), so both protocols give the same answers.

        def is_ready(self) -> bool:
            return self.__is_ready__()

        def server_metadata(self) -> dict[str, t.Any]:
            return {"name": "mlserve", "version": f"bentoml-{bentoml.__version__}", "extensions": []}

        def _check_model(self, name: str, version: str = "") -> None:
            identity = self.model.identity
            if name != identity.name:
                raise InvalidInput(f"unknown model {name!r}; this server serves {identity.name!r}", status=404)
            if version and version != identity.version:
                raise InvalidInput(f"model {name!r} has no version {version!r} here; this server serves version "
                                   f"{identity.version!r}", status=404)

        def model_metadata(self, name: str, version: str = "") -> dict[str, t.Any]:
            self._check_model(name, version)
            return self.model.oip_metadata()

        def model_ready(self, name: str, version: str = "") -> bool:
            self._check_model(name, version)
            return self.__is_ready__()

        async def infer(self, name: str, version: str, payload: t.Any) -> dict[str, t.Any]:
            """The OIP v2 infer answer for a parsed request body; raises InvalidInput or ModelFailure."""
            self._check_model(name, version)
            if not isinstance(payload, dict):
                raise InvalidInput("an infer request is a JSON object with an 'inputs' list of tensors")
            prediction = await self.runner.predict(self.model.check_tensors(payload.get("inputs")))
            body = oip_infer_response(prediction, payload.get("id"))
            body["parameters"].update(self._prediction_ids(prediction))
            return body

        def track(self, protocol: str, size_bytes: int) -> t.ContextManager[RequestOutcome]:
            return track(self.model.identity, protocol, size_bytes)

        # The infer route first: FastAPI tries routes in order, and it is the one under load.
        @oip.post("/models/{name}/infer")
        async def oip_infer(self, name: ModelName, request: Request) -> JSONResponse:
            """OIP v2 inference: one tensor per column (or per input tensor) in, output tensors out."""
            try:
                self._check_model(name)
                return JSONResponse(await self.infer(name, "", parse_json(await request.body())))
            except InvalidInput as err:
                return error_response(err)
            except ModelFailure as err:
                logger.exception("%s", err)
                return error_response(err)

        @oip.get("/")
        def oip_server_metadata(self) -> dict[str, t.Any]:
            return self.server_metadata()

        @oip.get("/health/live")
        def oip_live(self) -> dict[str, bool]:
            return {"live": True}

        @oip.get("/health/ready")
        def oip_ready(self) -> JSONResponse:
            ready = self.__is_ready__()
            return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

        @oip.get("/models/{name}")
        def oip_model_metadata(self, name: ModelName) -> JSONResponse:
            """OIP v2 model metadata, derived from the model's signature."""
            try:
                return JSONResponse(self.model_metadata(name))
            except InvalidInput as err:
                return error_response(err)

        @oip.get("/models/{name}/ready")
        def oip_model_ready(self, name: ModelName) -> JSONResponse:
            try:
                return JSONResponse({"name": name, "ready": self.model_ready(name)})
            except InvalidInput as err:
                return error_response(err)

        @oip.post("/models/{name}/explain")
        async def oip_explain(self, name: ModelName, request: Request) -> JSONResponse:
            """Explanations over OIP v2: input tensors in, prediction/base_value/attributions tensors out."""
            try:
                self._check_model(name)
            except InvalidInput as err:
                return error_response(err)
            return explain_response(await self.explainer.oip(await request.body()))

    # Added first, so it is the outer one: it refuses, sheds and times out bodies before the traffic middleware reads them.
    ModelServer.add_asgi_middleware(AdmissionMiddleware, limits=ADMISSION.limits, on_reject=count_refused, slots=ADMISSION)
    ModelServer.add_asgi_middleware(PredictionTrafficMiddleware, max_body_bytes=SETTINGS.max_body_bytes)
    ModelServer.add_asgi_middleware(DocumentedErrorsMiddleware)
    return ModelServer


_model_server: type | None = None


def __getattr__(name: str) -> t.Any:
    """``ModelServer``, the BentoML service, built on first use (see ``build_model_server``)."""
    global _model_server
    if name == "ModelServer":
        if _model_server is None:
            _model_server = build_model_server()
        return _model_server
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

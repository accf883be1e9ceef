"""The Open Inference Protocol v2 over gRPC (``inference.GRPCInferenceService``), served inside each BentoML worker.

BentoML 1.4's ``@bentoml.service`` cannot serve gRPC (bentoml/BentoML#4634, #5607), so every worker runs a
``grpc.aio`` server on its own event loop, started by the service's ``@bentoml.on_startup`` hook once the model
is loaded and stopped by its ``@bentoml.on_shutdown`` hook (``_bentoml_impl/server/app.py``: ``create_instance``
and ``destroy_instance`` run them in every worker). All workers bind the same port with ``SO_REUSEPORT``
(``grpc.so_reuseport``), so the kernel spreads new connections over them; one connection stays on one worker.

The servicer holds no model and no rules of its own: it turns each call into the JSON body of the REST call
(``service.grpc_tensors``), asks the same ``InferenceBackend`` the REST routes use (``ModelServer``), and turns the
answer or the error back into gRPC: ``InvalidInput`` 400/422 is ``INVALID_ARGUMENT`` with the REST message, 404
``NOT_FOUND``, 413 ``RESOURCE_EXHAUSTED``, 503 ``UNAVAILABLE``; ``ModelFailure`` is ``INTERNAL``. ``ModelInfer``
calls take the worker's admission slots (``service.admission.Slots``, shared with the HTTP routes): beyond
``serving.maxConcurrency`` in progress and ``serving.maxQueue`` waiting, a call is answered ``UNAVAILABLE`` (HTTP 503's
gRPC code, which clients and gateways retry) and counted as ``unavailable``, as the HTTP routes shed theirs.
"""

from __future__ import annotations

import logging
import typing as t

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from service.admission import AdmissionLimits, Slots
from service.errors import InvalidInput, ModelFailure
from service.metrics import GRPC, RequestOutcome
from service.grpc_tensors import (
    TensorError,
    infer_request_body,
    infer_response_message,
    model_metadata_message,
)

logger = logging.getLogger("mlserve.grpc")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# How long a stopping worker lets calls in flight finish before cancelling them.
STOP_GRACE_SECONDS = 5.0
# Messages this many times over the body limit are refused by gRPC itself, before any of our code
# (a bound on memory); smaller ones reach the servicer, which refuses them with the REST message and counts them.
HARD_LIMIT_FACTOR = 4


class InferenceBackend(t.Protocol):
    """What the gRPC front end needs from the model server: the calls behind the REST OIP routes."""

    def is_ready(self) -> bool:
        """Whether the model is loaded and predictions can be served."""

    def server_metadata(self) -> dict[str, t.Any]:
        """``{"name", "version", "extensions"}``, the OIP server metadata."""

    def model_metadata(self, name: str, version: str) -> dict[str, t.Any]:
        """The ``/v2/models/{name}`` body; raises InvalidInput(404) for a model this server does not serve."""

    def model_ready(self, name: str, version: str) -> bool:
        """Whether that model is ready; raises InvalidInput(404) for a model this server does not serve."""

    async def infer(self, name: str, version: str, body: dict[str, t.Any]) -> dict[str, t.Any]:
        """The REST infer answer for a REST infer body; raises InvalidInput (4xx) or ModelFailure as REST does."""

    def track(self, protocol: str, size_bytes: int) -> t.ContextManager[RequestOutcome]:
        """Measure one prediction request in the model_* metrics, labelled with ``protocol``."""


STATUS_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_code(http_status: int) -> grpc.StatusCode:
    """The gRPC status code for the HTTP status the REST API answers the same request with."""
    return STATUS_CODES.get(http_status, grpc.StatusCode.INTERNAL)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` over an InferenceBackend."""

    def __init__(self, backend: InferenceBackend, max_message_bytes: int, slots: Slots | None = None) -> None:
        self.backend = backend
        self.max_message_bytes = max_message_bytes
        self.slots = slots if slots is not None else Slots(AdmissionLimits(**AdmissionLimits.DEFAULTS))

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.backend.is_ready())

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        body = self.backend.server_metadata()
        return pb.ServerMetadataResponse(
            name=body["name"], version=str(body.get("version", "")), extensions=body.get("extensions", [])
        )

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        try:
            return pb.ModelReadyResponse(ready=self.backend.model_ready(request.name, request.version))
        except InvalidInput as err:
            await context.abort(status_code(err.status), err.message)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        await self._require_ready(context)
        try:
            return model_metadata_message(self.backend.model_metadata(request.name, request.version))
        except InvalidInput as err:
            await context.abort(status_code(err.status), err.message)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        size = request.ByteSize()
        refusal: tuple[int, str] | None = None
        # Measured before answering, so the metrics already count a call when its client sees the answer.
        with self.backend.track(GRPC, size) as outcome:
            if await self.slots.acquire():
                try:
                    response = await self._infer(request, size)
                    outcome.status = 200
                except InvalidInput as err:
                    refusal = (err.status, err.message)
                except ModelFailure as err:
                    logger.exception("%s", err)
                    refusal = (500, str(err))
                finally:
                    self.slots.release()
            else:
                refusal = (503, self.slots.overloaded())
            if refusal is not None:
                outcome.status = refusal[0]
        if refusal is not None:
            await context.abort(status_code(refusal[0]), refusal[1])
        return response

    async def _infer(self, request: pb.ModelInferRequest, size: int) -> pb.ModelInferResponse:
        if size > self.max_message_bytes:
            raise InvalidInput(
                f"request body exceeds the maximum of {self.max_message_bytes} bytes (MLSERVE_MAX_BODY_BYTES)",
                status=413,
            )
        if not self.backend.is_ready():
            raise InvalidInput("the model is not loaded yet; retry when ServerReady answers ready", status=503)
        try:
            body = infer_request_body(request)
        except TensorError as err:
            raise InvalidInput(str(err)) from None
        answer = await self.backend.infer(request.model_name, request.model_version, body)
        try:
            return infer_response_message(answer, raw=bool(request.raw_input_contents))
        except TensorError as err:
            raise ModelFailure(str(err)) from err

    async def _require_ready(self, context: grpc.aio.ServicerContext) -> None:
        if not self.backend.is_ready():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the model is not loaded yet")


def server_options(max_message_bytes: int) -> list[tuple[str, t.Any]]:
    """Channel options of the server: every worker on one port, and a hard bound on message size."""
    return [
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", max_message_bytes * HARD_LIMIT_FACTOR),
    ]


class GrpcServer:
    """One worker's gRPC server: ``await start()`` in the service's start-up hook, ``await stop()`` at shutdown."""

    def __init__(self, backend: InferenceBackend, host: str, port: int, max_message_bytes: int,
                 slots: Slots | None = None) -> None:
        self.address = f"{host}:{port}"
        self.max_message_bytes = max_message_bytes
        self.backend = backend
        self.slots = slots
        self.server: grpc.aio.Server | None = None
        self.port: int | None = None

    async def start(self) -> int:
        """Bind (sharing the port with the other workers) and start serving; returns the bound port."""
        server = grpc.aio.server(options=server_options(self.max_message_bytes))
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(self.backend, self.max_message_bytes, self.slots),
                                                      server)
        try:
            self.port = server.add_insecure_port(self.address)
        except RuntimeError as err:
            raise RuntimeError(f"cannot serve gRPC on {self.address}: the port is taken or the address is not local") from err
        await server.start()
        self.server = server
        logger.info("gRPC %s on %s", SERVICE_NAME, self.address)
        return self.port

    async def stop(self) -> None:
        """Stop accepting calls, give those in flight STOP_GRACE_SECONDS, then cancel the rest."""
        if self.server is not None:
            await self.server.stop(STOP_GRACE_SECONDS)
            self.server = None

"""The gRPC front end over a stand-in backend: every RPC, the status codes, metrics and the shared port.

A real ``grpc.aio`` server runs on loopback in a background event loop and real clients call it; only the
model behind it is a stand-in, so these run in a second. ``tests/service/test_grpc_e2e.py`` covers the real
model under ``bentoml serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading

import grpc
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from service.admission import AdmissionLimits, Slots
from service.errors import InvalidInput, ModelFailure
from service.grpc_server import GrpcServer, status_code
from service.metrics import RequestOutcome

MAX_BYTES = 2048


class StandInBackend:
    """Answers like the model server: one model, REST-shaped bodies, REST errors."""

    def __init__(self) -> None:
        self.ready = True
        self.bodies: list[dict] = []
        self.tracked: list[tuple[str, int, int]] = []
        self.refuse: Exception | None = None

    def is_ready(self) -> bool:
        return self.ready

    def server_metadata(self) -> dict:
        return {"name": "mlserve", "version": "1.0", "extensions": []}

    def _check(self, name: str) -> None:
        if name != "m":
            raise InvalidInput(f"unknown model {name!r}; this server serves 'm'", status=404)

    def model_metadata(self, name: str, version: str) -> dict:
        self._check(name)
        return {"name": "m", "versions": ["7"], "platform": "stand-in",
                "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1]}],
                "outputs": [{"name": "y", "datatype": "FP64", "shape": [-1]}]}

    def model_ready(self, name: str, version: str) -> bool:
        self._check(name)
        return self.ready

    async def infer(self, name: str, version: str, body: dict) -> dict:
        self._check(name)
        if self.refuse:
            raise self.refuse
        self.bodies.append(body)
        data = [2 * value for value in body["inputs"][0]["data"]]
        return {"model_name": "m", "model_version": "7",
                "outputs": [{"name": "y", "datatype": "FP64", "shape": [len(data)], "data": data}],
                "parameters": {"variant": "champion"}}

    @contextlib.contextmanager
    def track(self, protocol: str, size_bytes: int):
        outcome = RequestOutcome()
        try:
            yield outcome
        finally:
            self.tracked.append((protocol, outcome.status, size_bytes))


class LoopThread:
    """An asyncio loop in a daemon thread, for servers the synchronous tests call."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def loop_thread():
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture
def backend():
    return StandInBackend()


@pytest.fixture
def stub(loop_thread, backend):
    server = GrpcServer(backend, "127.0.0.1", 0, MAX_BYTES)
    port = loop_thread.run(server.start())
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)
    loop_thread.run(server.stop())


def infer_request(values, model="m") -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name=model, inputs=[pb.ModelInferRequest.InferInputTensor(
        name="x", datatype="FP64", shape=[len(values)], contents=pb.InferTensorContents(fp64_contents=values))])


def test_health_and_metadata_rpcs(stub, backend):
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="m")).ready
    assert stub.ServerMetadata(pb.ServerMetadataRequest()).name == "mlserve"
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="m"))
    assert (metadata.name, list(metadata.versions), metadata.inputs[0].name) == ("m", ["7"], "x")
    backend.ready = False
    assert not stub.ServerReady(pb.ServerReadyRequest()).ready


def test_infer_answers_from_the_backend_and_is_measured(stub, backend):
    response = stub.ModelInfer(infer_request([1.5, 2.0]))

    assert list(response.outputs[0].contents.fp64_contents) == [3.0, 4.0]
    assert response.parameters["variant"].string_param == "champion"
    assert backend.bodies == [{"inputs": [{"name": "x", "datatype": "FP64", "shape": [2], "data": [1.5, 2.0]}]}]
    assert backend.tracked == [("grpc", 200, infer_request([1.5, 2.0]).ByteSize())]


@pytest.mark.parametrize(
    ("setup", "request_message", "code", "message", "http_status"),
    [
        (None, infer_request([1.0], model="other"), grpc.StatusCode.NOT_FOUND, "unknown model 'other'", 404),
        (InvalidInput("invalid input at row 0, feature 'x': must be a finite number"), infer_request([1.0]),
         grpc.StatusCode.INVALID_ARGUMENT, "invalid input at row 0, feature 'x'", 400),
        (InvalidInput("2000 rows exceeds the maximum of 1000 rows per request", status=413), infer_request([1.0]),
         grpc.StatusCode.RESOURCE_EXHAUSTED, "2000 rows exceeds the maximum", 413),
        (None, infer_request([1.0] * 300), grpc.StatusCode.RESOURCE_EXHAUSTED,
         f"request body exceeds the maximum of {MAX_BYTES} bytes", 413),
        ("not-ready", infer_request([1.0]), grpc.StatusCode.UNAVAILABLE, "not loaded yet", 503),
        (None, pb.ModelInferRequest(model_name="m", inputs=[pb.ModelInferRequest.InferInputTensor(
            name="x", datatype="FP64", shape=[1])], raw_input_contents=[b"\0" * 3]),
         grpc.StatusCode.INVALID_ARGUMENT, "3 raw bytes is not a whole number of FP64 values", 400),
        (ModelFailure("model m version 7 failed: boom"), infer_request([1.0]), grpc.StatusCode.INTERNAL,
         "model m version 7 failed", 500),
    ],
    ids=["unknown-model", "invalid-input", "too-many-rows", "too-many-bytes", "not-loaded", "bad-raw", "model-error"],
)
def test_refused_infer_calls_get_the_status_and_message_rest_gives(stub, backend, setup, request_message, code,
                                                                   message, http_status):
    if setup == "not-ready":
        backend.ready = False
    elif setup is not None:
        backend.refuse = setup

    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request_message)

    assert caught.value.code() == code
    assert message in caught.value.details()
    assert [(protocol, status) for protocol, status, _ in backend.tracked] == [("grpc", http_status)]


@pytest.mark.parametrize("rpc", ["ModelReady", "ModelMetadata"])
def test_model_rpcs_for_an_unknown_model_are_not_found(stub, rpc):
    request = getattr(pb, f"{rpc}Request")(name="nope")

    with pytest.raises(grpc.RpcError) as caught:
        getattr(stub, rpc)(request)

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND and "unknown model 'nope'" in caught.value.details()


@pytest.mark.parametrize(("http_status", "code"), [(400, "INVALID_ARGUMENT"), (422, "INVALID_ARGUMENT"),
                                                   (404, "NOT_FOUND"), (413, "RESOURCE_EXHAUSTED"),
                                                   (503, "UNAVAILABLE"), (500, "INTERNAL"), (502, "INTERNAL")])
def test_http_statuses_map_to_grpc_codes(http_status, code):
    assert status_code(http_status) == getattr(grpc.StatusCode, code)


def test_workers_share_one_port(loop_thread):
    """Two servers (as two BentoML workers) bind the same port; the kernel hands connections to both."""
    first, second = StandInBackend(), StandInBackend()
    one = GrpcServer(first, "127.0.0.1", 0, MAX_BYTES)
    port = loop_thread.run(one.start())
    two = GrpcServer(second, "127.0.0.1", port, MAX_BYTES)
    assert loop_thread.run(two.start()) == port
    try:
        for _ in range(40):  # a fresh connection each time, so the kernel picks a listener each time
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(infer_request([1.0]))
        assert first.bodies and second.bodies
    finally:
        loop_thread.run(one.stop())
        loop_thread.run(two.stop())


def test_a_port_held_by_another_program_is_an_error_naming_it(loop_thread):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = GrpcServer(StandInBackend(), "127.0.0.1", port, MAX_BYTES)

        with pytest.raises(RuntimeError, match=f"cannot serve gRPC on 127.0.0.1:{port}"):
            loop_thread.run(server.start())


def test_infer_calls_beyond_the_workers_slots_are_shed_unavailable_and_counted(loop_thread, backend):
    """gRPC and HTTP share one worker's slots: with its only slot taken (here by a slow call), a call that finds the
    queue full is answered UNAVAILABLE at once, with the message REST's 503 gives, and counted as 503."""
    slots = Slots(AdmissionLimits(max_concurrency=1, max_queue=0, queue_timeout=1.0, body_timeout=10.0))
    release = asyncio.Event()
    answer = backend.infer

    async def slow_infer(name, version, body):
        await release.wait()
        return await answer(name, version, body)

    backend.infer = slow_infer
    server = GrpcServer(backend, "127.0.0.1", 0, MAX_BYTES, slots)
    port = loop_thread.run(server.start())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            first = stub.ModelInfer.future(infer_request([1.0]))
            while slots.in_flight < 1:
                threading.Event().wait(0.01)

            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(infer_request([2.0]), timeout=5)
            loop_thread.loop.call_soon_threadsafe(release.set)

            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "server overloaded" in refused.value.details() and "retry after 1s" in refused.value.details()
            assert list(first.result(timeout=5).outputs[0].contents.fp64_contents) == [2.0]
            assert [status for _, status, _ in backend.tracked] == [503, 200]
            assert (slots.in_flight, slots.waiting) == (0, 0)
    finally:
        loop_thread.run(server.stop())

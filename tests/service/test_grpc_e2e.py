"""The OIP v2 gRPC server as its users see it: a real `python -m service serve --grpc-port` with two workers.

Clients are real: grpc's generated stub, grpc.aio for the concurrent calls, and Triton's own
``tritonclient.grpc.InferenceServerClient`` (which sends ``raw_input_contents``). Answers are compared with what
the REST routes of the same server say for the same request.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import psutil
import pytest
import requests
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from service.train import FEATURES, MODEL_NAME, sample_instances

from .conftest import REPO_ROOT, start_server, stop_server
from .test_server import EXAMPLE, metric_value, oip_request

pytestmark = pytest.mark.integration

WORKERS = 2
CONCURRENT_CALLS = 100


class GrpcServer:
    """A running server with its gRPC address, and what clients saw before it was ready."""

    def __init__(self, server, grpc_port: int, codes_before_ready: set[grpc.StatusCode]) -> None:
        self.server = server
        self.url = server.url
        self.grpc_port = grpc_port
        self.address = f"127.0.0.1:{grpc_port}"
        self.codes_before_ready = codes_before_ready

    def stub(self, channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
        return pb_grpc.GRPCInferenceServiceStub(channel)


class Watcher(threading.Thread):
    """Reads the gRPC port `service serve --grpc-port 0` prints, then calls ServerLive from before the workers
    start until it answers, noting every status code on the way."""

    def __init__(self, log_path) -> None:
        super().__init__(daemon=True)
        self.log_path = log_path
        self.port: int | None = None
        self.codes: set[grpc.StatusCode] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 120
        while self.port is None and time.monotonic() < deadline and not self.stop.is_set():
            text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            if match := re.search(r"gRPC \(OIP v2\) on 127\.0\.0\.1:(\d+)", text):
                self.port = int(match.group(1))
            time.sleep(0.05)
        if self.port is not None:
            _watch_until_live(f"127.0.0.1:{self.port}", self.codes, self.stop)


def _watch_until_live(address: str, codes: set[grpc.StatusCode], stop: threading.Event) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while not stop.is_set():
            try:
                stub.ServerLive(pb.ServerLiveRequest(), timeout=2)
                return
            except grpc.RpcError as err:
                codes.add(err.code())
                time.sleep(0.2)


@pytest.fixture(scope="module")
def grpc_server(registry, tmp_path_factory):
    """Two workers, the gRPC port picked by the server (--grpc-port 0) and read from the line it prints."""
    log_path = tmp_path_factory.mktemp("logs") / "grpc.log"
    watcher = Watcher(log_path)
    watcher.start()
    server = start_server(registry, log_path, "--grpc-port", "0", "--workers", str(WORKERS))
    try:
        watcher.join(timeout=60)
        assert watcher.port, f"no gRPC port printed:\n{server.log_tail()}"
        yield GrpcServer(server, watcher.port, watcher.codes)
    finally:
        watcher.stop.set()
        stop_server(server)


def infer_request(rows: list[dict], model: str = MODEL_NAME, request_id: str = "test") -> pb.ModelInferRequest:
    """The REST test body ``oip_request(rows)`` as a ModelInferRequest with typed contents."""
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    for tensor in oip_request(rows)["inputs"]:
        entry = request.inputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        if tensor["datatype"] == "BYTES":
            entry.contents.bytes_contents.extend(value.encode() for value in tensor["data"])
        else:
            entry.contents.fp64_contents.extend(float(value) for value in tensor["data"])
    return request


def rest_infer(url: str, body: dict, model: str = MODEL_NAME) -> requests.Response:
    return requests.post(f"{url}/v2/models/{model}/infer", data=json.dumps(body),
                         headers={"Content-Type": "application/json"}, timeout=30)


def outputs_of(response: pb.ModelInferResponse) -> list[dict]:
    """A ModelInferResponse's outputs as the REST body lists them (typed or raw contents alike)."""
    result = triton.InferResult(response)
    outputs = []
    for output in response.outputs:
        data = result.as_numpy(output.name) if response.raw_output_contents else np.array(
            getattr(output.contents, f"{'fp64' if output.datatype == 'FP64' else 'bytes'}_contents"))
        outputs.append({"name": output.name, "datatype": output.datatype, "shape": list(output.shape),
                        "data": np.asarray(data).ravel().tolist()})
    return outputs


def rest_outputs(body: dict) -> list[dict]:
    return [{key: output[key] for key in ("name", "datatype", "shape", "data")} for output in body["outputs"]]


def test_before_the_model_is_loaded_calls_are_unavailable(grpc_server):
    assert grpc_server.codes_before_ready == {grpc.StatusCode.UNAVAILABLE}


def grpc_listeners(grpc_server) -> list[int]:
    listening = []
    for process in psutil.Process(grpc_server.server.process.pid).children(recursive=True):
        connections = process.net_connections(kind="tcp")
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == grpc_server.grpc_port for c in connections):
            listening.append(process.pid)
    return listening


def test_every_worker_serves_grpc_on_the_shared_port(grpc_server):
    # The server is ready when one worker is; each worker binds the shared port once its own model is loaded.
    deadline = time.monotonic() + 120
    while len(listening := grpc_listeners(grpc_server)) < WORKERS and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(listening) == WORKERS


def test_health_and_metadata_rpcs_answer_as_rest_does(grpc_server, registry):
    with grpc.insecure_channel(grpc_server.address) as channel:
        stub = grpc_server.stub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest()).live
        assert stub.ServerReady(pb.ServerReadyRequest()).ready
        assert stub.ModelReady(pb.ModelReadyRequest(name=MODEL_NAME)).ready
        assert stub.ServerMetadata(pb.ServerMetadataRequest()).name
        metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL_NAME))
    rest = requests.get(f"{grpc_server.url}/v2/models/{MODEL_NAME}", timeout=10).json()

    assert (metadata.name, list(metadata.versions), metadata.platform) == (rest["name"], rest["versions"],
                                                                           rest["platform"])
    assert list(metadata.versions) == [registry.champion]
    for key in ("inputs", "outputs"):
        assert [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                for t in getattr(metadata, key)] == rest[key]


def test_model_infer_answers_what_rest_answers(grpc_server):
    rows = sample_instances(20, seed=3)
    with grpc.insecure_channel(grpc_server.address) as channel:
        response = grpc_server.stub(channel).ModelInfer(infer_request(rows, request_id="r-1"))
    rest = rest_infer(grpc_server.url, {**oip_request(rows), "id": "r-1"})

    assert rest.status_code == 200, rest.text
    body = rest.json()
    assert outputs_of(response) == rest_outputs(body)
    assert (response.model_name, response.model_version, response.id) == (body["model_name"], body["model_version"],
                                                                          "r-1")
    assert response.parameters["variant"].string_param == body["parameters"]["variant"] == "champion"


def test_tritons_client_with_raw_contents_gets_the_same_answer(grpc_server):
    rows = sample_instances(5, seed=4)
    client = triton.InferenceServerClient(grpc_server.address)
    inputs = []
    for feature in FEATURES:
        values = [row[feature] for row in rows]
        text = isinstance(values[0], str)
        tensor = triton.InferInput(feature, [len(rows)], "BYTES" if text else "FP64")
        tensor.set_data_from_numpy(np.array(values, dtype=object if text else np.float64))
        inputs.append(tensor)
    try:
        result = client.infer(MODEL_NAME, inputs)
    finally:
        client.close()
    body = rest_infer(grpc_server.url, oip_request(rows)).json()

    assert result.get_response().raw_output_contents, "a raw request gets raw outputs"
    assert outputs_of(result.get_response()) == rest_outputs(body)


def _rest_error(url: str, body: bytes | dict, model: str = MODEL_NAME) -> tuple[int, str]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = requests.post(f"{url}/v2/models/{model}/infer", data=data,
                             headers={"Content-Type": "application/json"}, timeout=30)
    return response.status_code, response.json()["error"]


def _without(feature: str) -> dict:
    body = oip_request([EXAMPLE])
    return {**body, "inputs": [tensor for tensor in body["inputs"] if tensor["name"] != feature]}


# (id, gRPC request, the REST body of the same mistake, model name, gRPC code, REST status)
BAD_CALLS = [
    ("unknown-model", infer_request([EXAMPLE], model="no-such-model"), oip_request([EXAMPLE]), "no-such-model",
     grpc.StatusCode.NOT_FOUND, 404),
    ("unseen-category", infer_request([{**EXAMPLE, "contract_type": "Weekly"}]),
     oip_request([{**EXAMPLE, "contract_type": "Weekly"}]), MODEL_NAME, grpc.StatusCode.INVALID_ARGUMENT, None),
    ("text-for-a-number", infer_request([{**EXAMPLE, "tenure": "twelve"}]),
     oip_request([{**EXAMPLE, "tenure": "twelve"}]), MODEL_NAME, grpc.StatusCode.INVALID_ARGUMENT, None),
    ("missing-input", None, _without("tenure"), MODEL_NAME, grpc.StatusCode.INVALID_ARGUMENT, 400),
    ("too-many-rows", infer_request([EXAMPLE] * 1001), oip_request([EXAMPLE] * 1001), MODEL_NAME,
     grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
]


@pytest.mark.parametrize(("request_message", "rest_body", "model", "code", "rest_status"),
                         [case[1:] for case in BAD_CALLS], ids=[case[0] for case in BAD_CALLS])
def test_bad_calls_get_the_status_code_and_the_rest_message(grpc_server, request_message, rest_body, model, code,
                                                             rest_status):
    if request_message is None:  # the REST body minus a tensor, as a gRPC request
        request_message = infer_request([EXAMPLE])
        kept = [tensor for tensor in request_message.inputs if tensor.name != "tenure"]
        del request_message.inputs[:]
        request_message.inputs.extend(kept)
    status, message = _rest_error(grpc_server.url, rest_body, model)
    with grpc.insecure_channel(grpc_server.address) as channel, pytest.raises(grpc.RpcError) as caught:
        grpc_server.stub(channel).ModelInfer(request_message)

    assert caught.value.code() == code
    assert caught.value.details() == message
    assert 400 <= status < 500 and (rest_status is None or status == rest_status)


def test_an_oversized_message_is_resource_exhausted_and_the_server_keeps_serving(grpc_server):
    request = infer_request([EXAMPLE])
    request.inputs[0].parameters["padding"].string_param = "x" * (1 << 20)
    with grpc.insecure_channel(grpc_server.address) as channel:
        stub = grpc_server.stub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "exceeds the maximum of" in caught.value.details()
        assert stub.ModelInfer(infer_request([EXAMPLE])).outputs


async def _concurrent_infers(address: str, count: int) -> list[pb.ModelInferResponse]:
    # A few channels (connections), so the calls reach both workers.
    channels = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(4)]
    try:
        stubs = [pb_grpc.GRPCInferenceServiceStub(channel) for channel in channels]
        calls = [stubs[index % len(stubs)].ModelInfer(infer_request([EXAMPLE], request_id=str(index)), timeout=60)
                 for index in range(count)]
        return await asyncio.gather(*calls)
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))


def test_concurrent_calls_complete_while_rest_keeps_answering(grpc_server):
    labels = {"model_name": MODEL_NAME, "variant": "champion"}
    grpc_before = metric_value(grpc_server.url, "model_predictions_total", **labels, protocol="grpc")
    rest_statuses: list[int] = []
    done = threading.Event()

    def rest_meanwhile() -> None:
        with requests.Session() as session:
            while not done.is_set() and len(rest_statuses) < 1000:
                rest_statuses.append(session.post(f"{grpc_server.url}/predict", json={"instances": [EXAMPLE]},
                                                  timeout=30).status_code)

    rest = threading.Thread(target=rest_meanwhile, daemon=True)
    rest.start()
    try:
        responses = asyncio.run(_concurrent_infers(grpc_server.address, CONCURRENT_CALLS))
    finally:
        done.set()
        rest.join(timeout=60)

    assert sorted(int(response.id) for response in responses) == list(range(CONCURRENT_CALLS))
    assert len({tuple(response.outputs[0].contents.fp64_contents) for response in responses}) == 1
    assert rest_statuses and set(rest_statuses) == {200}
    assert metric_value(grpc_server.url, "model_predictions_total", **labels, protocol="grpc") == (
        grpc_before + CONCURRENT_CALLS)


def test_grpc_failures_are_counted_by_error_type(grpc_server):
    labels = {"model_name": MODEL_NAME, "variant": "champion", "protocol": "grpc"}
    before = metric_value(grpc_server.url, "model_prediction_errors_total", **labels, error_type="invalid_input")
    with grpc.insecure_channel(grpc_server.address) as channel, pytest.raises(grpc.RpcError):
        grpc_server.stub(channel).ModelInfer(infer_request([{**EXAMPLE, "tenure": "twelve"}]))

    assert metric_value(grpc_server.url, "model_prediction_errors_total", **labels,
                        error_type="invalid_input") == before + 1


def test_a_grpc_port_in_use_is_refused_before_anything_starts(registry):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "service", "serve", "--port", "0", "--grpc-port", str(port)],
                                cwd=REPO_ROOT, env=registry.env(), capture_output=True, text=True, timeout=60)

    assert result.returncode == 2
    assert f"gRPC port 127.0.0.1:{port} is in use" in result.stderr


def test_the_readme_client_example_runs(grpc_server, capsys):
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("### gRPC"):]
    example = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)

    exec(compile(example.replace("localhost:8081", grpc_server.address), "README.md", "exec"), {})

    # It prints the output's name, its values, the model version and the variant.
    printed = capsys.readouterr().out
    rest = rest_infer(grpc_server.url, oip_request([EXAMPLE])).json()
    output = rest["outputs"][0]
    assert printed.split() == [output["name"], *str(output["data"]).split(), rest["model_version"], "champion"]


# Last: it stops the module's server.
def test_the_grpc_port_closes_when_the_server_stops(grpc_server):
    stop_server(grpc_server.server)

    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", grpc_server.grpc_port)) != 0

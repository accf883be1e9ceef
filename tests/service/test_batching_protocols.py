"""Every prediction protocol of the real service shares one batcher: merged model calls, failures kept apart, a free loop.

The service is built in this process (``build_model_server``) and run as BentoML's workers run it
(``Service.to_asgi``, as ``_bentoml_impl/worker/service.py`` does), with its lifespan (the model loaded in
``__init__``, the gRPC server started by its start-up hook on the app's event loop), behind Starlette's TestClient,
whose requests from several threads are served concurrently on that one loop. The model's first call is held
(``ServedModel.score`` wrapped) so that requests sent meanwhile queue up exactly as they do under load; nothing here
depends on the machine's speed. The demo model answers, so the expected answers are its own unbatched ones.
"""

from __future__ import annotations

import concurrent.futures
import csv
import io
import threading
import time

import grpc
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from service.batching import ModelRunner
from service.names import DEMO_MODEL_NAME as MODEL_NAME
from service.names import free_port
from service.predictor import ServedModel

EXAMPLE = {"tenure": 12.0, "monthly_charges": 70.35, "total_charges": 844.2, "contract_type": "Month-to-month",
           "payment_method": "Electronic check"}
BAD = {**EXAMPLE, "contract_type": "Weekly"}  # valid by the signature, refused by the model (422)
CONCURRENT = 8
BAD_INDEX = 3
WAIT_SECONDS = 30


class HeldModel:
    """Wraps ``ServedModel.score``: records each model call's request count; holds the first call while ``held``."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.held = False
        self.started = threading.Event()
        self.release = threading.Event()
        self.original = ServedModel.score
        self.runners: list[ModelRunner] = []

    def score(self, model: ServedModel, parts, output=None):
        self.calls.append(len(parts))
        if self.held:
            self.held = False
            self.started.set()
            self.release.wait(WAIT_SECONDS)
        return self.original(model, parts, output)

    @property
    def queued(self) -> int:
        return sum(runner.queued for runner in self.runners)


@pytest.fixture(scope="module")
def service(registry):
    """(TestClient, gRPC address, HeldModel) for the champion served in this process."""
    from starlette.testclient import TestClient

    held = HeldModel()
    runner_init = ModelRunner.__init__

    def capture(runner, *args, **kwargs):
        runner_init(runner, *args, **kwargs)
        held.runners.append(runner)

    grpc_port = free_port()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in registry.env().items():
            patch.setenv(name, value)
        patch.delenv("MLSERVE_RESOLVED_MODEL", raising=False)
        patch.setenv("MODEL_URI", f"models:/{MODEL_NAME}@champion")
        patch.setenv("MLSERVE_GRPC_PORT", str(grpc_port))
        patch.setenv("MLSERVE_GRPC_HOST", "127.0.0.1")
        patch.setenv("MLSERVE_EXPLAIN_ENABLED", "false")
        patch.setenv("BENTOML_HOME", str(registry.home / "bentoml-in-process"))
        patch.setattr(ServedModel, "score", lambda model, parts, output=None: held.score(model, parts, output))
        patch.setattr(ModelRunner, "__init__", capture)
        from service.service import build_model_server

        server = build_model_server()
        server.inject_config()
        with TestClient(server.to_asgi(is_main=True)) as client:
            yield client, f"127.0.0.1:{grpc_port}", held


# ---- each protocol: a request body for one row, and its answer as a comparable value


def oip_inputs(row: dict) -> list[dict]:
    return [{"name": name, "shape": [1], "datatype": "BYTES" if isinstance(value, str) else "FP64", "data": [value]}
            for name, value in row.items()]


def csv_body(row: dict) -> str:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(list(row))
    writer.writerow(list(row.values()))
    return text.getvalue()


def rest(path: str, body, answer, content_type: str = "application/json"):
    def call(client, _address, row):
        data = body(row)
        response = client.post(path, content=data if isinstance(data, str) else None,
                               json=None if isinstance(data, str) else data, headers={"Content-Type": content_type})
        return response.status_code, answer(response.json()) if response.status_code == 200 else response.text
    return call


def grpc_infer(_client, address, row):
    tensors = []
    for name, value in row.items():
        contents = (pb.InferTensorContents(bytes_contents=[value.encode()]) if isinstance(value, str)
                    else pb.InferTensorContents(fp64_contents=[value]))
        tensors.append(pb.ModelInferRequest.InferInputTensor(
            name=name, datatype="BYTES" if isinstance(value, str) else "FP64", shape=[1], contents=contents))
    with grpc.insecure_channel(address) as channel:
        try:
            answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                pb.ModelInferRequest(model_name=MODEL_NAME, inputs=tensors), timeout=WAIT_SECONDS)
        except grpc.RpcError as err:
            return {grpc.StatusCode.INVALID_ARGUMENT: 422}.get(err.code(), 500), err.details()
    return 200, list(answer.outputs[0].contents.fp64_contents)


PROTOCOLS = {
    "predict": rest("/predict", lambda row: {"instances": [row]}, lambda body: body["predictions"]),
    "predict_batch": rest("/predict_batch", lambda row: {"instances": [row]}, lambda body: body),
    "invocations-records": rest("/invocations", lambda row: {"dataframe_records": [row]},
                                lambda body: body["predictions"]),
    "invocations-split": rest("/invocations", lambda row: {"dataframe_split": {"columns": list(row),
                                                                               "data": [list(row.values())]}},
                              lambda body: body["predictions"]),
    "invocations-instances": rest("/invocations", lambda row: {"instances": [row]}, lambda body: body["predictions"]),
    "invocations-inputs": rest("/invocations", lambda row: {"inputs": {k: [v] for k, v in row.items()}},
                               lambda body: body["predictions"]),
    "invocations-csv": rest("/invocations", csv_body, lambda body: body["predictions"], "text/csv"),
    "oip-rest": rest(f"/v2/models/{MODEL_NAME}/infer", lambda row: {"inputs": oip_inputs(row)},
                     lambda body: body["outputs"][0]["data"]),
    "grpc": grpc_infer,
}


def rows(count: int) -> list[dict]:
    return [{**EXAMPLE, "tenure": float(index + 1), "monthly_charges": 20.0 + 7 * index} for index in range(count)]


def behind_a_held_call(client, held: HeldModel, send) -> list:
    """Hold the model on one /predict request, run ``send()`` calls meanwhile in threads, wait until they are all
    queued behind it, then let the model go on; their answers."""
    held.held, before = True, len(held.calls)
    held.started.clear()
    held.release.clear()
    with concurrent.futures.ThreadPoolExecutor(max_workers=CONCURRENT + 1) as pool:
        first = pool.submit(client.post, "/predict", json={"instances": [EXAMPLE]})
        assert held.started.wait(WAIT_SECONDS)
        sent = [pool.submit(call) for call in send]
        deadline = time.monotonic() + WAIT_SECONDS
        while held.queued < len(send) and time.monotonic() < deadline:
            time.sleep(0.005)
        queued = held.queued
        held.release.set()
        assert first.result(WAIT_SECONDS).status_code == 200
        answers = [future.result(WAIT_SECONDS) for future in sent]
    assert queued == len(send), "every request should have been waiting for the model"
    return answers, held.calls[before:]


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_concurrent_requests_share_one_model_call_and_a_bad_one_fails_alone(service, protocol):
    client, address, held = service
    call = PROTOCOLS[protocol]
    sample = rows(CONCURRENT)
    alone = [call(client, address, row) for row in sample]  # each request on its own, the model idle
    assert {status for status, _ in alone} == {200}, alone
    requests = [BAD if index == BAD_INDEX else row for index, row in enumerate(sample)]

    answers, calls = behind_a_held_call(client, held, [lambda row=row: call(client, address, row)
                                                       for row in requests])

    # The held call, then one call for all the queued requests (scored again in halves inside it for the bad one).
    assert calls[:2] == [1, CONCURRENT]
    for index, (status, answer) in enumerate(answers):
        if index == BAD_INDEX:
            assert status == 422 and "Weekly" in answer, answer
        else:
            assert status == 200 and answer == pytest.approx(alone[index][1], rel=1e-9), (status, answer)


def test_the_event_loop_answers_probes_while_the_model_is_busy(service):
    client, _, held = service
    held.held = True
    held.started.clear()
    held.release.clear()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        busy = pool.submit(client.post, "/predict", json={"instances": [EXAMPLE]})
        try:
            assert held.started.wait(WAIT_SECONDS)
            probes = {path: client.get(path).status_code for path in ("/livez", "/readyz", "/v2/health/live")}
            still_busy = not busy.done()
        finally:
            held.release.set()
        assert busy.result(WAIT_SECONDS).status_code == 200
    assert probes == {"/livez": 200, "/readyz": 200, "/v2/health/live": 200}
    assert still_busy, "the probes were answered while the model call was held"

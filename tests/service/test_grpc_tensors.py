"""gRPC tensors to and from the REST JSON bodies: typed contents, raw contents, and what cannot be read."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from tritonclient.grpc import InferResult
from tritonclient.grpc import service_pb2 as pb

from service.grpc_tensors import (
    DATATYPES,
    TensorError,
    infer_request_body,
    infer_response_message,
    model_metadata_message,
)

# One value list per datatype that each encoding must carry exactly (FP32/FP16 values are exact in those types).
VALUES = {
    "BOOL": [True, False],
    "UINT8": [0, 255],
    "UINT16": [1, 65535],
    "UINT32": [2, 4294967295],
    "UINT64": [3, 2**64 - 1],
    "INT8": [-128, 127],
    "INT16": [-32768, 32767],
    "INT32": [-(2**31), 2**31 - 1],
    "INT64": [-(2**63), 2**63 - 1],
    "FP16": [0.5, -2.0],
    "FP32": [0.25, -1.5],
    "FP64": [70.35, -1e300],
    "BYTES": ["Month-to-month", "Crédit"],
}


def raw_bytes(datatype: str, values: list) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)
    return np.asarray(values, dtype=DATATYPES[datatype][1]).tobytes()


def typed_tensor(datatype: str, values: list, name: str = "x") -> pb.ModelInferRequest.InferInputTensor:
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=[len(values)])
    field = DATATYPES[datatype][0]
    getattr(tensor.contents, field).extend([v.encode() for v in values] if datatype == "BYTES" else values)
    return tensor


@pytest.mark.parametrize("datatype", [d for d in VALUES if DATATYPES[d][0]])
def test_typed_contents_become_the_rest_body(datatype):
    request = pb.ModelInferRequest(model_name="m", id="req-1", inputs=[typed_tensor(datatype, VALUES[datatype])])

    assert infer_request_body(request) == {
        "id": "req-1",
        "inputs": [{"name": "x", "datatype": datatype, "shape": [2], "data": VALUES[datatype]}],
    }


@pytest.mark.parametrize("datatype", list(VALUES))
def test_raw_contents_become_the_same_body_as_typed_ones(datatype):
    request = pb.ModelInferRequest(
        model_name="m",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype=datatype, shape=[2])],
        raw_input_contents=[raw_bytes(datatype, VALUES[datatype])],
    )

    assert infer_request_body(request)["inputs"][0]["data"] == VALUES[datatype]


def test_parameters_and_requested_outputs_are_carried_over():
    request = pb.ModelInferRequest(
        model_name="m", inputs=[typed_tensor("FP64", [1.0])], outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="p")],
    )
    request.parameters["flag"].bool_param = True
    request.parameters["label"].string_param = "a"

    body = infer_request_body(request)

    assert body["parameters"] == {"flag": True, "label": "a"} and body["outputs"] == [{"name": "p"}]


def _raw_request(datatype: str, raw: bytes, **extra) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype=datatype, shape=[1], **extra)],
        raw_input_contents=[raw],
    )


@pytest.mark.parametrize(
    ("request_message", "message"),
    [
        (pb.ModelInferRequest(inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP99", shape=[1])]),
         "input 'x': unknown datatype 'FP99'; expected one of BOOL"),
        (pb.ModelInferRequest(inputs=[
            pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP64", shape=[1],
                                                  contents=pb.InferTensorContents(int64_contents=[1]))]),
         "input 'x': datatype FP64 carries its values in fp64_contents, not int64_contents"),
        (pb.ModelInferRequest(inputs=[
            pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP16", shape=[1],
                                                  contents=pb.InferTensorContents(fp32_contents=[1]))]),
         "datatype FP16 carries its values only in raw_input_contents"),
        (pb.ModelInferRequest(inputs=[typed_tensor("BYTES", ["a"])], raw_input_contents=[b"", b""]),
         "raw_input_contents has 2 entries for 1 inputs"),
        (_raw_request("FP64", b"\0" * 8, contents=pb.InferTensorContents(fp64_contents=[1.0])),
         "values given both in contents and in raw_input_contents"),
        (_raw_request("FP64", b"\0" * 12), "12 raw bytes is not a whole number of FP64 values (8 bytes each)"),
        (_raw_request("BYTES", b"\x05\0"), "raw BYTES end inside a 4-byte length prefix"),
        (_raw_request("BYTES", b"\x05\0\0\0abc"), "raw BYTES element of 5 bytes runs past the end"),
        (_raw_request("BYTES", b"\x01\0\0\0\xff"), "BYTES element b'\\xff' is not UTF-8 text"),
    ],
    ids=["unknown-datatype", "wrong-field", "fp16-typed", "raw-count", "raw-and-typed", "raw-partial-value",
         "raw-bytes-prefix", "raw-bytes-overrun", "not-utf8"],
)
def test_unreadable_tensors_are_refused_naming_the_problem(request_message, message):
    with pytest.raises(TensorError, match=None) as caught:
        infer_request_body(request_message)

    assert message in str(caught.value)


ANSWER = {
    "model_name": "customer-churn-classifier",
    "model_version": "3",
    "id": "req-1",
    "outputs": [{"name": "churn_probability", "shape": [2], "datatype": "FP64", "data": [0.25, 0.875],
                 "parameters": {"class": "1", "classes": ["0", "1"]}}],
    "parameters": {"variant": "challenger"},
}


@pytest.mark.parametrize("raw", [False, True], ids=["typed", "raw"])
def test_a_response_reads_the_same_in_a_triton_client_either_way(raw):
    response = infer_response_message(ANSWER, raw=raw)

    assert (response.model_name, response.model_version, response.id) == ("customer-churn-classifier", "3", "req-1")
    assert response.parameters["variant"].string_param == "challenger"
    # Scalars keep their type; anything else travels as its JSON text.
    assert response.outputs[0].parameters["class"].string_param == "1"
    assert response.outputs[0].parameters["classes"].string_param == '["0", "1"]'
    if raw:  # tritonclient's InferResult reads raw outputs
        assert InferResult(response).as_numpy("churn_probability").tolist() == [0.25, 0.875]
    else:
        assert list(response.outputs[0].contents.fp64_contents) == [0.25, 0.875]


def test_model_metadata_keeps_every_tensor():
    body = {"name": "m", "versions": ["3"], "platform": "mlflow-sklearn", "parameters": {"variant": "champion"},
            "inputs": [{"name": "tenure", "datatype": "FP64", "shape": [-1]}],
            "outputs": [{"name": "p", "datatype": "FP64", "shape": [-1]}]}

    message = model_metadata_message(body)

    assert (message.name, list(message.versions), message.platform) == ("m", ["3"], "mlflow-sklearn")
    assert [(t.name, t.datatype, list(t.shape)) for t in message.inputs] == [("tenure", "FP64", [-1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in message.outputs] == [("p", "FP64", [-1])]

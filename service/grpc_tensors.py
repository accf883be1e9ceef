"""Open Inference Protocol v2 tensors: gRPC messages to and from the JSON bodies of the REST API.

The gRPC front end turns a ``ModelInferRequest`` into exactly the JSON body a REST client would POST to
``/v2/models/{name}/infer`` and the JSON answer back into a ``ModelInferResponse``, so both protocols share one
validation and one scoring path and the same request gets the same answer. Values arrive either in the typed
``contents`` field of the tensor's datatype (``fp64_contents``, ``bytes_contents``, ...) or, for every input at
once, in ``raw_input_contents`` (little-endian, BYTES elements each prefixed by a 4-byte length; the OIP v2
spec). A response mirrors the request: raw outputs for a raw request, typed contents otherwise (Triton's
clients read raw outputs, KServe's and MLServer's read either).

The messages are the compiled ``inference`` package shipped by ``tritonclient[grpc]`` (see README, "gRPC").
"""

from __future__ import annotations

import struct
import typing as t

import numpy as np
from tritonclient.grpc import service_pb2 as pb


class TensorError(ValueError):
    """A request whose tensors cannot be read; the message names the input and what would be accepted."""


# OIP v2 datatype -> (the InferTensorContents field carrying it, numpy dtype of its raw little-endian bytes).
# FP16 has no typed field in the protocol: it travels only in raw_input_contents.
DATATYPES: dict[str, tuple[str | None, str | None]] = {
    "BOOL": ("bool_contents", "?"),
    "UINT8": ("uint_contents", "<u1"),
    "UINT16": ("uint_contents", "<u2"),
    "UINT32": ("uint_contents", "<u4"),
    "UINT64": ("uint64_contents", "<u8"),
    "INT8": ("int_contents", "<i1"),
    "INT16": ("int_contents", "<i2"),
    "INT32": ("int_contents", "<i4"),
    "INT64": ("int64_contents", "<i8"),
    "FP16": (None, "<f2"),
    "FP32": ("fp32_contents", "<f4"),
    "FP64": ("fp64_contents", "<f8"),
    "BYTES": ("bytes_contents", None),
}
CONTENT_FIELDS = tuple(field.name for field in pb.InferTensorContents.DESCRIPTOR.fields)
_LENGTH = struct.Struct("<I")


def _datatype(name: str, datatype: str) -> tuple[str | None, str | None]:
    if datatype not in DATATYPES:
        raise TensorError(f"input {name!r}: unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}")
    return DATATYPES[datatype]


def _text(name: str, value: bytes) -> str:
    """BYTES elements are text in the JSON protocol; anything else cannot mean the same request."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as err:
        raise TensorError(f"input {name!r}: BYTES element {value[:20]!r} is not UTF-8 text") from err


def parameter_value(parameter: pb.InferParameter) -> bool | int | float | str | None:
    """The Python value an ``InferParameter`` holds (None when it holds nothing)."""
    kind = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, kind) if kind else None


def parameter_message(value: t.Any) -> pb.InferParameter:
    """An ``InferParameter`` holding a JSON scalar; other values travel as their JSON text."""
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    if isinstance(value, str):
        return pb.InferParameter(string_param=value)
    import json

    return pb.InferParameter(string_param=json.dumps(value))


def _typed_values(tensor: pb.ModelInferRequest.InferInputTensor) -> list[t.Any]:
    field, _ = _datatype(tensor.name, tensor.datatype)
    present = [name for name in CONTENT_FIELDS if len(getattr(tensor.contents, name))]
    wrong = [name for name in present if name != field]
    if wrong:
        where = f"in {field}" if field else "only in raw_input_contents"
        raise TensorError(
            f"input {tensor.name!r}: datatype {tensor.datatype} carries its values {where}, not {', '.join(wrong)}"
        )
    if field is None:
        return []
    values = list(getattr(tensor.contents, field))
    if tensor.datatype == "BYTES":
        return [_text(tensor.name, value) for value in values]
    return values


def _raw_values(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes) -> list[t.Any]:
    _, dtype = _datatype(tensor.name, tensor.datatype)
    if dtype is None:  # BYTES: <uint32 length><bytes>, repeated
        values, offset = [], 0
        while offset < len(raw):
            if offset + _LENGTH.size > len(raw):
                raise TensorError(f"input {tensor.name!r}: raw BYTES end inside a 4-byte length prefix")
            (length,) = _LENGTH.unpack_from(raw, offset)
            offset += _LENGTH.size
            if offset + length > len(raw):
                raise TensorError(f"input {tensor.name!r}: raw BYTES element of {length} bytes runs past the end")
            values.append(_text(tensor.name, raw[offset:offset + length]))
            offset += length
        return values
    itemsize = np.dtype(dtype).itemsize
    if len(raw) % itemsize:
        raise TensorError(
            f"input {tensor.name!r}: {len(raw)} raw bytes is not a whole number of {tensor.datatype} "
            f"values ({itemsize} bytes each)"
        )
    return np.frombuffer(raw, dtype=dtype).tolist()


def infer_request_body(request: pb.ModelInferRequest) -> dict[str, t.Any]:
    """The REST infer body (``{"id", "inputs": [{name, datatype, shape, data}], ...}``) a gRPC request means.

    Raises TensorError for what only the gRPC encoding can get wrong (datatypes, contents fields, raw bytes);
    everything else (features, shapes, values) is left to the validation both protocols share.
    """
    raw = list(request.raw_input_contents)
    if raw:
        if len(raw) != len(request.inputs):
            raise TensorError(
                f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; give one per input, "
                "in the order of 'inputs'"
            )
        typed = [tensor.name for tensor in request.inputs if tensor.HasField("contents")]
        if typed:
            raise TensorError(
                f"input {typed[0]!r}: values given both in contents and in raw_input_contents; use one or the other"
            )
    inputs = []
    for position, tensor in enumerate(request.inputs):
        data = _raw_values(tensor, raw[position]) if raw else _typed_values(tensor)
        entry: dict[str, t.Any] = {
            "name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape), "data": data,
        }
        if tensor.parameters:
            entry["parameters"] = {key: parameter_value(value) for key, value in tensor.parameters.items()}
        inputs.append(entry)
    body: dict[str, t.Any] = {"inputs": inputs}
    if request.id:
        body["id"] = request.id
    if request.parameters:
        body["parameters"] = {key: parameter_value(value) for key, value in request.parameters.items()}
    if request.outputs:
        body["outputs"] = [{"name": output.name} for output in request.outputs]
    return body


def _raw_bytes(datatype: str, data: list[t.Any]) -> bytes:
    _, dtype = DATATYPES[datatype]
    if dtype is None:
        encoded = [value if isinstance(value, bytes) else str(value).encode() for value in data]
        return b"".join(_LENGTH.pack(len(value)) + value for value in encoded)
    return np.asarray(data, dtype=dtype).tobytes()


def infer_response_message(body: dict[str, t.Any], raw: bool) -> pb.ModelInferResponse:
    """The ``ModelInferResponse`` for a REST infer answer; ``raw`` puts the outputs in raw_output_contents."""
    response = pb.ModelInferResponse(
        model_name=body["model_name"], model_version=str(body.get("model_version", "")), id=body.get("id", ""),
    )
    for key, value in (body.get("parameters") or {}).items():
        response.parameters[key].CopyFrom(parameter_message(value))
    for output in body["outputs"]:
        datatype, data = output["datatype"], output["data"]
        tensor = response.outputs.add(name=output["name"], datatype=datatype, shape=output["shape"])
        for key, value in (output.get("parameters") or {}).items():
            tensor.parameters[key].CopyFrom(parameter_message(value))
        if raw:
            response.raw_output_contents.append(_raw_bytes(datatype, data))
            continue
        field, _ = DATATYPES[datatype]
        if field is None:  # FP16 has no typed field; a typed response cannot carry it
            raise TensorError(f"output {output['name']!r} is FP16, which only raw_output_contents can carry")
        values = [value.encode() if isinstance(value, str) else value for value in data] if datatype == "BYTES" else data
        getattr(tensor.contents, field).extend(values)
    return response


def model_metadata_message(body: dict[str, t.Any]) -> pb.ModelMetadataResponse:
    """The ``ModelMetadataResponse`` for the REST ``/v2/models/{name}`` body (its ``parameters`` have no field)."""
    response = pb.ModelMetadataResponse(
        name=body["name"], versions=[str(version) for version in body.get("versions", [])],
        platform=body.get("platform", ""),
    )
    for key in ("inputs", "outputs"):
        for tensor in body.get(key, []):
            getattr(response, key).add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
    return response

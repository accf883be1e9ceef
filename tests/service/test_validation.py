"""Request validation against a model's signature, and the small pure helpers of the server, without starting one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from service.errors import InvalidInput, ModelLoadError
from service.settings import parse_model_uri
from service.metrics import error_type_for
from service.protocols import csv_rows, invocation_rows
from service.schema import InputSchema, RowValidator, rows_from_tensors

# The demo model's signature as MLflow serializes it (ModelSignature.inputs.to_dict()).
CHURN_SIGNATURE = [
    {"type": "double", "name": "tenure", "required": True},
    {"type": "double", "name": "monthly_charges", "required": True},
    {"type": "double", "name": "total_charges", "required": True},
    {"type": "string", "name": "contract_type", "required": True},
    {"type": "string", "name": "payment_method", "required": True},
]
CHURN = InputSchema.from_signature(CHURN_SIGNATURE)
FEATURES = CHURN.names
ROW = {"tenure": 3, "monthly_charges": 20.5, "total_charges": 61.5, "contract_type": "Two year",
       "payment_method": "Credit card (automatic)"}
MIXED = InputSchema.from_signature([
    {"type": "long", "name": "count", "required": True},
    {"type": "integer", "name": "small", "required": True},
    {"type": "boolean", "name": "flag", "required": True},
    {"type": "float", "name": "ratio", "required": False},
    {"type": "datetime", "name": "when", "required": True},
])
MIXED_ROW = {"count": 2**40, "small": 7, "flag": True, "ratio": 0.5, "when": "2026-11-22T04:00:00"}
IMAGE = InputSchema.from_signature([{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 2, 2]}}])


def refusal(call) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        call()
    return caught.value


def test_valid_rows_become_a_dataframe_with_the_signature_columns_and_dtypes():
    frame = RowValidator(CHURN, max_rows=10).validate_rows([ROW, {**ROW, "tenure": 4.5}])

    assert list(frame.columns) == list(FEATURES)
    assert frame["tenure"].tolist() == [3.0, 4.5] and frame["tenure"].dtype == np.float64
    assert frame["contract_type"].tolist() == ["Two year", "Two year"]


def test_every_column_type_is_checked_and_typed():
    frame = RowValidator(MIXED, max_rows=10).validate_rows([MIXED_ROW, {**MIXED_ROW, "ratio": None}])

    assert frame["count"].dtype == np.int64 and frame["small"].dtype == np.int32
    assert frame["flag"].dtype == bool and frame["when"].dtype.kind == "M"
    assert frame["ratio"].tolist()[0] == 0.5 and pd.isna(frame["ratio"].tolist()[1])


@pytest.mark.parametrize(
    ("schema", "instances", "status", "message"),
    [
        (CHURN, {"a": 1}, 400, "'instances' must be a list"),
        (CHURN, [], 400, "empty"),
        (CHURN, [ROW] * 11, 413, "11 rows exceeds the maximum of 10"),
        (CHURN, [ROW, "x"], 400, "row 1 must be an object"),
        (CHURN, [{**ROW, "tenure": float("nan")}], 400, "row 0, feature 'tenure': must be a finite number"),
        (CHURN, [{**ROW, "tenure": float("inf")}], 400, "row 0, feature 'tenure': must be a finite number"),
        (CHURN, [{k: v for k, v in ROW.items() if k != "payment_method"}], 400, "feature 'payment_method': missing"),
        (CHURN, [{**ROW, "zip": "10001"}], 400, "feature 'zip': unknown feature; expected only tenure"),
        (CHURN, [ROW, {**ROW, "contract_type": 3}], 400, "row 1, feature 'contract_type'"),
        (CHURN, [{**ROW, "monthly_charges": "20.5"}], 400, "feature 'monthly_charges'"),
        (CHURN, [{**ROW, "tenure": True}], 400, "feature 'tenure'"),
        (MIXED, [{**MIXED_ROW, "small": 2**31}], 400, "feature 'small'"),
        (MIXED, [{**MIXED_ROW, "count": 1.5}], 400, "feature 'count'"),
        (MIXED, [{**MIXED_ROW, "flag": "yes"}], 400, "feature 'flag'"),
        (MIXED, [{**MIXED_ROW, "when": "yesterday"}], 400, "feature 'when'"),
        (MIXED, [{k: v for k, v in MIXED_ROW.items() if k != "count"}], 400, "feature 'count': missing"),
        (IMAGE, [[[1, 2], [3, 4]], [[1, 2]]], 400, "shape"),
        (IMAGE, [[[1, 2, 3], [3, 4, 5]]], 400, "got shape [1, 2, 3], expected shape [-1, 2, 2]"),
        (IMAGE, [[["a", "b"], ["c", "d"]]], 400, "values must be float32"),
        (IMAGE, [[[1, float("nan")], [3, 4]]], 400, "finite"),
    ],
    ids=["not-a-list", "empty", "too-many", "row-not-object", "nan", "inf", "missing", "unknown", "number-for-string",
         "string-for-number", "bool-for-number", "int32-overflow", "float-for-long", "string-for-bool", "bad-datetime",
         "missing-long", "ragged-tensor", "tensor-shape", "tensor-dtype", "tensor-nan"],
)
def test_invalid_rows_are_refused_with_a_message_naming_the_problem(schema, instances, status, message):
    error = refusal(lambda: RowValidator(schema, max_rows=10).validate_rows(instances))

    assert error.status == status
    assert message in error.message


def test_tensor_rows_become_an_array_of_the_signature_dtype():
    array = RowValidator(IMAGE, max_rows=10).validate_rows([[[1, 2], [3, 4]], [[5, 6], [7, 8.5]]])

    assert array.dtype == np.float32 and array.shape == (2, 2, 2)


def test_a_model_without_a_signature_checks_only_the_shape_of_rows():
    validator = RowValidator(InputSchema.from_signature(None), max_rows=10)

    assert validator.validate_rows([{"a": 1, "b": "x"}]).to_dict(orient="records") == [{"a": 1, "b": "x"}]
    assert "same columns" in refusal(lambda: validator.validate_rows([{"a": 1}, {"b": 2}])).message


def test_oip_tensors_become_rows_in_feature_order():
    payload = [{"name": f, "shape": [2], "datatype": "BYTES", "data": [ROW[f], ROW[f]]} for f in reversed(FEATURES)]

    assert rows_from_tensors(CHURN, payload) == [ROW, ROW]


def test_oip_tensor_of_a_tensor_signature_becomes_rows_of_its_shape():
    payload = [{"name": "input", "shape": [1, 2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]

    assert rows_from_tensors(IMAGE, payload) == [[[1, 2], [3, 4]]]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([], "non-empty 'inputs'"),
        ([{"shape": [1], "data": [1]}], "must be an object with a 'name'"),
        ([{"name": "tenure", "shape": [1], "data": [1]}] * 2, "given twice"),
        ([{"name": "tenure", "shape": [1], "data": 1}], "'data' must be a list"),
        ([{"name": "age", "shape": [1], "data": [1]}], "unknown input 'age'"),
        ([{"name": f, "shape": [1 + (f == "tenure")], "data": [ROW[f]] * (1 + (f == "tenure"))} for f in FEATURES],
         "different lengths"),
        ([{"name": f, "shape": [2], "data": [ROW[f]]} for f in FEATURES], "does not match 1 data values"),
    ],
)
def test_malformed_oip_requests_are_refused(payload, message):
    assert message in refusal(lambda: rows_from_tensors(CHURN, payload)).message


@pytest.mark.parametrize(
    ("body", "rows"),
    [
        ({"dataframe_split": {"columns": list(FEATURES), "data": [[ROW[f] for f in FEATURES]]}}, [ROW]),
        ({"dataframe_records": [ROW]}, [ROW]),
        ({"instances": [ROW]}, [ROW]),
        ({"inputs": {f: [ROW[f]] for f in FEATURES}}, [ROW]),
    ],
    ids=["dataframe_split", "dataframe_records", "instances", "inputs-columns"],
)
def test_every_mlflow_scoring_format_gives_the_same_rows(body, rows):
    import json

    assert invocation_rows(json.dumps(body).encode(), "application/json", CHURN) == rows


def test_csv_bodies_are_typed_by_the_signature():
    body = b"tenure,monthly_charges,total_charges,contract_type,payment_method\n3,20.5,61.5,Two year,Mailed check\n"

    assert csv_rows(body, CHURN) == [{"tenure": 3.0, "monthly_charges": 20.5, "total_charges": 61.5,
                                      "contract_type": "Two year", "payment_method": "Mailed check"}]


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"{", "application/json", "not valid JSON"),
        (b"[]", "application/json", "JSON object"),
        (b'{"instances": [], "inputs": []}', "application/json", "exactly one of"),
        (b'{"rows": []}', "application/json", "exactly one of"),
        (b'{"dataframe_split": {"columns": ["a"], "data": [[1, 2]]}}', "application/json", "1 values"),
        (b"a,b", "text/plain", "unsupported content type"),
    ],
)
def test_bad_mlflow_scoring_bodies_are_refused(body, content_type, message):
    assert message in refusal(lambda: invocation_rows(body, content_type, CHURN)).message


@pytest.mark.parametrize(
    ("uri", "parsed"),
    [
        ("models:/customer-churn-classifier@champion", ("customer-churn-classifier", "champion", None)),
        ("models:/customer-churn-classifier/7", ("customer-churn-classifier", None, "7")),
    ],
)
def test_model_uris_name_an_alias_or_a_version(uri, parsed):
    assert parse_model_uri(uri) == parsed


@pytest.mark.parametrize("uri", ["runs:/abc/model", "models:/name", "models:/name/latest", "customer-churn-classifier"])
def test_other_model_uris_are_refused_with_the_accepted_forms(uri):
    with pytest.raises(ModelLoadError, match="models:/NAME@ALIAS or models:/NAME/VERSION"):
        parse_model_uri(uri)


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(200, None), (400, "invalid_input"), (404, "invalid_input"), (413, "payload_too_large"), (422, "invalid_input"),
     (500, "model_error"), (503, "unavailable")],
)
def test_error_types_separate_client_mistakes_from_model_failures(status, error_type):
    assert error_type_for(status) == error_type

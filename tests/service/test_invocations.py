"""The MLflow scoring protocol in-process: how `/invocations` reads rows as MLflow's schema enforcement does, and
what its errors carry. The same behaviour against a real `mlflow models serve` is in test_mlflow_parity.py."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from service.errors import InvalidInput, mlflow_error_body, route_error_body
from service.predictor import ModelIdentity, Prediction
from service.protocols import invocation_answer, invocation_rows
from service.schema import InputSchema, RowValidator

POINTS = InputSchema.from_signature([{"type": "float", "name": "x"}, {"type": "float", "name": "y"}])
ACCOUNTS = InputSchema.from_signature([
    {"type": "string", "name": "plan"}, {"type": "long", "name": "tenure"}, {"type": "double", "name": "monthly"},
    {"type": "boolean", "name": "paperless"},
])
ACCOUNT = {"plan": "basic", "tenure": 3, "monthly": 20.5, "paperless": True}
FLOAT32_TENSOR = InputSchema.from_signature([{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 2]}}])
IDENTITY = ModelIdentity("m", "1", "champion", "models:/m/1")


def refusal(call) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        call()
    return caught.value


@pytest.mark.parametrize("mlflow", [False, True], ids=["predict", "invocations"])
def test_a_number_beyond_float32_is_a_400_naming_the_column_and_the_range(mlflow):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow RuntimeWarning from a cast
        error = refusal(lambda: RowValidator(POINTS, 10).validate_rows([{"x": 1e300, "y": 0.0}], mlflow=mlflow))

    assert error.status == 400
    assert "row 0, feature 'x'" in error.message and "float32 range" in error.message and "3.402823e+38" in error.message
    assert error.detail[0]["feature"] == "x"


def test_a_float32_tensor_beyond_its_range_is_a_400():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        error = refusal(lambda: RowValidator(FLOAT32_TENSOR, 10).validate_rows([[1e39, 0.0]]))

    assert error.status == 400 and "float32" in error.message


def test_the_largest_float32_is_taken():
    frame = RowValidator(POINTS, 10).validate_rows([{"x": 3.4e38, "y": -3.4e38}])

    assert frame["x"].dtype == np.float32 and math.isfinite(float(frame["x"][0]))


@pytest.mark.parametrize("key", ["dataframe_records", "instances", "inputs"])
def test_no_rows_is_refused_naming_the_key_the_client_sent(key):
    error = refusal(lambda: invocation_rows(json.dumps({key: []}).encode(), "application/json", ACCOUNTS))

    assert error.message == f"'{key}' is empty; send at least one row"
    assert error.error_code == "INVALID_PARAMETER_VALUE"  # MLflow: the model is missing every input


def test_columns_the_signature_does_not_name_are_dropped_on_invocations_only():
    rows = [{**ACCOUNT, "unexpected": 1.5}]

    frame = RowValidator(ACCOUNTS, 10).validate_rows(rows, mlflow=True)

    assert list(frame.columns) == ["plan", "tenure", "monthly", "paperless"]
    assert "unknown feature" in refusal(lambda: RowValidator(ACCOUNTS, 10).validate_rows(rows)).message


@pytest.mark.parametrize(("column", "accepted"), [("monthly", True), ("plan", True), ("tenure", False),
                                                  ("paperless", False)])
def test_null_is_a_missing_value_where_the_column_can_hold_one(column, accepted):
    rows = [{**ACCOUNT, column: None}]
    validator = RowValidator(ACCOUNTS, 10)

    if accepted:
        frame = validator.validate_rows(rows, mlflow=True)
        assert frame[column].isna().all()
    else:
        assert refusal(lambda: validator.validate_rows(rows, mlflow=True)).detail[0]["feature"] == column
    assert refusal(lambda: validator.validate_rows(rows)).status == 400  # /predict: required means a value


def test_a_missing_float32_value_stays_float32():
    frame = RowValidator(POINTS, 10).validate_rows([{"x": None, "y": 1.0}, {"x": 2.0, "y": 1.0}], mlflow=True)

    assert frame["x"].dtype == np.float32 and math.isnan(frame["x"][0])


def test_a_missing_column_has_mlflows_code_for_it_and_names_the_columns_ignored():
    row = {name: value for name, value in ACCOUNT.items() if name != "plan"}
    error = refusal(lambda: RowValidator(ACCOUNTS, 10).validate_rows([{**row, "plna": "basic"}], mlflow=True))

    assert error.error_code == "INVALID_PARAMETER_VALUE" and error.mlflow_body()["error_code"] == error.error_code
    assert "feature 'plan': missing required feature" in error.message and "ignored 'plna'" in error.message


@pytest.mark.parametrize(
    ("body", "values"),
    [
        (b"plan,tenure,monthly,paperless\nbasic,3,,true\n", {"monthly": None}),
        (b"plan,tenure,paperless,monthly\nbasic,3,true\n", {"monthly": None}),
        (b"plan,tenure,monthly,paperless,extra\nbasic,3,2.5,true,x\n", {"monthly": 2.5, "extra": "x"}),
    ],
    ids=["empty-cell", "short-row", "extra-column"],
)
def test_csv_cells_are_read_as_pandas_reads_them(body, values):
    [row] = invocation_rows(body, "text/csv", ACCOUNTS)

    assert {name: row[name] for name in values} == values


@pytest.mark.parametrize(
    ("content_type", "words"),
    [("application/json; charset=latin-1", "charset"), ("application/json; format=pandas-split", "'format'"),
     ("text/plain", "unsupported content type")],
)
def test_content_types_mlflow_refuses_are_415(content_type, words):
    error = refusal(lambda: invocation_rows(json.dumps({"instances": [ACCOUNT]}).encode(), content_type, ACCOUNTS))

    assert error.status == 415 and words in error.message and error.error_code == "BAD_REQUEST"


def test_utf8_charset_is_read():
    assert invocation_rows(json.dumps({"instances": [ACCOUNT]}).encode(), "application/json; charset=UTF-8",
                           ACCOUNTS) == [ACCOUNT]


def test_an_answer_that_is_not_json_is_a_422_naming_the_row():
    prediction = Prediction(np.array([1.0, float("nan")]), "predict", (), IDENTITY)

    error = refusal(lambda: invocation_answer(prediction))

    assert error.status == 422 and "row 1" in error.message and error.error_code == "BAD_REQUEST"
    assert invocation_answer(Prediction(np.array([1.0, 2.0]), "predict", (), IDENTITY)) == {"predictions": [1.0, 2.0]}


def test_error_bodies_carry_mlflows_fields_and_ours():
    body = InvalidInput("bad row", detail=[{"row": 0, "feature": "x", "problem": "bad"}]).mlflow_body()

    assert body == {"error_code": "BAD_REQUEST", "message": "bad row", "error": "bad row",
                    "detail": [{"row": 0, "feature": "x", "problem": "bad"}]}
    assert mlflow_error_body("failed", 500)["error_code"] == "INTERNAL_ERROR"
    assert route_error_body("/invocations", "too big", 413)["error_code"] == "BAD_REQUEST"
    assert route_error_body("/predict", "too big", 413) == {"error": "too big"}

"""Request validation and the small pure helpers of the server, without starting one."""

from __future__ import annotations

import json

import pytest

from service.service import (
    FEATURES,
    ChurnInstance,
    ModelLoadError,
    error_type_for,
    parse_model_uri,
    rows_from_oip,
    validate_rows,
)

ROW = {"tenure": 3, "monthly_charges": 20.5, "total_charges": 61.5, "contract_type": "Two year",
       "payment_method": "Credit card (automatic)"}


def error_of(response) -> str:
    return json.loads(response.body)["error"]


def test_valid_rows_become_typed_instances_with_floats():
    [row] = validate_rows([ROW], max_rows=10)

    assert isinstance(row, ChurnInstance) and row.tenure == 3.0 and isinstance(row.tenure, float)


@pytest.mark.parametrize(
    ("instances", "status", "message"),
    [
        ({"a": 1}, 400, "'instances' must be a list"),
        ([], 400, "empty"),
        ([ROW] * 11, 413, "11 rows exceeds the maximum of 10"),
        ([ROW, "x"], 400, "row 1 must be an object"),
        ([{**ROW, "tenure": float("nan")}], 400, "row 0, feature 'tenure': must be a finite number"),
        ([{**ROW, "tenure": float("inf")}], 400, "row 0, feature 'tenure': must be a finite number"),
        ([{k: v for k, v in ROW.items() if k != "payment_method"}], 400, "feature 'payment_method': missing"),
        ([{**ROW, "zip": "10001"}], 400, "feature 'zip': unknown feature"),
        ([ROW, {**ROW, "contract_type": "Lifetime"}], 400, "row 1, feature 'contract_type'"),
        ([{**ROW, "monthly_charges": "20.5"}], 400, "feature 'monthly_charges'"),
    ],
    ids=["not-a-list", "empty", "too-many", "row-not-object", "nan", "inf", "missing", "unknown", "unseen-category",
         "string-number"],
)
def test_invalid_rows_are_refused_with_a_message_naming_the_problem(instances, status, message):
    response = validate_rows(instances, max_rows=10)

    assert response.status_code == status
    assert message in error_of(response)


def test_oip_tensors_become_rows_in_feature_order():
    payload = {"inputs": [{"name": f, "shape": [2], "datatype": "BYTES", "data": [ROW[f], ROW[f]]}
                          for f in reversed(FEATURES)]}

    assert rows_from_oip(payload) == [ROW, ROW]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([], "non-empty 'inputs'"),
        ({"inputs": [{"shape": [1], "data": [1]}]}, "must be an object with a 'name'"),
        ({"inputs": [{"name": "tenure", "shape": [1], "data": [1]}] * 2}, "given twice"),
        ({"inputs": [{"name": "tenure", "shape": [1], "data": 1}]}, "'data' must be a list"),
        ({"inputs": [{"name": f, "shape": [1 + (f == "tenure")], "data": [ROW[f]] * (1 + (f == "tenure"))}
                     for f in FEATURES]}, "different lengths"),
    ],
)
def test_malformed_oip_requests_are_refused(payload, message):
    response = rows_from_oip(payload)

    assert response.status_code == 400 and message in error_of(response)


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
    [(200, None), (400, "invalid_input"), (404, "invalid_input"), (413, "payload_too_large"), (500, "model_error"),
     (503, "unavailable")],
)
def test_error_types_separate_client_mistakes_from_model_failures(status, error_type):
    assert error_type_for(status) == error_type

"""Wire formats: the MLflow scoring protocol (``POST /invocations``) and Open Inference Protocol v2 REST bodies.

``invocation_rows(body, content_type, schema)`` reads what ``mlflow models serve`` accepts: JSON with exactly one of
``dataframe_split`` (``{"columns", "data"}``), ``dataframe_records``, ``instances`` or ``inputs`` (rows, or a dict of
column/tensor name to values), or a CSV body with a header row. It returns request rows for
``ServedModel.predict_rows(rows, mlflow=True)``, which reads them as MLflow's schema enforcement does (extra columns
dropped, ``null`` a missing value where the column can hold one); ``invocation_answer`` gives
``{"predictions": ...}`` as MLflow does. Errors on this route carry MLflow's ``error_code`` and ``message``
(``InvalidInput.mlflow_body``). ``oip_infer_response`` builds
an OIP v2 infer response. Parsing problems raise ``InvalidInput`` naming what was wrong and what is accepted.
"""

from __future__ import annotations

import csv
import io
import json
import math
import typing as t

from service.errors import InvalidInput
from service.predictor import Prediction
from service.schema import InputSchema

INVOCATION_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
CSV_TYPES = ("text/csv", "application/csv")


def parse_json(body: bytes) -> t.Any:
    """The JSON document in ``body``; InvalidInput when it is not JSON."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidInput(f"request body is not valid JSON: {err}") from None
    except RecursionError:  # json.loads recurses once per nesting level: [[[[...]]]] is a client's doing
        raise InvalidInput("request body is not valid JSON: nested too deeply") from None


def invocation_rows(body: bytes, content_type: str, schema: InputSchema) -> list[t.Any]:
    """Request rows from an MLflow scoring protocol body (JSON or CSV), for ``predict_rows(..., mlflow=True)``.

    Read as MLflow 3.17.2's scoring server reads them (mlflow/pyfunc/scoring_server/__init__.py, ``invocations``
    and ``infer_and_parse_data``): the content type's only parameter is ``charset=utf-8`` (415 otherwise), and no
    rows is refused naming the key they were sent in.
    """
    media_type, _, parameters = content_type.partition(";")
    media_type = media_type.strip().lower()
    if media_type not in (*CSV_TYPES, "application/json", ""):
        raise InvalidInput(f"unsupported content type {media_type!r}; send application/json or text/csv",
                           status=415)
    for parameter in filter(None, (part.strip() for part in parameters.split(";"))):
        name, _, value = parameter.partition("=")
        if name.strip().lower() != "charset":
            raise InvalidInput(f"unsupported content type parameter {name.strip()!r}; only charset=utf-8 is read",
                               status=415)
        if value.strip().strip('"').lower() != "utf-8":
            raise InvalidInput(f"unsupported charset {value.strip()!r}; send UTF-8", status=415)
    if media_type in CSV_TYPES:
        rows = csv_rows(body, schema)
        if not rows:
            # The header names the columns: MLflow's model sees no rows, not missing inputs.
            raise InvalidInput("the CSV body has a header but no rows; send at least one row")
        return rows
    payload = parse_json(body)
    if not isinstance(payload, dict):
        raise InvalidInput(f"the body must be a JSON object with one of {', '.join(INVOCATION_KEYS)}")
    given = [key for key in INVOCATION_KEYS if key in payload]
    unknown = sorted(set(payload) - set(INVOCATION_KEYS) - {"params"})
    if len(given) != 1 or unknown:
        found = ", ".join(sorted(payload)) or "nothing"
        raise InvalidInput(f"the body needs exactly one of {', '.join(INVOCATION_KEYS)} (got {found})")
    key = given[0]
    value = payload[key]
    if key == "dataframe_split":
        rows = _split_rows(value)
        if not rows:
            raise InvalidInput("'dataframe_split.data' is empty; send at least one row")
        return rows
    if key == "dataframe_records":
        if not isinstance(value, list):
            raise InvalidInput(f"'dataframe_records' must be a list of objects, got {type(value).__name__}")
        rows = value
    # instances / inputs: rows, or one list of values per column or named tensor.
    elif isinstance(value, dict):
        rows = _columns_to_rows(value, key, schema)
    elif not isinstance(value, list):
        raise InvalidInput(f"{key!r} must be a list of rows or an object of columns, got {type(value).__name__}")
    else:
        rows = value
    if not rows:
        # No rows and so no columns: MLflow's _enforce_schema reports the signature's inputs as missing.
        raise InvalidInput(f"{key!r} is empty; send at least one row", error_code="INVALID_PARAMETER_VALUE")
    return rows


def invocation_answer(prediction: Prediction) -> dict[str, t.Any]:
    """``{"predictions": ...}`` as MLflow answers; a prediction that is NaN or infinite is refused (422): MLflow
    would write ``NaN``/``Infinity`` into its body, which is not JSON (a missing or huge number in the request,
    passed through by the model, is how one arises)."""
    values = prediction.values
    row = _first_non_finite(values)
    if row is not None:
        raise InvalidInput(f"the model answered NaN or infinity for row {row}, which JSON cannot carry; check that "
                           "row's missing (null) or out-of-range values", status=422,
                           detail=[{"row": row, "feature": None, "problem": "prediction is NaN or infinity"}])
    return {"predictions": values}


def _first_non_finite(values: t.Any) -> int | None:
    """The index of the first row holding a NaN or infinite float, or None."""
    def finite(value: t.Any) -> bool:
        if isinstance(value, float):
            return math.isfinite(value)
        if isinstance(value, dict):
            return all(finite(item) for item in value.values())
        if isinstance(value, list):
            return all(finite(item) for item in value)
        return True

    if isinstance(values, list):
        return next((index for index, value in enumerate(values) if not finite(value)), None)
    return None if finite(values) else 0


def _split_rows(value: t.Any) -> list[dict[str, t.Any]]:
    if not isinstance(value, dict) or not isinstance(value.get("data"), list):
        raise InvalidInput("'dataframe_split' must be an object with 'columns' (names) and 'data' (rows of values)")
    if extra := sorted(set(value) - {"columns", "data", "index"}):
        raise InvalidInput(f"'dataframe_split' takes 'columns', 'data' and 'index', not {', '.join(extra)}")
    columns, data = value.get("columns"), value["data"]
    if not isinstance(columns, list) or not all(isinstance(name, str) for name in columns):
        raise InvalidInput("'dataframe_split.columns' must be a list of column names")
    rows = []
    for index, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(columns):
            raise InvalidInput(f"'dataframe_split.data' row {index} must be a list of {len(columns)} values, "
                               f"one per column")
        rows.append(dict(zip(columns, row)))
    return rows


def _columns_to_rows(value: dict[str, t.Any], key: str, schema: InputSchema) -> list[t.Any]:
    lengths = {name: len(values) if isinstance(values, list) else None for name, values in value.items()}
    if not value or None in lengths.values():
        raise InvalidInput(f"{key!r} as an object maps each column or input name to a list of values, one per row")
    if len(set(lengths.values())) > 1:
        raise InvalidInput(f"{key!r} columns have different lengths {sorted(set(lengths.values()))}")
    count = next(iter(lengths.values()))
    return [{name: values[index] for name, values in value.items()} for index in range(count)]


def csv_rows(body: bytes, schema: InputSchema) -> list[dict[str, t.Any]]:
    """Rows of a CSV body with a header line; values are typed by the signature's column types.

    As ``pandas.read_csv`` reads them for MLflow (scoring_server ``parse_csv_input``): an empty cell, or a row
    short of its last values, is a missing value (``None``); a row with more values than the header is refused.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidInput(f"the CSV body is not UTF-8: {err}") from None
    reader = csv.reader(io.StringIO(text), strict=True)  # an unclosed quote is an error, as in pandas
    try:
        header = next(reader)
        records = list(reader)
    except (StopIteration, csv.Error) as err:
        raise InvalidInput(f"the CSV body needs a header line and rows: {err or 'empty body'}") from None
    types = {column.name: column.type for column in schema.columns}
    rows = []
    for line, record in enumerate(records):
        if not record:
            continue
        if len(record) > len(header):
            raise InvalidInput(f"CSV row {line}: {len(record)} values for {len(header)} columns")
        record = record + [""] * (len(header) - len(record))
        rows.append({name: None if text == "" else _csv_value(text, types.get(name), line, name)
                     for name, text in zip(header, record)})
    return rows


def _csv_value(text: str, kind: str | None, row: int, column: str) -> t.Any:
    """A CSV cell as the signature's type wants it (left as text when the type cannot take it: validation says so)."""
    try:
        if kind in ("double", "float"):
            value = float(text)
            return value if math.isfinite(value) else text
        if kind in ("long", "integer"):
            return int(text)
        if kind == "boolean":
            return {"true": True, "false": False, "1": True, "0": False}.get(text.strip().lower(), text)
        if kind is None:
            # No signature for this column: a number where it reads as one, like pandas.read_csv.
            for convert in (int, float):
                try:
                    return convert(text)
                except ValueError:
                    continue
    except ValueError:
        return text
    return text


def oip_infer_response(prediction: Prediction, request_id: t.Any) -> dict[str, t.Any]:
    """An OIP v2 infer response: the model's identity, its output tensors, the variant, and the request's id."""
    identity = prediction.identity
    body: dict[str, t.Any] = {
        "model_name": identity.name,
        "model_version": identity.version,
        "outputs": prediction.oip_outputs(),
        "parameters": {"variant": identity.variant},
    }
    if isinstance(request_id, str):
        body["id"] = request_id
    return body

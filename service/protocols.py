"""Wire formats: the MLflow scoring protocol (``POST /invocations``) and Open Inference Protocol v2 REST bodies.

``invocation_rows(body, content_type, schema)`` reads what ``mlflow models serve`` accepts: JSON with exactly one of
``dataframe_split`` (``{"columns", "data"}``), ``dataframe_records``, ``instances`` or ``inputs`` (rows, or a dict of
column/tensor name to values), or a CSV body with a header row. It returns request rows for
``ServedModel.predict_rows``; the answer is ``{"predictions": ...}`` as MLflow gives it. ``oip_infer_response`` builds
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
    """Request rows from an MLflow scoring protocol body (JSON or CSV)."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type in CSV_TYPES:
        return csv_rows(body, schema)
    if media_type not in ("application/json", ""):
        raise InvalidInput(f"unsupported content type {media_type!r}; send application/json or text/csv",
                           status=415)
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
        return _split_rows(value)
    if key == "dataframe_records":
        if not isinstance(value, list):
            raise InvalidInput(f"'dataframe_records' must be a list of objects, got {type(value).__name__}")
        return value
    # instances / inputs: rows, or one list of values per column or named tensor.
    if isinstance(value, dict):
        return _columns_to_rows(value, key, schema)
    if not isinstance(value, list):
        raise InvalidInput(f"{key!r} must be a list of rows or an object of columns, got {type(value).__name__}")
    return value


def _split_rows(value: t.Any) -> list[dict[str, t.Any]]:
    if not isinstance(value, dict) or not isinstance(value.get("data"), list):
        raise InvalidInput("'dataframe_split' must be an object with 'columns' (names) and 'data' (rows of values)")
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
    """Rows of a CSV body with a header line; values are typed by the signature's column types."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidInput(f"the CSV body is not UTF-8: {err}") from None
    reader = csv.reader(io.StringIO(text))
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
        if len(record) != len(header):
            raise InvalidInput(f"CSV row {line}: {len(record)} values for {len(header)} columns")
        rows.append({name: _csv_value(text, types.get(name), line, name)
                     for name, text in zip(header, record) if text != "" or types.get(name) == "string"})
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

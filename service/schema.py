"""The served model's input schema, read from its MLflow signature, and request validation against it.

``InputSchema.from_signature(signature_inputs)`` takes the signature's inputs as MLflow writes them in the
``MLmodel`` file (``ModelSignature.inputs.to_dict()``: a list of column specs ``{"name", "type", "required"}`` or
tensor specs ``{"type": "tensor", "tensor-spec": {"dtype", "shape"}}``), or ``None`` for a model logged without one.
``validate_rows`` turns request rows (``/predict``, ``/invocations``) into what the model takes: a DataFrame with
the signature's columns and dtypes, a NumPy array, or a dict of named arrays. ``rows_from_tensors`` turns Open
Inference Protocol tensors into the same rows. Every refusal is an ``InvalidInput`` naming the row, the column
and the value, and what would be accepted. Column types: double, float, long, integer, boolean, string, binary
(base64 text), datetime (ISO 8601 text); MLflow's array/object/map types are passed through unchecked.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import math
import typing as t

import numpy as np
import pydantic
import pydantic_core
import typing_extensions

from service.errors import InvalidInput

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _fits_float32(value: float) -> float:
    """A float32 column's value must survive the cast: 1e300 would become infinity (a RuntimeWarning, then a model
    refusing the row), so it is the request's fault, named as such."""
    if math.isfinite(value) and abs(value) > FLOAT32_MAX:
        raise pydantic_core.PydanticCustomError(
            "float32_range", f"out of the float32 range (-{FLOAT32_MAX:.7g}..{FLOAT32_MAX:.7g}), got {value:g}")
    return value


# MLflow column type -> (Python type the row field is validated as, NumPy dtype of the DataFrame column, OIP datatype)
COLUMN_TYPES: dict[str, tuple[t.Any, t.Any, str]] = {
    "double": (float, np.float64, "FP64"),
    "float": (t.Annotated[float, pydantic.AfterValidator(_fits_float32)], np.float32, "FP32"),
    "long": (t.Annotated[int, pydantic.Field(ge=INT64[0], le=INT64[1])], np.int64, "INT64"),
    "integer": (t.Annotated[int, pydantic.Field(ge=INT32[0], le=INT32[1])], np.int32, "INT32"),
    "boolean": (bool, np.bool_, "BOOL"),
    "string": (str, object, "BYTES"),
    "binary": (str, object, "BYTES"),
    "datetime": (t.Annotated[datetime.datetime, pydantic.Strict(False)], "datetime64[ns]", "BYTES"),
    "any": (t.Any, object, "BYTES"),
}
# NumPy dtype kind -> OIP datatype, for tensor signatures and for outputs.
OIP_DATATYPES = {"float64": "FP64", "float32": "FP32", "float16": "FP16", "int64": "INT64", "int32": "INT32",
                 "int16": "INT16", "int8": "INT8", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32",
                 "uint64": "UINT64", "bool": "BOOL"}
# Which inferred NumPy kinds a tensor of a given kind accepts (no silent truncation of 1.5 to an integer).
ACCEPTED_KINDS = {"f": "iuf", "i": "iu", "u": "iu", "b": "b", "U": "U", "O": "UOifb", "S": "US"}


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of a column-based signature."""

    name: str
    type: str
    required: bool = True

    @property
    def oip_datatype(self) -> str:
        return COLUMN_TYPES[self.type][2]


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One tensor of a tensor-based signature; ``shape`` has -1 for a free dimension (the first is the batch)."""

    name: str | None
    dtype: str
    shape: tuple[int, ...]

    @property
    def oip_datatype(self) -> str:
        return OIP_DATATYPES.get(self.dtype, "BYTES")


@dataclasses.dataclass(frozen=True)
class InputSchema:
    """The inputs a model takes: columns, tensors, or neither (a model logged without a signature)."""

    columns: tuple[Column, ...] = ()
    tensors: tuple[Tensor, ...] = ()

    @classmethod
    def from_signature(cls, inputs: list[dict[str, t.Any]] | None) -> InputSchema:
        """Read MLflow's serialized signature inputs (``Schema.to_dict()``); ``None`` means no signature."""
        if not inputs:
            return cls()
        if all(spec.get("type") == "tensor" for spec in inputs):
            return cls(tensors=tuple(
                Tensor(spec.get("name"), str(np.dtype(spec["tensor-spec"]["dtype"])),
                       tuple(int(d) for d in spec["tensor-spec"]["shape"]))
                for spec in inputs
            ))
        columns = []
        for position, spec in enumerate(inputs):
            kind = spec.get("type")
            columns.append(Column(
                name=str(spec.get("name", position)),
                type=kind if isinstance(kind, str) and kind in COLUMN_TYPES else "any",
                required=bool(spec.get("required", True)),
            ))
        return cls(columns=tuple(columns))

    @property
    def kind(self) -> str:
        """``columns``, ``tensors`` or ``none``."""
        return "columns" if self.columns else "tensors" if self.tensors else "none"

    @property
    def names(self) -> tuple[str, ...]:
        """Column names, or tensor names (empty for one unnamed tensor)."""
        if self.columns:
            return tuple(column.name for column in self.columns)
        return tuple(tensor.name for tensor in self.tensors if tensor.name)

    def oip_inputs(self) -> list[dict[str, t.Any]]:
        """The Open Inference Protocol v2 metadata of the inputs: name, datatype and shape per tensor."""
        if self.columns:
            return [{"name": c.name, "datatype": c.oip_datatype, "shape": [-1]} for c in self.columns]
        return [{"name": tensor.name or "input", "datatype": tensor.oip_datatype, "shape": list(tensor.shape)}
                for tensor in self.tensors]


# ---------------------------------------------------------------- rows (column signatures)


# Column types whose pandas column has a missing value (NaN, None, NaT): MLflow's scoring server lets `null` through
# for them (mlflow/utils/proto_json_utils.py, cast_df_types_according_to_schema: `astype(float64)` makes it NaN;
# mlflow/models/utils.py, _enforce_mlflow_datatype: a float64 column is a double, an object column a string).
# A long, integer or boolean column has none (`astype(int64)` fails; `astype(bool)` would make it False).
NULLABLE_TYPES = ("double", "float", "string", "binary", "datetime", "any")


def row_type(schema: InputSchema, missing_values: bool = False) -> t.Any:
    """The typed row of a column signature: a TypedDict with the real column names, strict and closed.

    ``missing_values``: a required column of a ``NULLABLE_TYPES`` type takes ``null`` (the MLflow scoring protocol).
    """
    fields: dict[str, t.Any] = {}
    for column in schema.columns:
        python_type = COLUMN_TYPES[column.type][0]
        if not column.required:
            fields[column.name] = typing_extensions.NotRequired[python_type | None]
        elif missing_values and column.type in NULLABLE_TYPES:
            fields[column.name] = python_type | None
        else:
            fields[column.name] = python_type
    row = typing_extensions.TypedDict("Row", fields)  # type: ignore[misc]
    row.__pydantic_config__ = pydantic.ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    return row


# An element of a float tensor: a JSON number, integers included; never NaN, infinity, true or "1.5".
FINITE_NUMBER = t.Annotated[float, pydantic.AllowInfNan(False), pydantic.Strict()]


def request_row_type(schema: InputSchema) -> t.Any:
    """The type of one request row, for every kind of schema: what ``/predict_batch`` checks per request, before
    BentoML merges requests into a batch (so that one client's bad row fails only that client's request).

    Columns: ``row_type``. One unnamed tensor: nested lists of its element type, with the signature's fixed
    dimensions as lengths; named tensors: an object of them. No signature: an object or a list (what ``/predict``
    accepts; whether the values suit the model, and the rows each other, is checked on the merged batch).
    """
    if schema.columns:
        return row_type(schema)
    if len(schema.tensors) == 1 and not schema.tensors[0].name:
        return _tensor_row_type(schema.tensors[0])
    if schema.tensors:
        fields = {tensor.name: _tensor_row_type(tensor) for tensor in schema.tensors}
        row = typing_extensions.TypedDict("TensorRow", fields)  # type: ignore[misc]
        row.__pydantic_config__ = pydantic.ConfigDict(extra="forbid", strict=True)
        return row
    return t.Union[dict[str, t.Any], list[t.Any]]


def _tensor_row_type(tensor: Tensor) -> t.Any:
    """One row of ``tensor`` (its shape without the batch dimension) as nested lists of its element type."""
    dtype = np.dtype(tensor.dtype)
    if dtype.kind == "f":
        row: t.Any = FINITE_NUMBER
    elif dtype.kind in "iu":
        limits = np.iinfo(dtype)
        row = t.Annotated[pydantic.StrictInt, pydantic.Field(ge=int(limits.min), le=int(limits.max))]
    elif dtype.kind == "b":
        row = pydantic.StrictBool
    elif dtype.kind in "US":
        row = pydantic.StrictStr
    else:
        row = t.Any
    for size in reversed(tensor.shape[1:]):
        row = t.Annotated[list[row], pydantic.Field(min_length=size, max_length=size)] if size >= 0 else list[row]
    return row


@dataclasses.dataclass(frozen=True)
class Checked:
    """One request's rows, checked against the signature: ``rows`` of them, ``data`` what ``RowValidator.merge``
    builds the model's input from (validated rows of columns, a tensor array or a dict of them, or a DataFrame)."""

    rows: int
    data: t.Any


class RowValidator:
    """Validates request rows against a schema and builds the model's input from them."""

    def __init__(self, schema: InputSchema, max_rows: int) -> None:
        self.schema = schema
        self.max_rows = max_rows
        self.row = row_type(schema) if schema.columns else None
        self._rows_adapter = pydantic.TypeAdapter(list[self.row]) if self.row is not None else None
        self._mlflow_rows_adapter = (pydantic.TypeAdapter(list[row_type(schema, missing_values=True)])
                                     if schema.columns else None)
        self._expected = ", ".join(schema.names)

    def check_count(self, count: int) -> None:
        """Refuse an empty request or one over the row limit."""
        if count == 0:
            raise InvalidInput("'instances' is empty; send at least one row")
        if count > self.max_rows:
            raise InvalidInput(f"{count} rows exceeds the maximum of {self.max_rows} rows per request", status=413)

    def validate_rows(self, instances: t.Any, *, mlflow: bool = False) -> t.Any:
        """The model input for ``instances`` (a list of rows); raises InvalidInput naming the first problem.

        ``mlflow`` reads them as MLflow's pyfunc schema enforcement does
        (mlflow/models/utils.py, ``_enforce_schema``): inputs the signature does not name are dropped ("Any extra
        columns are ignored"), and ``null`` is a missing value in the columns that can hold one (``NULLABLE_TYPES``).
        """
        return self.merge([self.check_rows(instances, mlflow=mlflow)])

    def check_rows(self, instances: t.Any, *, mlflow: bool = False) -> Checked:
        """``instances`` checked on their own (``validate_rows``'s rules and refusals), not yet the model's input:
        ``merge`` builds that from one or more checked requests, so concurrent requests share one model call while
        a bad one is refused alone, before merging."""
        if not isinstance(instances, list):
            raise InvalidInput(f"'instances' must be a list of rows, got {type(instances).__name__}")
        self.check_count(len(instances))
        ignored: list[str] = []
        if mlflow and self.schema.names:
            known = set(self.schema.names)
            ignored = sorted({name for row in instances if isinstance(row, dict) for name in row} - known)
            instances = [{name: value for name, value in row.items() if name in known} if isinstance(row, dict)
                         else row for row in instances]
        if self.schema.columns:
            return Checked(len(instances), self._column_rows(instances, mlflow, ignored))
        if self.schema.tensors:
            return Checked(len(instances), self._tensor_input(instances))
        return Checked(len(instances), self._unchecked_frame(instances))

    def checked_rows(self, rows: list[t.Any]) -> Checked:
        """Rows already validated against ``row_type`` (BentoML validated ``/predict_batch``'s typed body)."""
        self.check_count(len(rows))
        return Checked(len(rows), rows)

    def merge(self, parts: t.Sequence[Checked]) -> t.Any:
        """The model input for checked requests taken together, their rows in order: one DataFrame of the
        signature's columns and dtypes, one array per tensor, or one DataFrame of a model without a signature.

        Raises ValueError when the parts cannot share one input (tensors of different free dimensions, frames of
        different columns); the caller then scores them apart.
        """
        if self.schema.columns:
            rows = parts[0].data if len(parts) == 1 else [row for part in parts for row in part.data]
            return self.frame(rows)
        if len(parts) == 1:
            return parts[0].data
        first = parts[0].data
        if isinstance(first, np.ndarray):
            return np.concatenate([part.data for part in parts])
        if isinstance(first, dict):
            return {name: np.concatenate([part.data[name] for part in parts]) for name in first}
        import pandas as pd

        if any(list(part.data.columns) != list(first.columns) for part in parts):
            raise ValueError("requests name different columns")
        return pd.concat([part.data for part in parts], ignore_index=True)

    # ---- columns

    def _column_rows(self, instances: list[t.Any], mlflow: bool = False,
                     ignored: t.Sequence[str] = ()) -> list[dict[str, t.Any]]:
        for index, row in enumerate(instances):
            if not isinstance(row, dict):
                raise InvalidInput(f"row {index} must be an object of columns ({self._expected}), "
                                   f"got {type(row).__name__}")
        adapter = self._mlflow_rows_adapter if mlflow else self._rows_adapter
        try:
            rows = adapter.validate_python(instances)
        except pydantic.ValidationError as err:
            message, detail = describe_row_errors(err, self._expected)
            code = None
            if detail[0]["problem"] == MISSING_FEATURE:
                # MLflow's code for a column the signature requires and the input lacks (_enforce_schema), which
                # also names the extra inputs it ignored: the missing one is often a misspelt one of them.
                code = "INVALID_PARAMETER_VALUE"
                if ignored:
                    message += f"; ignored {', '.join(map(repr, ignored))}, which the signature does not name"
            raise InvalidInput(message, detail=detail, error_code=code) from None
        return rows

    def frame(self, rows: list[dict[str, t.Any]]) -> t.Any:
        """Validated rows as a DataFrame with the signature's column order and dtypes (what MLflow's pyfunc makes)."""
        import pandas as pd

        data = {}
        for column in self.schema.columns:
            values = [row.get(column.name) for row in rows]
            dtype = COLUMN_TYPES[column.type][1]
            if column.type == "binary":
                values = [None if value is None else _base64(value, column.name) for value in values]
            if any(value is None for value in values) and np.dtype(dtype).kind == "f":
                # A missing number is NaN in the column's own dtype (float32 stays float32), as astype makes it.
                data[column.name] = np.array([np.nan if value is None else value for value in values], dtype=dtype)
            elif any(value is None for value in values):
                data[column.name] = pd.Series(values, dtype=object if dtype is object else None)
            else:
                data[column.name] = np.array(values, dtype=dtype)
        return pd.DataFrame(data, columns=list(self.schema.names))

    # ---- tensors

    def _tensor_input(self, instances: list[t.Any]) -> t.Any:
        tensors = self.schema.tensors
        if len(tensors) == 1 and not (tensors[0].name and all(isinstance(row, dict) for row in instances)):
            return tensor_array(tensors[0], instances, "instances")
        for index, row in enumerate(instances):
            if not isinstance(row, dict):
                raise InvalidInput(f"row {index} must be an object of tensors ({self._expected}), "
                                   f"got {type(row).__name__}")
            unknown = sorted(set(row) - set(self.schema.names))
            if unknown:
                raise InvalidInput(f"row {index}: unknown input {unknown[0]!r}; expected {self._expected}")
        return {tensor.name: tensor_array(tensor, [_field(row, tensor.name, index) for index, row in
                                                  enumerate(instances)], tensor.name)
                for tensor in tensors}

    # ---- no signature

    def _unchecked_frame(self, instances: list[t.Any]) -> t.Any:
        import pandas as pd

        if all(isinstance(row, dict) for row in instances):
            keys = list(instances[0])
            for index, row in enumerate(instances):
                if list(row) != keys and set(row) != set(keys):
                    raise InvalidInput(f"row {index} has columns {sorted(row)}, row 0 has {sorted(keys)}; "
                                       "every row needs the same columns")
                for name, value in row.items():
                    if isinstance(value, float) and not math.isfinite(value):
                        raise InvalidInput(f"invalid input at row {index}, feature {name!r}: must be a finite "
                                           "number, not NaN or infinity")
            return pd.DataFrame(instances, columns=keys)
        if all(isinstance(row, list) for row in instances):
            try:
                array = np.asarray(instances)
            except ValueError as err:
                raise InvalidInput(f"rows must all have the same length: {err}") from None
            if array.dtype == object or array.dtype.kind not in "iufbU":
                raise InvalidInput("rows of a model without a signature must be objects of columns, or lists of "
                                   "numbers/strings of one length")
            return pd.DataFrame(array)
        raise InvalidInput("rows must all be objects (column -> value) or all be lists of values")


def _field(row: dict[str, t.Any], name: str, index: int) -> t.Any:
    if name not in row:
        raise InvalidInput(f"row {index}: missing input {name!r}", detail=[
            {"row": index, "feature": name, "problem": "missing required input"}])
    return row[name]


def _base64(value: str, column: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise InvalidInput(f"column {column!r}: binary values are base64 text, got {value[:40]!r}") from None


def tensor_array(tensor: Tensor, values: t.Any, where: str) -> np.ndarray:
    """``values`` (nested lists, first dimension the batch) as an array of the tensor's dtype and shape."""
    label = f"input {tensor.name!r}" if tensor.name else where
    expected = f"shape {list(tensor.shape)} of {tensor.dtype}"
    try:
        inferred = np.asarray(values)
    except ValueError:
        raise InvalidInput(f"{label}: rows have different shapes; expected {expected}") from None
    target = np.dtype(tensor.dtype)
    if inferred.size and inferred.dtype.kind not in ACCEPTED_KINDS.get(target.kind, "iufbUO"):
        sample = json.dumps(np.ravel(inferred)[:1].tolist(), default=str)[1:-1][:60]
        raise InvalidInput(f"{label}: values must be {target} (got {sample}); expected {expected}")
    if inferred.ndim != len(tensor.shape) or any(
        want not in (-1, got) for want, got in zip(tensor.shape[1:], inferred.shape[1:])
    ):
        raise InvalidInput(f"{label}: got shape {list(inferred.shape)}, expected {expected} "
                           "(the first dimension is the number of rows)")
    if target.kind == "f" and inferred.dtype.kind == "f" and not np.isfinite(inferred).all():
        raise InvalidInput(f"{label}: values must be finite numbers, not NaN or infinity")
    if target == np.float32 and inferred.dtype.kind in "iuf" and inferred.size and (
        np.abs(inferred.astype(np.float64)).max() > FLOAT32_MAX
    ):
        raise InvalidInput(f"{label}: values must fit float32 (-{FLOAT32_MAX:.7g}..{FLOAT32_MAX:.7g})")
    if target.kind in "iu" and inferred.size:
        limits = np.iinfo(target)
        if inferred.min() < limits.min or inferred.max() > limits.max:
            raise InvalidInput(f"{label}: values must fit {target} ({limits.min}..{limits.max})")
    return inferred.astype(target, copy=False)


MISSING_FEATURE = "missing required feature"


def describe_row_errors(err: pydantic.ValidationError, expected: str) -> tuple[str, list[dict[str, t.Any]]]:
    """Turn row validation errors into one readable message plus a list naming row, feature and problem."""
    detail = []
    for item in err.errors(include_url=False, include_context=False):
        loc = list(item["loc"])
        row = loc[0] if loc and isinstance(loc[0], int) else None
        feature = next((str(part) for part in loc[1:] if isinstance(part, str)), None)
        problem = item["msg"]
        if item["type"] == "extra_forbidden":
            problem = f"unknown feature; expected only {expected}"
        elif item["type"] == "missing":
            problem = MISSING_FEATURE
        elif item["type"] == "finite_number":
            problem = "must be a finite number, not NaN or infinity"
        elif item["type"].endswith(("_type", "_parsing")) or item["type"] == "literal_error":
            problem = f"{problem}, got {json.dumps(item.get('input'), default=str)[:60]}"
        detail.append({"row": row, "feature": feature, "problem": problem})
    # An unknown column is usually a misspelt one: name it first (the missing one is then its intended name).
    detail.sort(key=lambda item: (item["row"] or 0, not item["problem"].startswith("unknown feature")))
    first = detail[0]
    places = [f"row {first['row']}"] if first["row"] is not None else []
    places += [f"feature {first['feature']!r}"] if first["feature"] else []
    others = len(detail) - 1
    more = f" (and {others} more problem{'s' if others > 1 else ''})" if others else ""
    return f"invalid input at {', '.join(places) or 'instances'}: {first['problem']}{more}", detail


# ---------------------------------------------------------------- Open Inference Protocol tensors


def rows_from_tensors(schema: InputSchema, inputs: t.Any) -> list[t.Any]:
    """Turn OIP v2 input tensors (``[{"name", "shape", "datatype", "data"}, ...]``) into request rows.

    Column signatures take one 1-D tensor per column; tensor signatures one tensor per input, its first
    dimension the rows, ``data`` flat or nested; a model without a signature takes named 1-D tensors.
    """
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("an infer request needs a non-empty 'inputs' list of tensors, one per input")
    tensors: dict[str, np.ndarray] = {}
    for position, tensor in enumerate(inputs):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise InvalidInput(f"inputs[{position}] must be an object with a 'name'")
        name, data, shape = tensor["name"], tensor.get("data"), tensor.get("shape")
        if schema.names and name not in schema.names and not (len(schema.tensors) == 1 and not schema.names):
            raise InvalidInput(f"inputs[{position}]: unknown input {name!r}; expected {', '.join(schema.names)}")
        if name in tensors:
            raise InvalidInput(f"inputs[{position}]: input {name!r} given twice")
        if not isinstance(data, list):
            raise InvalidInput(f"input {name!r}: 'data' must be a list")
        if not (isinstance(shape, list) and shape and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise InvalidInput(f"input {name!r}: 'shape' must be a list of non-negative integers, got {shape!r}")
        flat = _flatten(data)
        if math.prod(shape) != len(flat):
            raise InvalidInput(f"input {name!r}: shape {shape!r} does not match {len(flat)} data values")
        tensors[name] = np.array(flat, dtype=object).reshape(shape) if flat else np.empty(shape, dtype=object)
    if schema.tensors and len(schema.tensors) == 1 and not schema.names:
        [array] = tensors.values()
        return array.tolist()
    names = list(schema.names) or list(tensors)
    required = [c.name for c in schema.columns if c.required] if schema.columns else names
    missing = [name for name in required if name not in tensors]
    if missing:
        raise InvalidInput(f"missing input tensor(s) {', '.join(missing)}", detail=[
            {"row": None, "feature": name, "problem": "missing required feature"} for name in missing])
    lengths = {array.shape[0] for array in tensors.values()}
    if len(lengths) > 1:
        raise InvalidInput(f"input tensors have different lengths {sorted(lengths)}; give one value per row")
    count = lengths.pop()
    if schema.tensors:
        return [{name: tensors[name][index].tolist() for name in tensors} for index in range(count)]
    # Column data: a [n] or [n, 1] tensor per column; its values are the column's, one per row.
    columns = {name: [value[0] if isinstance(value, list) and len(value) == 1 else value
                      for value in array.tolist()] for name, array in tensors.items()}
    return [{name: columns[name][index] for name in names if name in columns} for index in range(count)]


def _flatten(data: list[t.Any]) -> list[t.Any]:
    """OIP allows ``data`` flat or nested in row-major order."""
    if not any(isinstance(item, list) for item in data):
        return data
    flat: list[t.Any] = []
    for item in data:
        flat.extend(_flatten(item) if isinstance(item, list) else [item])
    return flat

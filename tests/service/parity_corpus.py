"""The requests of the MLflow parity suite: valid bodies in every input format, and bad ones of every class.

``corpus(key, model)`` builds them for one model of ``tests/service/parity_models.py`` from its valid rows: JSON
(``dataframe_split``, ``dataframe_records``, ``instances``, ``inputs``, as rows and as columns) and CSV, then wrong
types, missing, extra, null, empty, malformed and out-of-range values, and wrong content types, each aimed at the
columns of the types that model has. ``DIFFERENCES`` is the one list of where mlserve answers otherwise than
``mlflow models serve`` on purpose; the README shows it (``differences_markdown``), and the suite checks both.
"""

from __future__ import annotations

import dataclasses
import json
import typing as t

from .parity_models import ParityModel

JSON = "application/json"


@dataclasses.dataclass(frozen=True)
class Difference:
    """A request class mlserve answers otherwise than `mlflow models serve` 3.17.2, on purpose."""

    request: str
    mlflow: str
    mlserve: str
    why: str
    mlflow_status: int  # what the suite checks MLflow answers (its first digit where a model decides: 200 or 400)
    mlserve_status: int


# Every deliberate difference, in the order the README lists them; a case names one by its key. Decided by reading
# MLflow 3.17.2: the JSON parser casts each column with pandas' `astype` to the signature's type
# (mlflow/utils/proto_json_utils.py: cast_df_types_according_to_schema, convert_data_type) before the schema is
# enforced (mlflow/models/utils.py: _enforce_schema, _enforce_mlflow_datatype). What _enforce_mlflow_datatype allows
# (int to long or double, float to double, object to string, missing values in double columns, extra columns
# ignored) mlserve does too; what only the parser's cast lets through, changing the value, is a 400 naming the
# column; where MLflow answers a body that is not JSON, mlserve answers a 4xx.
DIFFERENCES: dict[str, Difference] = {
    "fraction-for-integer": Difference(
        "`3.7` for a `long` or `integer` column",
        "200: the parser's `astype(int64)` truncates it to 3",
        "400 naming the column",
        "`_enforce_mlflow_datatype` refuses float to int itself (\"these conversions alter the values "
        "significantly\"); only the parser's cast lets it through",
        200, 400),
    "integer-overflow": Difference(
        "`2**63` for a `long` column",
        "200: `astype(int64)` wraps it to -9223372036854775808",
        "400 naming the column and the int64 range",
        "a wrapped number is another number",
        200, 400),
    "boolean-for-number": Difference(
        "`true` for a `double` or `float` column",
        "200: `astype(float64)` makes it 1.0",
        "400 naming the column",
        "`_enforce_mlflow_datatype` lists no boolean to number conversion",
        200, 400),
    "string-for-number": Difference(
        "`\"3.5\"` (a number in a JSON string) for a `double` or `float` column",
        "200: `astype(float64)` parses it",
        "400 naming the column",
        "`_enforce_mlflow_datatype` lists no string to number conversion (CSV cells are text, and are parsed "
        "by both)",
        200, 400),
    "string-for-boolean": Difference(
        "`\"yes\"` (or `\"no\"`, `\"false\"`) for a `boolean` column",
        "200: `astype(bool)` makes every non-empty string `True`",
        "400 naming the column",
        "truthiness, not a conversion: `\"false\"` would be `True`",
        200, 400),
    "null-for-boolean": Difference(
        "`null` for a `boolean` column",
        "200: `astype(bool)` makes it `False`",
        "400 naming the column",
        "`_enforce_mlflow_datatype` leaves object booleans alone because that cast \"converts None to boolean "
        "False\"; the parser casts anyway",
        200, 400),
    "non-string-for-string": Difference(
        "a number or a list for a `string` column",
        "passed to the model as it is (\"the object can contain any type\"): 200 where the model ignores it",
        "400 naming the column",
        "the signature says string",
        200, 400),
    "non-finite-token": Difference(
        "`NaN`, `Infinity` or a number beyond float64 (`1e309`) in the request",
        "Python's `json` reads them as floats: 200 where the model passes them on (with `NaN` or `Infinity` "
        "in its answer)",
        "400 naming the column; send `null` for a missing value",
        "RFC 8259 JSON has no such numbers",
        200, 400),
    "non-finite-answer": Difference(
        "a missing value (`null`, an empty or absent CSV cell) that the model answers with NaN",
        "200 with `NaN` in the body, which is not JSON",
        "422 naming the row",
        "a JSON client cannot read MLflow's answer; where the model refuses NaN both answer 4xx",
        200, 422),
    "empty-rows": Difference(
        "no rows for a model that takes none (`dataframe_split` with empty `data`, a CSV header alone)",
        "200 `{\"predictions\": []}` from a pyfunc; 400 from scikit-learn",
        "400 naming the key that is empty",
        "one answer for every model",
        200, 400),
    "no-content-type": Difference(
        "no `Content-Type` header",
        "500 Internal Server Error (`None.split` in `invocations`)",
        "read as JSON",
        "never a 5xx for a client's request",
        500, 200),
    "plain-text-415": Difference(
        "an unsupported content type, charset or content-type parameter",
        "415 with a plain-text body",
        "415 with `error_code` `BAD_REQUEST` and `message`",
        "every error of `/invocations` has MLflow's JSON fields",
        415, 415),
}


def differences_markdown() -> str:
    """The README's table of the deliberate differences (kept in sync by the parity suite)."""
    lines = ["| request | `mlflow models serve` 3.17.2 | mlserve `/invocations` | why |", "|---|---|---|---|"]
    lines += [f"| {d.request} | {d.mlflow} | {d.mlserve} | {d.why} |" for d in DIFFERENCES.values()]
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Case:
    """One request of the corpus."""

    model: str
    name: str
    body: bytes
    content_type: str = JSON
    # The key of DIFFERENCES when mlserve answers this request otherwise on purpose.
    difference: str | None = None
    # When the difference holds only for some models (a model that refuses NaN answers 4xx in both servers).
    difference_models: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.model}: {self.name}"


def _json(value: t.Any) -> bytes:
    return json.dumps(value).encode()


def _csv(columns: list[str], rows: list[list[t.Any]]) -> bytes:
    def cell(value: t.Any) -> str:
        return "" if value is None else str(value)

    return "\n".join([",".join(columns), *(",".join(cell(v) for v in row) for row in rows)]).encode() + b"\n"


def _with(rows: list[dict[str, t.Any]], **change: t.Any) -> list[dict[str, t.Any]]:
    """The rows with the first one changed."""
    return [{**rows[0], **change}, *rows[1:]]


def corpus(key: str, model: ParityModel, types: dict[str, str]) -> list[Case]:
    """Every request for one model; ``types`` maps its columns to their signature types."""
    rows = model.rows
    columns = list(rows[0])
    cases: list[Case] = []

    def add(name: str, body: t.Any, content_type: str = JSON, difference: str | None = None,
            only: tuple[str, ...] = ()) -> None:
        raw = body if isinstance(body, bytes) else _json(body)
        cases.append(Case(key, name, raw, content_type, difference, only))

    by_column = {name: [row[name] for row in rows] for name in columns}
    # ---- valid, in every format
    add("dataframe_split", {"dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in rows]}})
    add("dataframe_split with an index", {"dataframe_split": {
        "index": list(range(len(rows))), "columns": columns, "data": [[r[c] for c in columns] for r in rows]}})
    add("dataframe_records", {"dataframe_records": rows})
    add("instances as rows", {"instances": rows})
    add("instances as columns", {"instances": by_column})
    add("inputs as rows", {"inputs": rows})
    add("inputs as columns", {"inputs": by_column})
    add("one row", {"dataframe_records": rows[:1]})
    add("columns in another order", {"dataframe_records": [dict(reversed(list(r.items()))) for r in rows]})
    add("with params", {"dataframe_records": rows, "params": {}})
    add("charset=utf-8", {"dataframe_records": rows}, content_type="application/json; charset=utf-8")
    add("CSV", _csv(columns, [[r[c] for c in columns] for r in rows]), "text/csv")
    # ---- extra columns: MLflow's _enforce_schema ignores them
    add("extra column in records", {"dataframe_records": _with(rows, unexpected=1.5)})
    add("extra column in split", {"dataframe_split": {"columns": [*columns, "unexpected"],
                                                      "data": [[*(r[c] for c in columns), "x"] for r in rows]}})
    add("extra column in CSV", _csv([*columns, "unexpected"], [[*(r[c] for c in columns), 7] for r in rows]),
        "text/csv")
    # ---- missing
    add("missing column", {"dataframe_records": [{c: v for c, v in r.items() if c != columns[0]} for r in rows]})
    add("missing column in split", {"dataframe_split": {"columns": columns[1:],
                                                        "data": [[r[c] for c in columns[1:]] for r in rows]}})
    # ---- per column type: wrong types, nulls, out of range
    for column, kind in types.items():
        if kind in ("double", "float"):
            add(f"null for {kind} {column!r}", {"dataframe_records": _with(rows, **{column: None})},
                difference="non-finite-answer", only=("price",))
            add(f"text for {kind} {column!r}", {"dataframe_records": _with(rows, **{column: "abc"})})
            add(f"numeric text for {kind} {column!r}", {"dataframe_records": _with(rows, **{column: "3.5"})},
                difference="string-for-number")
            add(f"true for {kind} {column!r}", {"dataframe_records": _with(rows, **{column: True})},
                difference="boolean-for-number")
            add(f"1e309 for {kind} {column!r}", b'{"dataframe_records": [%s]}' % _json(rows[0]).replace(
                _json(rows[0][column]), b"1e309"), difference="non-finite-token", only=("price",))
            add(f"NaN token for {kind} {column!r}", b'{"dataframe_records": [%s]}' % _json(rows[0]).replace(
                _json(rows[0][column]), b"NaN"), difference="non-finite-token", only=("churn", "price"))
            add(f"empty CSV cell for {kind} {column!r}",
                _csv(columns, [[None if c == column else r[c] for c in columns] for r in rows]), "text/csv",
                difference="non-finite-answer", only=("price",))
        if kind == "float":
            add(f"1e300 for float {column!r}", {"dataframe_records": _with(rows, **{column: 1e300})})
            add(f"-1e39 for float {column!r}", {"inputs": _with(rows, **{column: -1e39})})
        if kind in ("long", "integer"):
            add(f"3.7 for {kind} {column!r}", {"dataframe_records": _with(rows, **{column: 3.7})},
                difference="fraction-for-integer")
            add(f"3.7 for {kind} {column!r} in instances", {"instances": _with(rows, **{column: 3.7})},
                difference="fraction-for-integer")
            add(f"null for {kind} {column!r}", {"dataframe_records": _with(rows, **{column: None})})
            add(f"2**63 for {kind} {column!r}", {"dataframe_records": _with(rows, **{column: 2**63})},
                difference="integer-overflow")
            add(f"text for {kind} {column!r}", {"dataframe_records": _with(rows, **{column: "ten"})})
        if kind == "boolean":
            add(f"'yes' for boolean {column!r}", {"dataframe_records": _with(rows, **{column: "yes"})},
                difference="string-for-boolean")
            add(f"null for boolean {column!r}", {"dataframe_records": _with(rows, **{column: None})},
                difference="null-for-boolean")
        if kind == "string":
            add(f"null for string {column!r}", {"dataframe_records": _with(rows, **{column: None})})
            add(f"a number for string {column!r}", {"dataframe_records": _with(rows, **{column: 5})},
                difference="non-string-for-string")
            add(f"a list for string {column!r}", {"dataframe_records": _with(rows, **{column: ["a"]})},
                difference="non-string-for-string", only=("price",))
    # ---- CSV shapes
    # Floating-point columns last, so that a short row lacks a value MLflow reads as NaN where the model has one.
    order = sorted(columns, key=lambda c: types[c] in ("double", "float"))
    short = _csv(order, [[r[c] for c in order] for r in rows[:-1]]) + ",".join(
        str(rows[-1][c]) for c in order[:-1]).encode() + b"\n"
    add("CSV row short of its last value", short, "text/csv",
        difference="non-finite-answer" if types[order[-1]] in ("double", "float") else None, only=("price",))
    add("CSV header only", _csv(columns, []), "text/csv", difference="empty-rows", only=("price",))
    add("CSV with a bad quote", b'%s\n"unclosed,1\n' % ",".join(columns).encode(), "text/csv")
    # ---- empty
    add("empty dataframe_records", {"dataframe_records": []})
    add("empty dataframe_split data", {"dataframe_split": {"columns": columns, "data": []}},
        difference="empty-rows", only=("price",))
    add("empty instances", {"instances": []})
    add("empty object", {})
    add("empty body", b"")
    # ---- malformed
    add("not JSON", b'{"dataframe_records": [', )
    add("a JSON list", [rows[0]])
    add("two formats at once", {"dataframe_records": rows, "instances": rows})
    add("unknown format", {"dataframe": rows})
    add("records not a list", {"dataframe_records": rows[0]})
    add("split without data", {"dataframe_split": {"columns": columns}})
    add("split row of the wrong length", {"dataframe_split": {"columns": columns, "data": [[rows[0][columns[0]]]]}})
    add("not UTF-8", b'{"dataframe_records": [{"\xff": 1}]}')
    # ---- content types
    add("text/plain", {"dataframe_records": rows}, content_type="text/plain", difference="plain-text-415")
    add("no content type", {"dataframe_records": rows}, content_type="", difference="no-content-type")
    add("charset latin-1", {"dataframe_records": rows}, content_type="application/json; charset=latin-1",
        difference="plain-text-415")
    add("format parameter", {"dataframe_records": rows}, content_type="application/json; format=pandas-split",
        difference="plain-text-415")
    return cases

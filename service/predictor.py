"""The protocol-independent core of the model server: validate parsed input against the signature, predict, answer.

Every protocol (``/predict``, ``/predict_batch``, ``/invocations``, OIP v2 over REST, and a gRPC server) parses its
own wire format and then calls one of these on the loaded ``ServedModel``:

- ``model.predict_rows(instances) -> Prediction``: ``instances`` is a list of rows (objects of columns for a column
  signature; nested lists, or objects of named tensors, for a tensor signature);
- ``model.predict_tensors(inputs) -> Prediction``: ``inputs`` is a list of OIP tensors
  ``{"name", "shape", "datatype", "data"}`` (what a gRPC ``ModelInferRequest`` carries, as plain values);
- ``model.predict_input(model_input) -> Prediction``: an already validated input (``RowValidator.validate_rows``).

A client's mistake raises ``service.errors.InvalidInput`` (``.status`` 4xx, ``.message``, ``.detail``), the same
words whatever the protocol; a model that fails on valid input raises ``ModelFailure`` (answer 5xx).
``Prediction.values`` are the per-row answers as JSON values, ``Prediction.oip_outputs()`` the OIP output tensors,
and ``model.identity`` says which model answered (name, version, variant).
"""

from __future__ import annotations

import dataclasses
import typing as t

import numpy as np

from service.errors import InvalidInput, ModelFailure
from service.schema import OIP_DATATYPES, Checked, InputSchema, RowValidator, rows_from_tensors

MODEL_HEADERS = ("X-Model-Name", "X-Model-Version", "X-Model-Variant")
# How a model's answers are produced: predict (labels or values), the positive class's probability (binary
# classifiers under `auto`), or one probability per class.
PREDICT, POSITIVE_PROBABILITY, CLASS_PROBABILITIES = "predict", "probability", "predict_proba"


@dataclasses.dataclass(frozen=True)
class ModelIdentity:
    """Which model version answers, and as which variant."""

    name: str
    version: str
    variant: str
    source_uri: str

    @property
    def labels(self) -> dict[str, str]:
        """The metric labels every model_* series carries."""
        return {"model_name": self.name, "model_version": self.version, "variant": self.variant}

    @property
    def headers(self) -> dict[str, str]:
        return dict(zip(MODEL_HEADERS, (self.name, self.version, self.variant)))


@dataclasses.dataclass(frozen=True)
class Prediction:
    """A model's answer to one request: the raw result, its per-row JSON values, and who answered."""

    raw: t.Any
    output: str
    classes: tuple[t.Any, ...]
    identity: ModelIdentity

    @property
    def values(self) -> t.Any:
        """Per-row predictions as JSON values: numbers, labels, lists, or ``{class: probability}`` objects."""
        if self.output == CLASS_PROBABILITIES:
            names = [str(name) for name in self.classes]
            return [dict(zip(names, row)) for row in np.asarray(self.raw).tolist()]
        return to_json_values(self.raw)

    def oip_outputs(self) -> list[dict[str, t.Any]]:
        """The result as OIP v2 output tensors (``name``, ``datatype``, ``shape``, flat ``data``)."""
        raw = self.raw
        if _is_frame(raw):
            return [_tensor(str(name), raw[name].to_numpy()) for name in raw.columns]
        if isinstance(raw, dict):
            return [_tensor(str(name), np.asarray(value)) for name, value in raw.items()]
        tensor = _tensor(self.output, np.asarray(raw))
        if self.output == CLASS_PROBABILITIES:
            tensor["parameters"] = {"classes": [str(name) for name in self.classes]}
        elif self.output == POSITIVE_PROBABILITY:
            tensor["parameters"] = {"class": str(self.classes[-1])}
        return [tensor]


class ServedModel:
    """A loaded model version: its identity, input schema and a scoring function; what every protocol calls."""

    def __init__(self, identity: ModelIdentity, schema: InputSchema, scorers: dict[str, t.Callable[[t.Any], t.Any]],
                 *, output: str = PREDICT, classes: tuple[t.Any, ...] = (), max_rows: int = 1000,
                 serving_path: str = "pyfunc", output_signature: list[dict[str, t.Any]] | None = None) -> None:
        self.identity = identity
        self.schema = schema
        self.validator = RowValidator(schema, max_rows)
        self.output = output
        self.classes = classes
        self.serving_path = serving_path
        self.output_signature = output_signature
        # One scoring function per output mode this model offers; PREDICT is always there (MLflow's answer).
        self._scorers = scorers
        # Called with every answer, whatever the protocol (the server counts outputs for drift: service.drift).
        self.on_prediction: t.Callable[[t.Any, Prediction], None] | None = None

    def predict_rows(self, instances: t.Any, output: str | None = None, *, mlflow: bool = False) -> Prediction:
        """Validate ``instances`` (a list of rows) against the signature and predict; raises InvalidInput.

        ``output`` overrides the configured output mode; ``PREDICT`` gives exactly what MLflow's pyfunc answers.
        ``mlflow`` reads the rows as MLflow's scoring server does (``RowValidator.validate_rows``).
        """
        return self.predict_input(self.validator.validate_rows(instances, mlflow=mlflow), output)

    def predict_tensors(self, inputs: t.Any, output: str | None = None) -> Prediction:
        """Validate OIP input tensors against the signature and predict; raises InvalidInput."""
        return self.predict_rows(rows_from_tensors(self.schema, inputs), output)

    def check_rows(self, instances: t.Any, *, mlflow: bool = False) -> Checked:
        """``instances`` checked against the signature on their own, for ``score``; raises InvalidInput."""
        return self.validator.check_rows(instances, mlflow=mlflow)

    def check_tensors(self, inputs: t.Any) -> Checked:
        """OIP input tensors checked against the signature on their own, for ``score``; raises InvalidInput."""
        return self.validator.check_rows(rows_from_tensors(self.schema, inputs))

    def score(self, parts: t.Sequence[Checked], output: str | None = None) -> list[Prediction | Exception]:
        """Answer several checked requests with one model call; per request its Prediction, or the InvalidInput or
        ModelFailure that request alone would get.

        The parts are merged into one input (``RowValidator.merge``) and the model's answer is cut back into one
        piece per request. When the merged call fails (a row the model refuses, a faulty model), the parts are
        scored again in halves, down to single requests, so one bad request fails alone and its neighbours get
        exactly what they would have got on their own.
        """
        output = output or self.output
        if len(parts) == 1:
            try:
                return [self.predict_input(self.validator.merge(parts), output)]
            except (InvalidInput, ModelFailure) as err:
                return [err]
        try:
            model_input = self.validator.merge(parts)
            raw = self._scorers[output](model_input)
            pieces = split_rows(raw, [part.rows for part in parts])
        except Exception:
            half = len(parts) // 2
            return self.score(parts[:half], output) + self.score(parts[half:], output)
        classes = self.classes if output != PREDICT else ()
        if self.on_prediction is not None:
            self.on_prediction(model_input, Prediction(raw, output, classes, self.identity))
        return [Prediction(piece, output, classes, self.identity) for piece in pieces]

    def predict_input(self, model_input: t.Any, output: str | None = None) -> Prediction:
        """Predict on an already validated input; a model failure raises ModelFailure (ValueError: InvalidInput)."""
        output = output or self.output
        try:
            raw = self._scorers[output](model_input)
        except InvalidInput:
            raise
        except (ValueError, KeyError) as err:
            # Valid by the signature yet refused by the model (an unseen category, say): the value is the
            # client's, so the answer is a 4xx with the model's own words (and the row), not a 5xx.
            where = self._first_refused_row(model_input, self._scorers[output])
            raise InvalidInput(f"the model refused {where}: {err}", status=422) from err
        except Exception as err:
            raise ModelFailure(
                f"model {self.identity.name} version {self.identity.version} failed: {err}"
            ) from err
        prediction = Prediction(raw, output, self.classes if output != PREDICT else (), self.identity)
        if self.on_prediction is not None:
            self.on_prediction(model_input, prediction)
        return prediction

    @staticmethod
    def _first_refused_row(model_input: t.Any, score: t.Callable[[t.Any], t.Any]) -> str:
        """``row N`` for the first row of a DataFrame input the model refuses on its own, else ``the input``."""
        if not _is_frame(model_input) or len(model_input) < 2:
            return "row 0" if _is_frame(model_input) else "the input"
        for index in range(len(model_input)):
            try:
                score(model_input.iloc[index:index + 1])
            except Exception:
                return f"row {index}"
        return "the input"

    def oip_metadata(self) -> dict[str, t.Any]:
        """The OIP v2 model metadata: inputs from the signature, outputs from the signature or the output mode."""
        return {
            "name": self.identity.name,
            "versions": [self.identity.version],
            "platform": f"mlflow-{self.serving_path}",
            "parameters": {
                "variant": self.identity.variant,
                "model_uri": self.identity.source_uri,
                "signature": self.schema.kind,
                **({"classes": [str(name) for name in self.classes]} if self.classes else {}),
            },
            "inputs": self.schema.oip_inputs(),
            "outputs": self._oip_output_metadata(),
        }

    def _oip_output_metadata(self) -> list[dict[str, t.Any]]:
        if self.output == CLASS_PROBABILITIES:
            return [{"name": self.output, "datatype": "FP64", "shape": [-1, len(self.classes)]}]
        if self.output == POSITIVE_PROBABILITY:
            return [{"name": self.output, "datatype": "FP64", "shape": [-1]}]
        outputs = InputSchema.from_signature(self.output_signature)
        if outputs.columns and len(outputs.columns) > 1:
            return outputs.oip_inputs()
        if outputs.tensors:
            return [{**spec, "name": PREDICT if spec["name"] == "input" else spec["name"]}
                    for spec in outputs.oip_inputs()]
        if outputs.columns:
            return [{"name": PREDICT, "datatype": outputs.columns[0].oip_datatype, "shape": [-1]}]
        return [{"name": PREDICT, "datatype": "BYTES", "shape": [-1]}]


def split_rows(raw: t.Any, sizes: t.Sequence[int]) -> list[t.Any]:
    """A model's answer to merged requests, cut into one piece per request of ``sizes`` rows each (its first
    dimension is the row); ValueError when the answer does not have one entry per row (a model answering one value
    for a whole input), which ``ServedModel.score`` takes as a reason to score the requests apart."""
    total = sum(sizes)
    if isinstance(raw, dict):
        columns = {name: split_rows(value, sizes) for name, value in raw.items()}
        return [{name: pieces[index] for name, pieces in columns.items()} for index in range(len(sizes))]
    if not hasattr(raw, "__len__") or isinstance(raw, (str, bytes)) or len(raw) != total:
        raise ValueError(f"the model answered {type(raw).__name__} for {total} rows, not one entry per row")
    cut = (lambda start, stop: raw.iloc[start:stop]) if hasattr(raw, "iloc") else (lambda start, stop: raw[start:stop])
    pieces, start = [], 0
    for size in sizes:
        pieces.append(cut(start, start + size))
        start += size
    return pieces


def to_json_values(raw: t.Any) -> t.Any:
    """A model's raw output (ndarray, Series, DataFrame, dict, list) as JSON values, as MLflow's server does."""
    if _is_frame(raw):
        return [{str(key): _scalar(value) for key, value in row.items()} for row in raw.to_dict(orient="records")]
    if isinstance(raw, dict):
        return {str(key): to_json_values(value) for key, value in raw.items()}
    if hasattr(raw, "tolist"):
        return raw.tolist()
    if isinstance(raw, (list, tuple)):
        return [_scalar(value) for value in raw]
    return _scalar(raw)


def _scalar(value: t.Any) -> t.Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (str, int, float, bool, list, dict)) or value is None:
        return value
    return str(value)


def _is_frame(value: t.Any) -> bool:
    return type(value).__name__ == "DataFrame" and hasattr(value, "columns")


def _tensor(name: str, array: np.ndarray) -> dict[str, t.Any]:
    datatype = OIP_DATATYPES.get(str(array.dtype), "BYTES")
    data = array.ravel().tolist()
    if datatype == "BYTES":
        data = [value if isinstance(value, str) else str(value) for value in data]
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}

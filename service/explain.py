"""Explanations of a served model's predictions: SHAP attributions per input column, computed with ``shap``.

``build_explainer(settings, source, limits) -> ModelExplainer`` loads the model version a server serves (the same
``service.loading`` steps), picks what is explained and how, and reads the background data;
``ModelExplainer.explain(frame, output_class)`` answers one explanation per row (per class where several are
explained): ``{"row", "prediction", "base_value", "attributions": {column: value}, "class"?}``. It runs in the
explainer process of ``service.explain_pool``, never on a server worker's event loop.

What is explained: a binary classifier's positive-class probability (or the other class's, when asked), each class's
probability of a multi-class classifier (or one, when asked), a regressor's value, a pyfunc model's single numeric
output. How: ``shap.TreeExplainer`` (interventional, exact) for a tree ensemble fitted on numeric columns,
``shap.LinearExplainer`` for a linear regressor, and otherwise the model-agnostic ``shap`` Exact explainer (up to
``EXACT_MAX_COLUMNS`` columns) or Permutation explainer on the *raw* columns the client sent (pipelines, pyfunc): the
columns are masked with the background's values, strings included, and the model is called on real rows.
Attributions plus the base value add up to the prediction within ``ADDITIVITY_TOLERANCE``.

Background data: ``MLSERVE_EXPLAIN_BACKGROUND_URI`` (stack config ``explain.backgroundUri``: any URI MLflow can
download, a CSV, Parquet or JSON records file, or a folder holding one), else the model's logged input example,
capped at ``max_background_rows``; without either, ``InvalidInput`` with status 409 saying how to provide one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import typing as t
from pathlib import Path

import numpy as np

from service.errors import InvalidInput, ModelLoadError
from service.settings import TRUE_WORDS

logger = logging.getLogger("mlserve.explain")

# |base_value + sum(attributions) - prediction| <= ADDITIVITY_TOLERANCE * max(1, |prediction|): exact explainers
# (tree, linear, Exact, Permutation) add up to float rounding; the tests hold every served kind to this bound.
ADDITIVITY_TOLERANCE = 1e-6
# The Exact explainer calls the model on 2**columns masked copies of the background per row; beyond this many
# columns the Permutation explainer (exactly additive too, approximate Shapley values) is cheaper.
EXACT_MAX_COLUMNS = 10
# Tree ensembles TreeExplainer computes exactly (module prefixes of the estimator's class).
TREE_MODULES = ("sklearn.ensemble._forest", "sklearn.ensemble._gb", "sklearn.tree", "xgboost", "lightgbm")
# The explainer process runs at the lowest CPU priority (Linux SCHED_IDLE: only when a core would otherwise idle;
# elsewhere nice +19) from its first instruction (service.explain_pool starts it from a SCHED_IDLE thread): predictions
# first. nice +10 still let 4 /explain clients raise /predict's c=8 p99 by 37% on 2 cores, SCHED_IDLE once the model
# was loaded by 24% (bench/explain.py, 2026-12-06; README "Explain a prediction" has the current run).
NICE_INCREMENT = 19
BACKGROUND_HINT = ("set stack config mlserve:explain.backgroundUri (env MLSERVE_EXPLAIN_BACKGROUND_URI) to a CSV, "
                   "Parquet or JSON-records file of typical rows that MLflow can download, or log the model with an "
                   "input_example")


@dataclasses.dataclass(frozen=True)
class ExplainSettings:
    """The explanation limits of one server worker, from the environment the stack's ``explain.*`` keys fill."""

    enabled: bool
    background_uri: str
    max_background_rows: int
    max_rows: int
    max_concurrency: int
    max_queue: int
    timeout_seconds: float

    ENV: t.ClassVar[dict[str, str]] = {
        "enabled": "MLSERVE_EXPLAIN_ENABLED",
        "background_uri": "MLSERVE_EXPLAIN_BACKGROUND_URI",
        "max_background_rows": "MLSERVE_EXPLAIN_MAX_BACKGROUND_ROWS",
        "max_rows": "MLSERVE_EXPLAIN_MAX_ROWS",
        "max_concurrency": "MLSERVE_EXPLAIN_MAX_CONCURRENCY",
        "max_queue": "MLSERVE_EXPLAIN_MAX_QUEUE",
        "timeout_seconds": "MLSERVE_EXPLAIN_TIMEOUT_SECONDS",
    }
    # The same defaults as Pulumi.yaml's explain.* keys, for a server started without a deployment.
    DEFAULTS: t.ClassVar[dict[str, t.Any]] = {
        "enabled": True, "background_uri": "", "max_background_rows": 100, "max_rows": 20, "max_concurrency": 1,
        "max_queue": 4, "timeout_seconds": 10.0,
    }

    @classmethod
    def from_env(cls, environ: t.Mapping[str, str] | None = None) -> ExplainSettings:
        """Read the settings; every bad variable is reported at once, with its value and what is allowed."""
        environ = os.environ if environ is None else environ
        values: dict[str, t.Any] = {}
        problems = []
        for field in dataclasses.fields(cls):
            name, default = cls.ENV[field.name], cls.DEFAULTS[field.name]
            raw = environ.get(name, "").strip()
            if not raw:
                values[field.name] = default
            elif field.type == "bool":
                if raw.lower() not in (*TRUE_WORDS, "0", "false", "no"):
                    problems.append(f"{name}={raw!r} must be true or false")
                values[field.name] = raw.lower() in TRUE_WORDS
            elif field.type == "str":
                values[field.name] = raw
            else:
                try:
                    value = int(raw) if field.type == "int" else float(raw)
                except ValueError:
                    value = math.nan
                minimum = 0 if field.name == "max_queue" else (1 if field.type == "int" else 0.001)
                if not (value >= minimum and math.isfinite(value)):
                    kind = "an integer" if field.type == "int" else "a number of seconds"
                    problems.append(f"{name}={raw!r} must be {kind} of at least {minimum}")
                values[field.name] = value
        if problems:
            raise ValueError("; ".join(problems))
        return cls(**values)

    @property
    def retry_after(self) -> int:
        """Seconds a shed client should wait: about one explanation's budget."""
        return max(1, math.ceil(self.timeout_seconds / 2))


class FrameCodec:
    """Raw columns <-> the float matrix shap masks: numbers as they are, every other column (strings, dates,
    missing values) as codes into the values seen in the background and the request, decoded back before the model
    is called, so the model always gets rows like the ones the client sent."""

    def __init__(self, frames: list[t.Any]) -> None:
        import pandas as pd

        template = frames[0]
        self.columns = list(template.columns)
        self.dtypes = [template[name].dtype for name in self.columns]
        self.vocabularies: dict[int, np.ndarray] = {}
        for position, (name, dtype) in enumerate(zip(self.columns, self.dtypes)):
            if not _is_numeric(dtype):
                values = pd.concat([frame[name].astype(object) for frame in frames], ignore_index=True)
                self.vocabularies[position] = pd.unique(values)

    def encode(self, frame: t.Any) -> np.ndarray:
        import pandas as pd

        matrix = np.empty((len(frame), len(self.columns)), dtype=np.float64)
        for position, name in enumerate(self.columns):
            if position in self.vocabularies:
                codes = pd.Index(self.vocabularies[position]).get_indexer(frame[name].astype(object))
                matrix[:, position] = codes
            else:
                matrix[:, position] = frame[name].to_numpy(dtype=np.float64)
        return matrix

    def decode(self, matrix: np.ndarray) -> t.Any:
        import pandas as pd

        data = {}
        for position, (name, dtype) in enumerate(zip(self.columns, self.dtypes)):
            column = matrix[:, position]
            if position in self.vocabularies:
                values = self.vocabularies[position][column.astype(np.int64)]
                data[name] = pd.Series(values, dtype=dtype if dtype != np.dtype("O") else object)
            elif dtype.kind == "b":
                data[name] = column > 0.5
            elif dtype.kind in "iu":
                data[name] = np.rint(column).astype(dtype)
            else:
                data[name] = column.astype(dtype)
        return pd.DataFrame(data, columns=self.columns)


def _is_numeric(dtype: t.Any) -> bool:
    return isinstance(dtype, np.dtype) and dtype.kind in "biuf"


class ModelExplainer:
    """Explains one loaded model version. ``output`` maps a DataFrame of raw rows to a (rows,) or (rows, classes)
    array; ``classes`` names the second dimension (empty for one output); ``positive`` is the class a single
    probability output belongs to (binary classifiers), ``negative`` the other one."""

    def __init__(self, output: t.Callable[[t.Any], np.ndarray], background: t.Any, *, classes: tuple[str, ...] = (),
                 binary: tuple[str, str] | None = None, fast: t.Any = None, method: str = "exact") -> None:
        self.output = output
        self.background = background
        self.classes = classes
        self.binary = binary
        self.fast = fast  # a built shap TreeExplainer or LinearExplainer over the numeric columns, if one applies
        self.method = method

    def explain(self, frame: t.Any, output_class: str | None = None) -> list[dict[str, t.Any]]:
        """One explanation per row (per row and class when every class of a multi-class model is explained)."""
        missing = [name for name in self.background.columns if name not in frame.columns]
        if missing:
            raise InvalidInput(f"rows lack column(s) {', '.join(map(str, missing))}; the model was explained with "
                               f"{', '.join(map(str, self.background.columns))}")
        frame = frame[list(self.background.columns)]
        picked = self._pick_class(output_class)
        try:
            predictions = np.asarray(self.output(frame), dtype=np.float64)
        except InvalidInput:
            raise
        except (ValueError, KeyError) as err:
            # Valid by the signature yet refused by the model (an unseen category): the client's value, so a 422
            # with the model's words, as /predict answers (service.predictor.ServedModel.predict_input).
            raise InvalidInput(f"the model refused the rows: {err}", status=422) from err
        values, base = self._attributions(frame)
        explanations = []
        for row in range(len(frame)):
            for index, name in self._classes_for(picked):
                value = values[row] if index is None else values[row][:, index]
                prediction = predictions[row] if index is None else predictions[row, index]
                base_value = base[row] if index is None else base[row, index]
                sign = 1.0
                if self.binary is not None:
                    name = self.binary[1]
                    if output_class == self.binary[0]:  # the other class of a binary model: 1 - p
                        name, sign = self.binary[0], -1.0
                        prediction, base_value = 1.0 - prediction, 1.0 - base_value
                attributions = {str(column): sign * float(a) for column, a in zip(frame.columns, value)}
                base_value = float(base_value)
                explanations.append({"row": row, "prediction": float(prediction), "base_value": base_value,
                                     "attributions": attributions, **({"class": name} if name is not None else {})})
                error = abs(base_value + sum(attributions.values()) - float(prediction))
                if error > ADDITIVITY_TOLERANCE * max(1.0, abs(float(prediction))):
                    logger.warning("explanation of row %d does not add up to its prediction (off by %.3g)", row, error)
        return explanations

    def prepared(self) -> ModelExplainer:
        """This explainer checked and warmed up on background rows: a fast explainer whose attributions do not add
        up to the model's answers (shap 0.51's TreeExplainer is off by 0.004 on a small scikit-learn random forest's
        probabilities) is dropped for the model-agnostic one; shap's numba code is compiled here, not on a request."""
        sample = self.background.head(3)
        if self.fast is not None:
            values, base = self._attributions(sample)
            answers = np.asarray(self.output(sample), dtype=np.float64)
            off = np.abs(values.sum(axis=1) + base - answers)
            if not np.all(off <= ADDITIVITY_TOLERANCE * np.maximum(1.0, np.abs(answers))):
                logger.warning("shap's %s explainer is off by up to %.3g on this model; using the model-agnostic one",
                               self.method, float(off.max()))
                self.fast, self.method = None, "exact"
        if self.fast is None:
            self._attributions(sample.head(1))
        return self

    def _pick_class(self, output_class: str | None) -> int | None:
        if output_class is None:
            return None
        names = self.binary or self.classes
        if not names:
            raise InvalidInput(f"'class' is {output_class!r}, but this model has no classes; leave it out")
        if output_class not in names:
            raise InvalidInput(f"'class' {output_class!r} is not one of the model's classes: {', '.join(names)}")
        return None if self.binary else self.classes.index(output_class)

    def _classes_for(self, picked: int | None) -> list[tuple[int | None, str | None]]:
        if not self.classes:
            return [(None, None)]
        if picked is not None:
            return [(picked, self.classes[picked])]
        return list(enumerate(self.classes))

    def _attributions(self, frame: t.Any) -> tuple[np.ndarray, np.ndarray]:
        """(rows, columns[, classes]) attributions and (rows[, classes]) base values."""
        if self.fast is not None:
            explanation = self.fast(frame.to_numpy(dtype=np.float64) if self.method == "linear" else frame)
            values, base = np.asarray(explanation.values), np.asarray(explanation.base_values)
            if values.ndim == 3 and self.binary is not None:  # one column per class: keep the positive one
                values, base = values[..., 1], base[..., 1]
            if base.ndim == 0 or base.shape[0] != len(frame):  # one expected value for every row
                base = np.broadcast_to(base, (len(frame), *base.shape[-1:]))
            return values, base
        import shap

        codec = FrameCodec([self.background, frame])
        masker = shap.maskers.Independent(codec.encode(self.background), max_samples=len(self.background))

        def model(matrix: np.ndarray) -> np.ndarray:
            return self.output(codec.decode(matrix))

        columns = len(codec.columns)
        if columns <= EXACT_MAX_COLUMNS:
            explainer = shap.explainers.Exact(model, masker)
            explanation = explainer(codec.encode(frame), silent=True)
        else:
            explainer = shap.explainers.Permutation(model, masker)
            explanation = explainer(codec.encode(frame), max_evals=max(500, 2 * columns + 1), silent=True)
        return np.asarray(explanation.values), np.asarray(explanation.base_values)


def build_explainer(settings: t.Any, source: t.Any, limits: ExplainSettings) -> ModelExplainer:
    """The explainer of ``source`` (a ``service.loading.ModelSource``); InvalidInput 409/422 when it cannot explain."""
    from service.loading import (
        POSITIVE_PROBABILITY,
        PREDICT,
        _native_estimator,
        _native_scorer,
        _output_mode,
        _pyfunc_model,
        _pyfunc_predict_fn,
    )

    schema = source.schema
    if schema.tensors:
        raise InvalidInput(f"{source.name} version {source.version} takes tensors, not named columns: its "
                           "explanations would have no columns to name, so /explain is not offered for it", status=422)
    background = load_background(source, limits)
    if schema.columns:
        missing = [column.name for column in schema.columns if column.name not in background.columns]
        if missing:
            raise InvalidInput(f"the explanation background lacks column(s) {', '.join(missing)} of the model's "
                               f"signature; {BACKGROUND_HINT}", status=409)
        background = _typed(background[[column.name for column in schema.columns]], schema)
    try:
        estimator = _native_estimator(source, settings.allow_pickle)
        pyfunc = None if estimator is not None else _pyfunc_model(source)
    except Exception as err:
        raise ModelLoadError(f"cannot load {source.name} version {source.version} to explain it: {err}") from err
    if estimator is None:
        return ModelExplainer(_numeric_output(pyfunc.predict, source), background).prepared()
    mode, classes = _output_mode("auto", estimator, source)
    scorer = _native_scorer(estimator, mode, _pyfunc_predict_fn(source))
    names = tuple(str(name) for name in classes)
    binary = (names[0], names[1]) if mode == POSITIVE_PROBABILITY else None
    output = _numeric_output(scorer, source) if mode == PREDICT else (lambda frame: np.asarray(scorer(frame)))
    fast, method = _fast_explainer(estimator, background, classified=bool(classes))
    return ModelExplainer(output, background, classes=() if binary or mode == PREDICT else names, binary=binary,
                          fast=fast, method=method).prepared()


def _fast_explainer(estimator: t.Any, background: t.Any, classified: bool) -> tuple[t.Any, str]:
    """A TreeExplainer or LinearExplainer where one computes the attributions exactly, else (None, "exact")."""
    import shap

    module = type(estimator).__module__
    numeric = all(_is_numeric(dtype) for dtype in background.dtypes)
    if not numeric:
        return None, "exact"
    try:
        if module.startswith(TREE_MODULES):
            data = background.astype(np.float64)
            explainer = shap.TreeExplainer(estimator, data=data, feature_perturbation="interventional",
                                           model_output="probability" if classified else "raw")
            return explainer, "tree"
        if module.startswith("sklearn.linear_model") and not classified and np.ndim(estimator.coef_) == 1:
            return shap.LinearExplainer(estimator, shap.maskers.Independent(background.to_numpy(np.float64),
                                                                           max_samples=len(background))), "linear"
    except Exception as err:  # a model shap's fast paths do not know: the model-agnostic explainer is still exact
        logger.warning("shap's fast explainer does not take %s (%s); using the model-agnostic one", module, err)
    return None, "exact"


def _numeric_output(predict: t.Callable[[t.Any], t.Any], source: t.Any) -> t.Callable[[t.Any], np.ndarray]:
    """The model's answer as one float per row; InvalidInput 422 (at the first call) when it is not one number."""

    def output(frame: t.Any) -> np.ndarray:
        raw = predict(frame)
        if hasattr(raw, "columns"):
            if len(raw.columns) != 1:
                raise InvalidInput(f"{source.name} version {source.version} answers {len(raw.columns)} columns "
                                   f"({', '.join(map(str, raw.columns))}); explanations need one number per row",
                                   status=422)
            raw = raw.iloc[:, 0]
        array = np.asarray(raw)
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim != 1 or array.dtype.kind not in "biuf":
            raise InvalidInput(f"{source.name} version {source.version} answers {array.dtype} values of shape "
                               f"{list(array.shape)}; explanations need one number per row", status=422)
        return array.astype(np.float64)

    return output


def load_background(source: t.Any, limits: ExplainSettings) -> t.Any:
    """The background rows: ``limits.background_uri``, else the logged input example; capped, deterministically."""
    if limits.background_uri:
        frame = _read_background_uri(limits.background_uri)
    else:
        frame = _input_example(source)
        if frame is None:
            raise InvalidInput(f"{source.name} version {source.version} has no background data to explain against: "
                               f"no explain.backgroundUri is set and it was logged without an input example; "
                               f"{BACKGROUND_HINT}", status=409)
    if len(frame) == 0:
        raise InvalidInput(f"the explanation background is empty; {BACKGROUND_HINT}", status=409)
    if len(frame) > limits.max_background_rows:
        frame = frame.sample(n=limits.max_background_rows, random_state=0)
    return frame.reset_index(drop=True)


def _input_example(source: t.Any) -> t.Any | None:
    return _input_example_at(source.local_path, f"{source.name} version {source.version}")


def _input_example_at(model_dir: t.Any, label: str) -> t.Any | None:
    """The input example logged with the model whose MLmodel file is in ``model_dir``, as a DataFrame, or None."""
    import pandas as pd
    from mlflow.models import Model

    try:
        model = Model.load(model_dir)
        example = model.load_input_example(str(model_dir)) if model.saved_input_example_info else None
    except Exception as err:
        logger.warning("cannot read the input example of %s: %s", label, err)
        return None
    if example is None:
        return None
    if isinstance(example, dict):
        example = example.get("inputs", example)
    try:
        return example if isinstance(example, pd.DataFrame) else pd.DataFrame(example)
    except ValueError:
        return None


def sample_rows(model_uri: str, background_uri: str, count: int, tracking_uri: str
                ) -> tuple[list[dict[str, t.Any]], str]:
    """Up to ``count`` rows to explain outside a server, as JSON request rows, and where they came from.

    A rollout has no traffic of its own to explain, and the rows must be ones both variants accept and that look
    like production: so they are the servers' own background, ``background_uri`` (the stack's
    ``explain.backgroundUri``) when set, else the input example logged with ``model_uri`` (the champion's), cut to
    the columns of its signature. Only the model's MLmodel file and example are downloaded, not the model. A fixed
    sample (the same rows every run, for both variants) keeps the work bounded. InvalidInput (409) when there is
    neither, or they cannot be read."""
    import tempfile

    import mlflow
    from mlflow.models import Model

    # As service.loading does: models:/ URIs resolve through the registry, logged models through the tracking store.
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="mlserve-example-") as folder:
        try:
            meta_path = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{model_uri}/MLmodel", dst_path=folder))
            meta = Model.load(meta_path)
            info = meta.saved_input_example_info
            if info and not background_uri:
                mlflow.artifacts.download_artifacts(artifact_uri=f"{model_uri}/{info['artifact_path']}",
                                                    dst_path=folder)
        except Exception as err:
            raise InvalidInput(f"cannot read {model_uri}/MLmodel: {err}", status=409) from err
        if background_uri:
            frame, origin = _read_background_uri(background_uri), f"explain.backgroundUri {background_uri}"
        else:
            frame = _input_example_at(meta_path.parent, model_uri) if info else None
            origin = f"the input example logged with {model_uri}"
            if frame is None:
                raise InvalidInput(f"{model_uri} was logged without an input example and no explain.backgroundUri "
                                   f"is set, so there are no rows to explain; {BACKGROUND_HINT}", status=409)
    inputs = meta.signature.inputs if meta.signature is not None else None
    columns = [name for name in (inputs.input_names() if inputs is not None and inputs.has_input_names() else [])
               if name in frame.columns]
    if columns:
        frame = frame[columns]
    if len(frame) > count:
        frame = frame.sample(n=count, random_state=0)
    rows = [{str(key): _plain(value) for key, value in row.items()} for row in frame.to_dict(orient="records")]
    return rows, origin


def _read_background_uri(uri: str) -> t.Any:
    import mlflow
    import pandas as pd

    try:
        path = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except Exception as err:
        raise InvalidInput(f"cannot download the explanation background {uri}: {err}; {BACKGROUND_HINT}",
                           status=409) from err
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".csv", ".parquet", ".json"))
        if not files:
            raise InvalidInput(f"{uri} holds no .csv, .parquet or .json file; {BACKGROUND_HINT}", status=409)
        path = files[0]
    readers = {".csv": pd.read_csv, ".parquet": pd.read_parquet,
               ".json": lambda p: pd.read_json(p, orient="records")}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise InvalidInput(f"{uri} is not a .csv, .parquet or .json file; {BACKGROUND_HINT}", status=409)
    try:
        return reader(path)
    except Exception as err:
        raise InvalidInput(f"cannot read the explanation background {uri}: {err}", status=409) from err


def _typed(frame: t.Any, schema: t.Any) -> t.Any:
    """Background rows with the signature's dtypes, as the request's rows get them (``RowValidator.frame``)."""
    from service.schema import RowValidator

    rows = [{key: _plain(value) for key, value in row.items()} for row in frame.to_dict(orient="records")]
    validator = RowValidator(schema, max(1, len(rows)))
    try:
        return validator.validate_rows(rows)
    except InvalidInput as err:
        raise InvalidInput(f"the explanation background does not match the model's signature: {err.message}",
                           status=409) from err


def _plain(value: t.Any) -> t.Any:
    """A background cell as a request's JSON value would be (NumPy scalars as Python ones, NaN as missing)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def lowest_priority() -> None:
    """Put the calling thread (and the processes it starts) at the lowest CPU priority: Linux ``SCHED_IDLE`` (runs
    only when a core would otherwise idle), elsewhere ``nice`` +NICE_INCREMENT."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        try:
            os.nice(NICE_INCREMENT)
        except OSError:
            pass


def serve_explanations(connection: t.Any, settings: t.Any, source: t.Any, limits: ExplainSettings) -> None:
    """The explainer process: build the explainer once, then answer ``(frame, class)`` requests until the pipe closes.

    Replies are tuples, never exceptions (ours do not pickle with their status): ``("ok", explanations)``,
    ``("invalid", (message, status, detail))`` or ``("failed", message)``; the first reply says whether it is ready.
    """
    lowest_priority()  # already inherited from the thread that started this process; elsewhere than Linux, nice
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    try:
        explainer = build_explainer(settings, source, limits)
        # Again: the model's own libraries (scipy's OpenBLAS, scikit-learn's and LightGBM's OpenMP) were loaded by
        # build_explainer, after the first call, and would otherwise run a thread per core.
        threadpool_limits(1)
        connection.send(("ready", None))
    except InvalidInput as err:
        explainer, refusal = None, ("invalid", (err.message, err.status, err.detail))
        connection.send(refusal)
    except Exception as err:  # noqa: BLE001 - every failure is reported to the server, which logs it
        explainer, refusal = None, ("failed", f"{type(err).__name__}: {err}")
        connection.send(refusal)
    while True:
        try:
            frame, output_class = connection.recv()
        except (EOFError, OSError):
            return
        if explainer is None:
            connection.send(refusal)
            continue
        try:
            connection.send(("ok", explainer.explain(frame, output_class)))
        except InvalidInput as err:
            connection.send(("invalid", (err.message, err.status, err.detail)))
        except Exception as err:  # noqa: BLE001
            connection.send(("failed", f"{type(err).__name__}: {err}"))

"""Reference profiles: what a model version's training data looked like, binned the way the server counts live rows.

A profile holds, per input column, quantile bins (numeric: interior edges, bins labelled "0".."k") or category
frequencies (strings, booleans: the most frequent categories, the rest as "other"), each with its share of the
reference rows; and the share of each output class the model predicted on them. The server counts every valid live
row into the same bins (`service.drift`), and Prometheus compares the two (`infra.drift`).

Where it comes from, first found wins (`load_reference_profile`):

1. the artifact `mlserve/reference_profile.json` of the model version's run (written at training time, or afterwards
   by `python -m service.profiles --model-uri models:/NAME/VERSION --data train.csv`, one command for a model
   registered elsewhere);
2. a dataset named by `MLSERVE_DRIFT_REFERENCE_URI` (CSV or Parquet; any URI MLflow can download), profiled at
   start-up;
3. the model's logged input example (few rows: coarse bins, better than nothing), profiled at start-up.

Profiles built at start-up are cached under `MLSERVE_HOME/profiles/`, so a worker restart does not recompute them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing as t
from pathlib import Path

from service.drift import InputMetrics, OutputMetrics, predicted_outputs

PROFILE_ARTIFACT = "mlserve/reference_profile.json"
REFERENCE_URI_ENV = "MLSERVE_DRIFT_REFERENCE_URI"
DEFAULT_BINS = 10
MAX_CATEGORIES = 20
OTHER = "other"

logger = logging.getLogger("mlserve.service")


@dataclasses.dataclass(frozen=True)
class ColumnProfile:
    """One column's bins and the share of reference rows in each."""

    name: str
    kind: str  # "numeric" or "category"
    shares: dict[str, float]
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()

    def bin_counts(self, values: t.Any) -> dict[str, int]:
        """{bin: rows} for live values (missing values are not counted: they are not in the reference either).

        Plain numpy, once per column and not per value, and no pandas: this runs on every request's columns."""
        import numpy as np

        values = np.asarray(values)
        if self.kind == "numeric":
            try:
                numbers = values.astype(float)
            except (TypeError, ValueError):
                return {}
            numbers = numbers[~np.isnan(numbers)]
            # side="right": a value equal to an edge falls in the bin above it, as the quantile edges split the data.
            indices = np.searchsorted(np.asarray(self.edges, dtype=float), numbers, side="right")
            counts = np.bincount(indices, minlength=len(self.edges) + 1).tolist()
            return {str(index): count for index, count in enumerate(counts) if count}
        try:
            names, counts = np.unique(values, return_counts=True)
        except TypeError:  # mixed types (a None among strings): compare them as text
            names, counts = np.unique(values.astype(str), return_counts=True)
        known = set(self.categories)
        binned: dict[str, int] = {}
        for name, count in zip(names.tolist(), counts.tolist()):
            if name is None or name != name or name in ("None", "nan"):
                continue  # missing
            label = _category(name)
            label = label if label in known else OTHER
            binned[label] = binned.get(label, 0) + count
        return binned


@dataclasses.dataclass(frozen=True)
class ReferenceProfile:
    """A model version's reference: its columns' bins and shares, and its output classes' shares."""

    columns: tuple[ColumnProfile, ...]
    outputs: dict[str, float]
    rows: int
    source: str

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ReferenceProfile:
        data = json.loads(text)
        columns = tuple(ColumnProfile(**{**column, "edges": tuple(column.get("edges", ())),
                                         "categories": tuple(column.get("categories", ()))})
                        for column in data["columns"])
        return cls(columns, dict(data.get("outputs") or {}), int(data["rows"]), str(data.get("source", "")))


def _category(value: t.Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    return str(value)


def _shares(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {name: count / total for name, count in sorted(counts.items())} if total else {}


def profile_column(name: str, values: t.Any, bins: int = DEFAULT_BINS) -> ColumnProfile | None:
    """Bins for one column of reference data; None when it has no usable values."""
    import numpy as np
    import pandas as pd

    series = pd.Series(values).dropna()
    if series.empty:
        return None
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        numbers = series.to_numpy(dtype=float)
        edges = tuple(float(edge) for edge in np.unique(np.quantile(numbers, np.linspace(0, 1, bins + 1)[1:-1])))
        column = ColumnProfile(name, "numeric", {}, edges=edges)
    else:
        frequent = series.map(_category).value_counts().index[:MAX_CATEGORIES]
        column = ColumnProfile(name, "category", {}, categories=tuple(str(value) for value in frequent))
    return dataclasses.replace(column, shares=_shares(column.bin_counts(series.to_numpy())))


def build_profile(frame: t.Any, outputs: dict[str, int] | None = None, source: str = "",
                  bins: int = DEFAULT_BINS) -> ReferenceProfile:
    """The profile of a reference DataFrame, with the model's output class counts on it when known."""
    columns = tuple(column for name in frame.columns
                    if (column := profile_column(str(name), frame[name], bins)) is not None)
    return ReferenceProfile(columns, _shares(outputs or {}), int(len(frame)), source)


def profile_for_model(model: t.Any, frame: t.Any, source: str) -> ReferenceProfile:
    """Profile `frame` and what the loaded `ServedModel` predicts on it (class outputs only)."""
    outputs = None
    try:
        prediction = model.predict_input(model.validator.frame(frame.to_dict(orient="records")))
        outputs = predicted_outputs(prediction.output, prediction.raw, prediction.classes)
    except Exception as err:  # a profile without outputs still serves input drift
        logger.warning("reference profile: could not score the reference rows (%s); outputs left out", err)
    return build_profile(frame, outputs, source)


def read_dataset(uri: str) -> t.Any:
    """A CSV or Parquet file, local or at any URI MLflow can download."""
    import pandas as pd

    path = Path(uri)
    if not path.exists():
        import mlflow

        path = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    return pd.read_parquet(path) if path.suffix in (".parquet", ".pq") else pd.read_csv(path)


def _cache_path(name: str, version: str) -> Path:
    from service.names import mlserve_home

    return mlserve_home() / "profiles" / f"{name}-{version}.json"


def _run_artifact_text(source: t.Any) -> str | None:
    """The profile artifact of the version's run, or None when it has none. Run artifacts on local disk (the
    embedded registry's) are read as files: MLflow's `runs:/` resolution builds a tracking store, about 4 s of a
    cold worker's start with MLflow's import."""
    if (folder := source.run_artifact_path) is not None:
        path = folder / PROFILE_ARTIFACT
        return path.read_text() if path.is_file() else None
    if not source.run_id:
        return None
    try:
        import mlflow

        return mlflow.artifacts.load_text(f"runs:/{source.run_id}/{PROFILE_ARTIFACT}")
    except Exception as err:  # no artifact for this version
        logger.info("no %s for run %s (%s)", PROFILE_ARTIFACT, source.run_id, type(err).__name__)
        return None


def load_reference_profile(model: t.Any, source: t.Any) -> ReferenceProfile | None:
    """The served version's profile: its run's artifact, the reference dataset, or its input example (cached)."""
    import os

    if (text := _run_artifact_text(source)) is not None:
        return ReferenceProfile.from_json(text)
    cache = _cache_path(source.name, source.version)
    if cache.is_file():
        return ReferenceProfile.from_json(cache.read_text())
    frame, where = None, ""
    if uri := os.environ.get(REFERENCE_URI_ENV):
        frame, where = read_dataset(uri), uri
    else:
        try:
            from mlflow.models import Model

            frame = Model.load(source.local_path).load_input_example(str(source.local_path))
            where = "the model's input example"
        except Exception:
            frame = None
    if frame is None or not hasattr(frame, "columns") or len(frame) == 0:
        return None
    profile = profile_for_model(model, frame, where)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(profile.to_json())
    except OSError:  # a read-only home only costs a recomputation at the next start
        pass
    return profile


def drift_observer(model: t.Any, source: t.Any, outputs: OutputMetrics, inputs: InputMetrics,
                   warn: t.Callable[[str], None]) -> t.Callable[[t.Any, t.Any], None]:
    """The loaded model's `on_prediction` hook: count every answer's outputs, and its input rows in the reference
    profile's bins when the version has one (`load_reference_profile`)."""
    labels = model.identity.labels
    count_outputs = outputs.observer(labels)
    try:
        profile = load_reference_profile(model, source)
    except Exception as err:  # drift is monitoring: never a reason not to serve
        warn(f"no reference profile for input drift: {err}")
        profile = None
    if profile is None:
        return count_outputs
    inputs.start(labels, profile)
    count_inputs = inputs.observer(labels, profile)

    def observe(model_input: t.Any, prediction: t.Any) -> None:
        count_outputs(model_input, prediction)
        count_inputs(model_input, prediction)

    return observe


def main(argv: list[str] | None = None) -> int:
    """`python -m service.profiles --model-uri models:/NAME/VERSION --data train.csv [--out FILE]`."""
    parser = argparse.ArgumentParser(prog="python -m service.profiles",
                                     description="Write a registered model version's reference profile "
                                                 f"(the {PROFILE_ARTIFACT} artifact of its run, or --out FILE)")
    parser.add_argument("--model-uri", required=True, help="models:/NAME/VERSION or models:/NAME@ALIAS")
    parser.add_argument("--data", required=True, help="the training data (CSV or Parquet, local path or URI)")
    parser.add_argument("--out", type=Path, help="write the profile here instead of logging it to the model's run")
    args = parser.parse_args(argv)
    import mlflow

    from service.loading import load_model, resolve_model
    from service.settings import Settings

    import os

    os.environ["MODEL_URI"] = args.model_uri
    settings = Settings.from_env()
    source = resolve_model(settings)
    profile = profile_for_model(load_model(settings, source), read_dataset(args.data), args.data)
    if args.out:
        args.out.write_text(profile.to_json())
        print(f"wrote the reference profile of {source.name} version {source.version} to {args.out}")
        return 0
    run_id = mlflow.MlflowClient().get_model_version(source.name, source.version).run_id
    mlflow.MlflowClient().log_text(run_id, profile.to_json(), PROFILE_ARTIFACT)
    print(f"logged {PROFILE_ARTIFACT} to run {run_id} ({source.name} version {source.version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

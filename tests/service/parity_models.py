"""The models of the MLflow parity suite (tests/service/test_mlflow_parity.py), each logged to an MLflow registry.

Three shapes nobody in mlserve wrote for it: a ColumnTransformer + HistGradientBoosting pipeline over string, long
and boolean columns; a custom pyfunc answering a two-column DataFrame; a KMeans over float32 columns. Each function
logs its model (registered as version 1) and returns a ``ParityModel``: its registered name and a few valid rows.
The custom ``PythonModel`` lives in this importable module so that both servers' workers unpickle it by reference.
"""

from __future__ import annotations

import dataclasses
import typing as t

import mlflow
import numpy as np
import pandas as pd


@dataclasses.dataclass(frozen=True)
class ParityModel:
    """A registered model and the valid rows the corpus is built from."""

    name: str
    rows: list[dict[str, t.Any]]


class PriceBands(mlflow.pyfunc.PythonModel):
    """A custom pyfunc: a price with tax and a band per row, as a two-column DataFrame."""

    def predict(self, context: t.Any, model_input: pd.DataFrame, params: t.Any = None) -> pd.DataFrame:
        price = model_input["price"].astype("float64")
        return pd.DataFrame({
            "with_tax": price * 1.2,
            "band": np.where(price > 100, "premium", "standard").astype(object),
        })


def _log(name: str, log: t.Callable[..., t.Any], model: t.Any, **kwargs: t.Any) -> None:
    with mlflow.start_run(run_name=name):
        log(model, name="model", registered_model_name=name, **kwargs)


def churn_pipeline() -> ParityModel:
    """ColumnTransformer (one-hot strings, scaled numbers, booleans passed through) + HistGradientBoosting."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(22)
    count = 300
    frame = pd.DataFrame({
        "plan": rng.choice(["basic", "plus", "pro"], count).astype(object),
        "tenure": rng.integers(0, 72, count).astype("int64"),
        "monthly": rng.uniform(10, 120, count),
        "paperless": rng.integers(0, 2, count).astype(bool),
    })
    churned = ((frame["plan"] == "basic") & (frame["tenure"] < 24) | (frame["monthly"] > 100)).astype(int)
    model = Pipeline([
        ("columns", ColumnTransformer([
            ("plan", OneHotEncoder(handle_unknown="ignore"), ["plan"]),
            ("numbers", StandardScaler(), ["tenure", "monthly"]),
            ("flags", "passthrough", ["paperless"]),
        ])),
        ("classify", HistGradientBoostingClassifier(max_iter=30, random_state=0)),
    ]).fit(frame, churned)
    # cloudpickle: skops (MLflow 3.17's default for scikit-learn) refuses a Pipeline's types unless each is trusted.
    _log("parity-churn-pipeline", mlflow.sklearn.log_model, model, serialization_format="cloudpickle",
         signature=mlflow.models.infer_signature(frame, model.predict(frame)))
    rows = [{"plan": str(r.plan), "tenure": int(r.tenure), "monthly": float(r.monthly), "paperless": bool(r.paperless)}
            for r in frame.iloc[:5].itertuples()]
    return ParityModel("parity-churn-pipeline", rows)


def price_bands() -> ParityModel:
    """A pyfunc over a double and a string column, answering two columns."""
    frame = pd.DataFrame({"price": [12.5, 150.0, 99.99, 101.0], "sku": ["a-1", "b-2", "c-3", "d-4"]})
    _log("parity-price-bands", mlflow.pyfunc.log_model, None, python_model=PriceBands(),
         signature=mlflow.models.infer_signature(frame, PriceBands().predict(None, frame)))
    return ParityModel("parity-price-bands", frame.to_dict(orient="records"))


def float32_kmeans() -> ParityModel:
    """KMeans over two float32 columns (the signature says ``float``), answering cluster numbers."""
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(7)
    frame = pd.DataFrame({"x": rng.normal(0, 3, 200).astype("float32"), "y": rng.normal(0, 3, 200).astype("float32")})
    model = KMeans(n_clusters=3, n_init=3, random_state=0).fit(frame)
    _log("parity-kmeans", mlflow.sklearn.log_model, model, serialization_format="cloudpickle",
         signature=mlflow.models.infer_signature(frame, model.predict(frame)))
    rows = [{"x": float(r.x), "y": float(r.y)} for r in frame.iloc[:4].itertuples()]
    return ParityModel("parity-kmeans", rows)

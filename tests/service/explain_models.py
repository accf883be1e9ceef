"""The models /explain is tested on (tests/service/test_explain_server.py), each logged to an MLflow registry.

Each function logs one model (with an input example, the background /explain uses, unless said otherwise) and
returns its registered name and rows to explain. The custom ``PythonModel`` classes live in this importable module
so the server's workers and explainer processes can unpickle them by reference.
"""

from __future__ import annotations

import dataclasses
import time
import typing as t

import mlflow
import numpy as np
import pandas as pd


@dataclasses.dataclass(frozen=True)
class ExplainedModel:
    """A registered model and the rows /explain gets."""

    name: str
    rows: list[dict[str, t.Any]]
    classes: tuple[str, ...] = ()  # every class explained per row (multi-class); empty: one explanation per row


class RiskScore(mlflow.pyfunc.PythonModel):
    """A custom pyfunc model: a risk score from a number, a flag and a category (strings reach the model as-is)."""

    WEIGHTS = {"low": 0.0, "medium": 1.5, "high": 4.0}

    def predict(self, context: t.Any, model_input: pd.DataFrame, params: t.Any = None) -> np.ndarray:
        level = model_input["level"].map(self.WEIGHTS).to_numpy(dtype=float)
        return (0.02 * model_input["amount"].to_numpy(dtype=float) * (1 + level)
                + 3.0 * model_input["flagged"].to_numpy(dtype=float))


class SlowScore(mlflow.pyfunc.PythonModel):
    """A pyfunc model that takes 50 ms a call: explanations of it take seconds (the 503 paths)."""

    def predict(self, context: t.Any, model_input: pd.DataFrame, params: t.Any = None) -> np.ndarray:
        time.sleep(0.05)
        return model_input["x"].to_numpy(dtype=float) * 2.0 + model_input["y"].to_numpy(dtype=float)


class StallingScore(mlflow.pyfunc.PythonModel):
    """A pyfunc model that hangs for a minute on any row with ``x`` of at least STALL_AT, and is fast otherwise: an
    explanation of such a row outlasts any explain timeout (the kill-and-replace path)."""

    STALL_AT = 1000.0

    def predict(self, context: t.Any, model_input: pd.DataFrame, params: t.Any = None) -> np.ndarray:
        if (model_input["x"] >= self.STALL_AT).any():
            time.sleep(60)
        return model_input["x"].to_numpy(dtype=float) * 2.0 + model_input["y"].to_numpy(dtype=float)


def wait_for_explainer(url: str, row: t.Any, seconds: float = 300) -> int:
    """POST /explain with ``row`` until the server's explainer answers (anything but 503: it has started); the
    status. A server's explainer process loads the model after the server is ready, answering 503 meanwhile."""
    import requests

    deadline = time.monotonic() + seconds
    while True:
        status = requests.post(f"{url}/explain", json={"instances": [row]}, timeout=60).status_code
        if status != 503 or time.monotonic() > deadline:
            return status
        time.sleep(1)


def _log(name: str, log: t.Callable[..., t.Any], model: t.Any, **kwargs: t.Any) -> None:
    with mlflow.start_run(run_name=name):
        log(model, name="model", registered_model_name=name, **kwargs)


def diabetes_regressor(input_example: bool = True, name: str = "explain-diabetes") -> ExplainedModel:
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    frame, target = load_diabetes(return_X_y=True, as_frame=True)
    model = Ridge().fit(frame, target)
    _log(name, mlflow.sklearn.log_model, model,
         signature=mlflow.models.infer_signature(frame, model.predict(frame)),
         input_example=frame.iloc[:40] if input_example else None)
    return ExplainedModel(name, frame.iloc[100:104].to_dict(orient="records"))


def iris_classifier() -> tuple[ExplainedModel, pd.DataFrame]:
    """Multi-class, logged without an input example: its background comes from a file (explain.backgroundUri)."""
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    frame, target = load_iris(return_X_y=True, as_frame=True)
    labels = np.array(["setosa", "versicolor", "virginica"])[target]
    model = RandomForestClassifier(n_estimators=20, random_state=0).fit(frame, labels)
    _log("explain-iris", mlflow.sklearn.log_model, model,
         signature=mlflow.models.infer_signature(frame, model.predict(frame)),
         skops_trusted_types=["sklearn.tree._tree.Tree"])
    rows = frame.iloc[[0, 60, 120]].to_dict(orient="records")
    return ExplainedModel("explain-iris", rows, classes=("setosa", "versicolor", "virginica")), frame.iloc[::5]


def lightgbm_classifier() -> ExplainedModel:
    import lightgbm
    import mlflow.lightgbm

    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"amount": rng.gamma(2, 50, 400), "age_days": rng.integers(0, 3000, 400).astype("int64"),
                          "foreign": rng.integers(0, 2, 400).astype(bool)})
    fraud = ((frame["amount"] > 150) & frame["foreign"]).astype(int)
    model = lightgbm.LGBMClassifier(n_estimators=30, verbose=-1).fit(frame, fraud)
    _log("explain-lightgbm", mlflow.lightgbm.log_model, model,
         signature=mlflow.models.infer_signature(frame, model.predict(frame)), input_example=frame.iloc[:50])
    rows = [{"amount": float(r.amount), "age_days": int(r.age_days), "foreign": bool(r.foreign)}
            for r in frame.iloc[100:104].itertuples()]
    return ExplainedModel("explain-lightgbm", rows)


def risk_pyfunc() -> ExplainedModel:
    frame = pd.DataFrame({"amount": [10.0, 250.0, 80.0, 40.0, 500.0, 120.0],
                          "flagged": [False, True, False, False, True, False],
                          "level": ["low", "high", "medium", "low", "high", "medium"]})
    _log("explain-risk", mlflow.pyfunc.log_model, None, python_model=RiskScore(),
         signature=mlflow.models.infer_signature(frame, RiskScore().predict(None, frame)), input_example=frame)
    rows = [{"amount": 300.0, "flagged": True, "level": "high"}, {"amount": 20.0, "flagged": False, "level": "low"}]
    return ExplainedModel("explain-risk", rows)


def slow_pyfunc() -> ExplainedModel:
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": [0.5, 0.0, 1.0, 2.0]})
    _log("explain-slow", mlflow.pyfunc.log_model, None, python_model=SlowScore(),
         signature=mlflow.models.infer_signature(frame, frame["x"].to_numpy()), input_example=frame)
    return ExplainedModel("explain-slow", [{"x": 9.0, "y": 1.0}, {"x": 0.0, "y": 0.0}, {"x": 1.0, "y": 5.0}])


def stalling_pyfunc(path: t.Any) -> pd.DataFrame:
    """Save a StallingScore model at ``path`` (no registry: the explain pool is given the folder); its input example,
    the explain background, is returned."""
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": [0.5, 0.0, 1.0, 2.0]})
    mlflow.pyfunc.save_model(path, python_model=StallingScore(), input_example=frame, pip_requirements=["mlflow"],
                             signature=mlflow.models.infer_signature(frame, frame["x"].to_numpy()))
    return frame


def tensor_classifier() -> ExplainedModel:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    features, target = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(features, target)
    _log("explain-tensor", mlflow.sklearn.log_model, model,
         signature=mlflow.models.infer_signature(features, model.predict(features)))
    return ExplainedModel("explain-tensor", features[:2].tolist())

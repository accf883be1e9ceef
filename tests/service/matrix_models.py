"""The models of the serving matrix (tests/service/test_model_matrix.py), each logged to an MLflow registry.

One function per model, each returning what the matrix needs to check it: its registered name, rows to send,
the in-process input pyfunc gets for those rows, and a wrong request. The custom ``PythonModel`` lives in this
importable module so the server's workers can unpickle it by reference.
"""

from __future__ import annotations

import dataclasses
import typing as t

import mlflow
import numpy as np
import pandas as pd


@dataclasses.dataclass(frozen=True)
class MatrixModel:
    """A registered model and the requests the matrix sends it."""

    name: str
    rows: list[t.Any]  # what /predict's "instances" carries
    model_input: t.Any  # what mlflow.pyfunc's predict gets for the same rows (typed as its signature says)
    bad_row: t.Any  # a row with a wrong column (or shape)
    bad_words: str  # what the 4xx message must name
    classifier_output: str = "auto"
    # How /predict answers relative to pyfunc: "predict" (same values), "probability" or "predict_proba".
    expects: str = "predict"
    path: str = "sklearn"


class TextStats(mlflow.pyfunc.PythonModel):
    """A custom pyfunc model over text: word count and whether the text shouts."""

    def predict(self, context: t.Any, model_input: pd.DataFrame, params: t.Any = None) -> pd.DataFrame:
        texts = model_input["text"].astype(str)
        return pd.DataFrame({
            "words": texts.str.split().str.len().astype("int64"),
            "label": np.where(texts.str.isupper(), "shouting", "calm"),
        })


def _log(name: str, log: t.Callable[..., t.Any], model: t.Any, **kwargs: t.Any) -> None:
    with mlflow.start_run(run_name=name):
        log(model, name="model", registered_model_name=name, **kwargs)


def diabetes_regressor() -> MatrixModel:
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    frame, target = load_diabetes(return_X_y=True, as_frame=True)
    model = Ridge().fit(frame, target)
    _log("diabetes-regressor", mlflow.sklearn.log_model, model,
         signature=mlflow.models.infer_signature(frame, model.predict(frame)))
    rows = frame.iloc[:25].to_dict(orient="records")
    return MatrixModel("diabetes-regressor", rows, frame.iloc[:25], {**rows[0], "glucose": 1.0}, "glucose")


def iris_classifier() -> MatrixModel:
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    frame, target = load_iris(return_X_y=True, as_frame=True)
    labels = np.array(["setosa", "versicolor", "virginica"])[target]
    model = RandomForestClassifier(n_estimators=20, random_state=0).fit(frame, labels)
    _log("iris-classifier", mlflow.sklearn.log_model, model,
         signature=mlflow.models.infer_signature(frame, model.predict(frame)),
         skops_trusted_types=["sklearn.tree._tree.Tree"])
    rows = frame.iloc[::6].to_dict(orient="records")
    bad = {key: value for key, value in rows[0].items() if key != "petal width (cm)"}
    return MatrixModel("iris-classifier", rows, frame.iloc[::6], bad, "petal width (cm)",
                       classifier_output="predict_proba", expects="predict_proba")


def lightgbm_classifier() -> MatrixModel:
    import lightgbm
    import mlflow.lightgbm

    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"amount": rng.gamma(2, 50, 400), "age_days": rng.integers(0, 3000, 400).astype("int64"),
                          "foreign": rng.integers(0, 2, 400).astype(bool)})
    fraud = ((frame["amount"] > 150) & frame["foreign"]).astype(int)
    model = lightgbm.LGBMClassifier(n_estimators=30, verbose=-1).fit(frame, fraud)
    _log("fraud-lightgbm", mlflow.lightgbm.log_model, model,
         signature=mlflow.models.infer_signature(frame, model.predict(frame)))
    sample = frame.iloc[:30]
    rows = [{"amount": float(r.amount), "age_days": int(r.age_days), "foreign": bool(r.foreign)}
            for r in sample.itertuples()]
    return MatrixModel("fraud-lightgbm", rows, sample, {**rows[0], "age_days": "old"}, "age_days",
                       expects="probability", path="lightgbm")


def text_pyfunc() -> MatrixModel:
    texts = ["the quick brown fox", "HELP ME NOW", "one", "Mixed Case words here", "NO"]
    frame = pd.DataFrame({"text": texts})
    _log("text-stats", mlflow.pyfunc.log_model, None, python_model=TextStats(),
         signature=mlflow.models.infer_signature(frame, TextStats().predict(None, frame)))
    rows = [{"text": text} for text in texts]
    return MatrixModel("text-stats", rows, frame, {"txt": "hello"}, "txt", path="pyfunc")


def tensor_classifier() -> MatrixModel:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    features, target = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(features, target)
    _log("iris-tensor", mlflow.sklearn.log_model, model,
         signature=mlflow.models.infer_signature(features, model.predict(features)))
    sample = features[::10]
    return MatrixModel("iris-tensor", sample.tolist(), sample, [1.0, 2.0, 3.0], "shape",
                       classifier_output="predict")


def unsigned_regressor() -> MatrixModel:
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"rooms": rng.integers(1, 8, 100).astype(float), "area": rng.uniform(20, 200, 100)})
    model = LinearRegression().fit(frame, 1000 * frame["rooms"] + 30 * frame["area"])
    _log("house-unsigned", mlflow.sklearn.log_model, model)
    sample = frame.iloc[:10]
    rows = sample.to_dict(orient="records")
    return MatrixModel("house-unsigned", rows, sample, {"rooms": 2.0, "floors": 1.0}, "floors")

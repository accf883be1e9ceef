"""Train the demo churn classifier and register it in MLflow as ``customer-churn-classifier``.

Public API (everything else is private):

- ``ensure_demo_models(tracking_uri=None, faulty_challenger=False) -> dict[str, str]``: make sure the
  registry has a ``champion`` and a ``challenger`` (faulty or not, as asked); registers only what is missing
  and returns ``{"champion": version, "challenger": version}``.
- ``register_demo_models(tracking_uri=None, faulty_challenger=False) -> dict[str, str]``: always trains and
  registers a new ``challenger`` version (and a ``champion`` if there is none), then moves the aliases.
  A faulty challenger contains ``service.faults.RowHashFault``, which raises for about 8% of rows
  (chosen by a hash of the row's values), so the server answers those requests 5xx.
- ``demo_models_registered(tracking_uri=None) -> bool``: both aliases exist.
- ``sample_instances(count, seed=0) -> list[dict]``: realistic request rows, for load and rollout demos;
  ``sample_labelled_instances`` adds whether each customer churned (the demo's ground truth).
- ``worse_challenger=True`` (both functions above) registers a challenger trained on an extract that lost the
  contract and tenure columns: it never errors and is as fast, but is clearly less accurate.
- CLI: ``python -m service.train [--faulty-challenger] [--if-missing] [--tracking-uri URI]`` prints the
  alias -> version mapping as JSON.

The registry is ``tracking_uri`` if given, else ``MLFLOW_TRACKING_URI``, else SQLite in ``MLSERVE_HOME``
(default ``.mlserve/`` in the checkout); artifacts of a local SQLite registry are stored beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import typing as t
from pathlib import Path

import numpy as np
import pandas as pd

from service.profiles import PROFILE_ARTIFACT, build_profile

from service.faults import RowHashFault
from service.names import DEMO_MODEL_NAME as MODEL_NAME
from service.names import TELEMETRY_OFF
from service.settings import tracking_uri_from_env

logger = logging.getLogger("mlserve.train")

CONTRACT_TYPES = ("Month-to-month", "One year", "Two year")
PAYMENT_METHODS = (
    "Electronic check",
    "Mailed check",
    "Bank transfer (automatic)",
    "Credit card (automatic)",
)
NUMERIC_FEATURES = ("tenure", "monthly_charges", "total_charges")
CATEGORICAL_FEATURES = ("contract_type", "payment_method")
FEATURES = NUMERIC_FEATURES + CATEGORICAL_FEATURES

EXPERIMENT_NAME = "customer-churn"
FAULT_FRACTION = 0.08
# A version tag recording what a demo version is, so ensure_demo_models can tell a faulty challenger apart.
KIND_TAG = "mlserve.kind"


def sample_instances(count: int, seed: int = 0) -> list[dict[str, t.Any]]:
    """``count`` realistic customers as request rows (feature name -> value)."""
    return _synthesize(count, seed)[0].to_dict(orient="records")


def sample_labelled_instances(count: int, seed: int = 0) -> tuple[list[dict[str, t.Any]], list[int]]:
    """``count`` customers as request rows, and whether each churned (1) or not (0): the ground truth."""
    features, churned = _synthesize(count, seed)
    return features.to_dict(orient="records"), [int(value) for value in churned]


def _without_contract_and_tenure(features: pd.DataFrame) -> pd.DataFrame:
    """The worse challenger's training data: an extract that lost the contract and tenure columns, filled with
    defaults (a data-pipeline bug). It still validates and serves, never errors, and predicts clearly worse."""
    broken = features.copy()
    broken["contract_type"] = "Month-to-month"
    broken["tenure"] = 12.0
    broken["total_charges"] = (broken["monthly_charges"] * 12).round(2)
    return broken


def _synthesize(count: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Telco-style customers and whether each churned, with the usual drivers of churn."""
    rng = np.random.default_rng(seed)
    contract = rng.choice(CONTRACT_TYPES, size=count, p=[0.55, 0.21, 0.24])
    payment = rng.choice(PAYMENT_METHODS, size=count, p=[0.34, 0.23, 0.22, 0.21])
    longest = np.select([contract == "Month-to-month", contract == "One year"], [40, 72], 72)
    shortest = np.select([contract == "Month-to-month", contract == "One year"], [0, 6], 18)
    tenure = np.minimum(longest, shortest + rng.exponential(scale=14, size=count)).round()
    tenure = np.where(contract == "Month-to-month", tenure, rng.integers(shortest, longest + 1))
    monthly = np.clip(rng.normal(65, 28, size=count), 18.25, 118.75).round(2)
    total = (tenure * monthly * rng.uniform(0.92, 1.05, size=count)).round(2)
    logit = (
        -1.0
        + 1.1 * (contract == "Month-to-month")
        - 1.3 * (contract == "Two year")
        - 0.045 * tenure
        + 0.018 * (monthly - 65)
        + 0.7 * (payment == "Electronic check")
        + rng.normal(0, 0.6, size=count)
    )
    churned = (rng.uniform(size=count) < 1 / (1 + np.exp(-logit))).astype(int)
    frame = pd.DataFrame(
        {
            "tenure": tenure.astype(float),
            "monthly_charges": monthly,
            "total_charges": total,
            "contract_type": contract.astype(object),
            "payment_method": payment.astype(object),
        },
        columns=list(FEATURES),
    )
    return frame, churned


def _build_pipeline(regularization: float, faulty: bool) -> t.Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    # Columns by name, fitted on a DataFrame, as users build pipelines: the server hands it a DataFrame too.
    prepare = ColumnTransformer(
        [
            ("numeric", StandardScaler(), list(NUMERIC_FEATURES)),
            ("categorical", OneHotEncoder(categories=[list(CONTRACT_TYPES), list(PAYMENT_METHODS)]),
             list(CATEGORICAL_FEATURES)),
        ]
    )
    steps = [("prepare", prepare), ("classify", LogisticRegression(C=regularization, max_iter=1000))]
    if faulty:
        steps.insert(0, ("fault", RowHashFault(fraction=FAULT_FRACTION)))
    return Pipeline(steps)


def _artifact_location(tracking_uri: str) -> str | None:
    """Keep a local SQLite registry's artifacts beside its database instead of in the working directory."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    return None


def _train_and_register(tracking_uri: str, kind: str, seed: int) -> str:
    """Train one demo model, log it with signature and input example, register it; return the version."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.metrics import accuracy_score, roc_auc_score

    settings = {
        "champion": {"regularization": 1.0, "faulty": False},
        "challenger": {"regularization": 0.3, "faulty": False},
        "faulty-challenger": {"regularization": 0.3, "faulty": True},
        "worse-challenger": {"regularization": 1.0, "faulty": False},
    }[kind]
    features, churned = _synthesize(5000, seed)
    split = 4000
    matrix = features.to_numpy(dtype=object)
    pipeline = _build_pipeline(settings["regularization"], faulty=False)
    training = _without_contract_and_tenure(features) if kind == "worse-challenger" else features
    # Evaluated on the real held-out customers, so the registered accuracy shows the damage.
    pipeline.fit(training.iloc[:split], churned[:split])
    probabilities = pipeline.predict_proba(features.iloc[split:])[:, 1]
    metrics = {
        "auc": float(roc_auc_score(churned[split:], probabilities)),
        "accuracy": float(accuracy_score(churned[split:], probabilities >= 0.5)),
    }
    # The reference profile input drift is measured against (service.profiles): the training rows, and the
    # classes the (healthy) model predicted on them.
    churn_predicted = int((pipeline.predict_proba(training.iloc[:split])[:, 1] >= 0.5).sum())
    reference = build_profile(features.iloc[:split], {"1": churn_predicted, "0": split - churn_predicted},
                              "training data")
    if settings["faulty"]:
        healthy = pipeline
        pipeline = _build_pipeline(settings["regularization"], faulty=True)
        pipeline.steps[1:] = healthy.steps
    fault = RowHashFault(FAULT_FRACTION)
    # The input example must pass even through a faulty model: MLflow scores it while logging. It is also the
    # background /explain measures attributions against (service/explain.py): 100 held-out customers, not 3.
    example = features.iloc[[i for i in range(split, len(features)) if not fault.fails_on(matrix[i])][:100]]

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment(EXPERIMENT_NAME, artifact_location=_artifact_location(tracking_uri))
    )
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"demo-{kind}"):
        mlflow.log_params({"kind": kind, "seed": seed, "C": settings["regularization"], "rows": len(features)})
        mlflow.log_metrics(metrics)
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            signature=infer_signature(example, pipeline.predict_proba(example)[:, 1]),
            input_example=example,
            registered_model_name=MODEL_NAME,
            skops_trusted_types=["service.faults.RowHashFault"] if settings["faulty"] else None,
        )
        mlflow.log_text(reference.to_json(), PROFILE_ARTIFACT)
    version = str(info.registered_model_version)
    client.set_model_version_tag(MODEL_NAME, version, KIND_TAG, kind)
    logger.info("registered %s version %s (%s, auc %.3f)", MODEL_NAME, version, kind, metrics["auc"])
    return version


def _aliases(tracking_uri: str) -> dict[str, tuple[str, str | None]]:
    """alias -> (version, kind tag) for the aliases that exist."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    found = {}
    for alias in ("champion", "challenger"):
        try:
            version = client.get_model_version_by_alias(MODEL_NAME, alias)
        except mlflow.exceptions.MlflowException:
            continue
        found[alias] = (str(version.version), version.tags.get(KIND_TAG))
    return found


def demo_models_registered(tracking_uri: str | None = None) -> bool:
    """Whether the registry already has both the ``champion`` and the ``challenger`` alias."""
    tracking_uri = tracking_uri or tracking_uri_from_env()
    _prepare_local_registry(tracking_uri)
    return {"champion", "challenger"} <= set(_aliases(tracking_uri))


def _challenger_kind(faulty_challenger: bool, worse_challenger: bool) -> str:
    if faulty_challenger and worse_challenger:
        raise ValueError("a demo challenger is faulty or worse, not both")
    return "faulty-challenger" if faulty_challenger else "worse-challenger" if worse_challenger else "challenger"


def register_demo_models(tracking_uri: str | None = None, faulty_challenger: bool = False,
                         worse_challenger: bool = False) -> dict[str, str]:
    """Register a new challenger version (and a champion if none); point both aliases; return alias -> version."""
    import mlflow

    tracking_uri = tracking_uri or tracking_uri_from_env()
    _prepare_local_registry(tracking_uri)
    existing = _aliases(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if "champion" in existing:
        champion = existing["champion"][0]
    else:
        champion = _train_and_register(tracking_uri, "champion", seed=7)
        client.set_registered_model_alias(MODEL_NAME, "champion", champion)
    challenger = _train_and_register(tracking_uri, _challenger_kind(faulty_challenger, worse_challenger), seed=11)
    client.set_registered_model_alias(MODEL_NAME, "challenger", challenger)
    return {"champion": champion, "challenger": challenger}


def ensure_demo_models(tracking_uri: str | None = None, faulty_challenger: bool = False,
                       worse_challenger: bool = False) -> dict[str, str]:
    """Register the demo models only if the aliases are missing or the challenger is not the kind asked for."""
    tracking_uri = tracking_uri or tracking_uri_from_env()
    _prepare_local_registry(tracking_uri)
    existing = _aliases(tracking_uri)
    wanted = _challenger_kind(faulty_challenger, worse_challenger)
    # Versions registered before kinds were tagged are healthy challengers.
    challenger_kind = existing.get("challenger", ("", None))[1] or "challenger"
    if "champion" in existing and "challenger" in existing and challenger_kind == wanted:
        return {alias: version for alias, (version, _) in existing.items()}
    return register_demo_models(tracking_uri, faulty_challenger=faulty_challenger, worse_challenger=worse_challenger)


def _prepare_local_registry(tracking_uri: str) -> None:
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: ``python -m service.train``."""
    parser = argparse.ArgumentParser(prog="python -m service.train", description=__doc__.splitlines()[0])
    parser.add_argument("--faulty-challenger", action="store_true",
                        help=f"make the challenger fail on ~{FAULT_FRACTION:.0%} of rows (server answers 5xx)")
    parser.add_argument("--if-missing", action="store_true",
                        help="register only when the aliases are missing or the challenger is the wrong kind")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow registry (default: MLFLOW_TRACKING_URI, else SQLite in MLSERVE_HOME)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name, value in TELEMETRY_OFF.items():
        os.environ.setdefault(name, value)
    register = ensure_demo_models if args.if_missing else register_demo_models
    aliases = register(args.tracking_uri, faulty_challenger=args.faulty_challenger)
    print(json.dumps({"model_name": MODEL_NAME, "aliases": aliases}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A small MLflow registry for the infra tests: the model the stacks name, with known recorded requirements.

`infra_registry()` makes it once per process (SQLite under a temporary directory, removed at exit):
`customer-churn-classifier` version 1 (alias `champion`), version 2 (alias `challenger`) and versions 3 to
7 (the versions the plan tests name, with the champion's requirements), each a trivial pyfunc model logged
with the pip requirements below, so the image build reads real MLflow metadata without training anything.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

MODEL_NAME = "customer-churn-classifier"
CHAMPION_REQUIREMENTS = ("mlflow==3.17.2", "scikit-learn==1.9.1", "cloudpickle==3.1.2")
CHALLENGER_REQUIREMENTS = ("mlflow==3.17.2", "scikit-learn==1.9.1", "cloudpickle==3.1.2", "lightgbm==4.6.0")


@dataclass(frozen=True)
class InfraRegistry:
    uri: str
    home: Path


def log_version(name: str, requirements: tuple[str, ...], alias: str | None) -> str:
    """Log a trivial pyfunc model with `requirements`, register it under `name`, point `alias` (if any) at it."""
    import mlflow
    import mlflow.pyfunc

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=list(requirements))
    version = mlflow.register_model(info.model_uri, name)
    if alias is not None:
        mlflow.MlflowClient().set_registered_model_alias(name, alias, version.version)
    return version.version


@cache
def infra_registry() -> InfraRegistry:
    import mlflow

    home = Path(tempfile.mkdtemp(prefix="mlserve-infra-registry-"))
    atexit.register(shutil.rmtree, home, True)
    uri = f"sqlite:///{home / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.create_experiment("infra-tests", artifact_location=(home / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    try:
        log_version(MODEL_NAME, CHAMPION_REQUIREMENTS, "champion")
        log_version(MODEL_NAME, CHALLENGER_REQUIREMENTS, "challenger")
        for _ in range(3, 8):
            log_version(MODEL_NAME, CHAMPION_REQUIREMENTS, None)
    finally:
        mlflow.set_tracking_uri(previous or "")
        mlflow.set_registry_uri(previous or "")
    return InfraRegistry(uri=uri, home=home)

"""The server's native fast path (scikit-learn API on a typed DataFrame) answers exactly like MLflow's pyfunc.

The server loads a scikit-learn model with ``mlflow.sklearn.load_model`` and calls it on a DataFrame it builds from
validated rows, instead of ``mlflow.pyfunc`` (which re-checks the schema on every call). These tests prove the
shortcut changes no answer on many rows: the same labels as ``pyfunc.predict`` and the same probabilities as the
underlying ``predict_proba``.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from service.loading import load_model, resolve_model
from service.predictor import PREDICT
from service.settings import Settings
from service.train import FEATURES, MODEL_NAME, sample_instances

ROW_COUNT = 3000


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    """Realistic rows as a client sends them: through JSON, so whole numbers arrive as ints."""
    return json.loads(json.dumps(sample_instances(ROW_COUNT, seed=2024)))


def served(registry, version: str, monkeypatch):
    monkeypatch.delenv("MLSERVE_RESOLVED_MODEL", raising=False)
    settings = dataclasses.replace(
        Settings.from_env(), model_uri=f"models:/{MODEL_NAME}/{version}", tracking_uri=registry.tracking_uri,
        max_rows=ROW_COUNT,
    )
    return load_model(settings, resolve_model(settings))


def pyfunc_model(registry, version: str):
    import mlflow.pyfunc

    mlflow.set_registry_uri(registry.tracking_uri)
    return mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{version}")


@pytest.mark.parametrize("alias", ["champion", "healthy_challenger"])
def test_native_answers_equal_pyfunc(registry, rows, alias, monkeypatch):
    version = getattr(registry, alias)
    model = served(registry, version, monkeypatch)
    pyfunc = pyfunc_model(registry, version)
    frame = pd.DataFrame(rows, columns=list(FEATURES))

    assert model.serving_path == "sklearn"
    probabilities = np.asarray(model.predict_rows(rows).values)
    np.testing.assert_allclose(probabilities, pyfunc.get_raw_model().predict_proba(frame)[:, 1], rtol=0, atol=1e-12)
    labels = model.predict_rows(rows, output=PREDICT).values
    assert labels == np.asarray(pyfunc.predict(frame)).tolist()
    assert 0 < sum(labels) < ROW_COUNT, "both classes should occur"
    assert len(np.unique(probabilities.round(6))) > ROW_COUNT // 2, "rows should get many different probabilities"

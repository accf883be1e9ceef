"""The server's hot path (native sklearn flavour, predict_proba on a NumPy object matrix) scores exactly like MLflow.

The server loads the registered model with ``mlflow.sklearn.load_model`` and calls ``predict_proba`` on a matrix
built from validated rows, instead of ``mlflow.pyfunc`` with a DataFrame (about 7x slower per call). These tests
prove the shortcut changes no answer: same probabilities and same labels as the pyfunc model, on many rows.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from service.service import FEATURES, MODEL_NAME, ROWS_ADAPTER, Settings, load_model, to_feature_matrix
from service.train import sample_instances

ROW_COUNT = 3000


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    """Realistic rows as a client sends them: through JSON, so whole numbers arrive as ints."""
    return json.loads(json.dumps(sample_instances(ROW_COUNT, seed=2024)))


def settings_for(registry, version: str) -> Settings:
    return dataclasses.replace(
        Settings.from_env(), model_uri=f"models:/{MODEL_NAME}/{version}", tracking_uri=registry.tracking_uri
    )


def pyfunc_model(registry, version: str):
    import mlflow.pyfunc

    mlflow.set_registry_uri(registry.tracking_uri)
    return mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{version}")


@pytest.mark.parametrize("alias", ["champion", "healthy_challenger"])
def test_native_probabilities_equal_pyfunc_on_a_dataframe(registry, rows, alias):
    version = getattr(registry, alias)
    served = load_model(settings_for(registry, version))
    frame = pd.DataFrame(rows, columns=list(FEATURES))

    native = np.asarray(served.predict_proba(to_feature_matrix(ROWS_ADAPTER.validate_python(rows))))
    through_pyfunc = pyfunc_model(registry, version).get_raw_model().predict_proba(frame)[:, 1]

    assert native.shape == (ROW_COUNT,)
    np.testing.assert_allclose(native, through_pyfunc, rtol=0, atol=1e-12)
    assert len(np.unique(native.round(6))) > ROW_COUNT // 2, "rows should get many different probabilities"


@pytest.mark.parametrize("alias", ["champion", "healthy_challenger"])
def test_native_probabilities_agree_with_pyfunc_predict_labels(registry, rows, alias):
    """``pyfunc.predict`` (what ``mlflow models serve`` answers) gives the class the probabilities imply."""
    version = getattr(registry, alias)
    served = load_model(settings_for(registry, version))

    native = np.asarray(served.predict_proba(to_feature_matrix(ROWS_ADAPTER.validate_python(rows))))
    labels = np.asarray(pyfunc_model(registry, version).predict(pd.DataFrame(rows, columns=list(FEATURES))))

    np.testing.assert_array_equal(labels, (native > 0.5).astype(labels.dtype))
    assert 0 < labels.sum() < ROW_COUNT, "both classes should occur"

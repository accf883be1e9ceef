"""Loading a model for serving, without a server: requirements check, output modes, the pickle switch."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression

from service.errors import ModelLoadError
from service.loading import ModelSource, _load_sklearn, _output_mode, missing_requirements
from service.predictor import CLASS_PROBABILITIES, POSITIVE_PROBABILITY, PREDICT


def source_at(path: Path, **flavors) -> ModelSource:
    return ModelSource("m", "3", "models:/m@champion", path, flavors or {"sklearn": {}}, None, None)


def test_missing_requirements_names_what_this_environment_lacks(tmp_path):
    (tmp_path / "requirements.txt").write_text(
        "mlflow==3.17.2\nnumpy==0.0.1\nsurely-not-installed-package==1.0\npandas\n# a comment\n"
        "windows-only-package==1; sys_platform == 'win32'\n"
    )

    problems = missing_requirements(source_at(tmp_path))

    assert problems == [f"numpy==0.0.1 (installed {np.__version__})", "surely-not-installed-package==1.0 (not installed)"]


def test_a_model_without_requirements_has_nothing_missing(tmp_path):
    assert missing_requirements(source_at(tmp_path)) == []


BINARY = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
THREE = LogisticRegression().fit([[0.0], [1.0], [2.0]], ["a", "b", "c"])
REGRESSOR = LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0])


@pytest.mark.parametrize(
    ("requested", "estimator", "mode", "classes"),
    [
        ("auto", BINARY, POSITIVE_PROBABILITY, (0, 1)),
        ("auto", THREE, CLASS_PROBABILITIES, ("a", "b", "c")),
        ("auto", REGRESSOR, PREDICT, ()),
        ("auto", None, PREDICT, ()),
        ("predict", BINARY, PREDICT, ()),
        ("predict_proba", BINARY, CLASS_PROBABILITIES, (0, 1)),
        ("predict_proba", THREE, CLASS_PROBABILITIES, ("a", "b", "c")),
    ],
)
def test_classifier_output_setting_picks_how_the_model_answers(requested, estimator, mode, classes, tmp_path):
    assert _output_mode(requested, estimator, source_at(tmp_path)) == (mode, classes)


@pytest.mark.parametrize("estimator", [REGRESSOR, None], ids=["regressor", "pyfunc"])
def test_probabilities_asked_of_a_model_without_them_stop_the_server_naming_the_setting(estimator, tmp_path):
    with pytest.raises(ModelLoadError, match="mlserve:model.classifierOutput"):
        _output_mode("predict_proba", estimator, source_at(tmp_path))


def test_a_pickled_model_is_refused_naming_the_stack_key_when_pickle_is_off(tmp_path):
    source = source_at(tmp_path, sklearn={"pickled_model": "model.pkl", "serialization_format": "cloudpickle"})

    with pytest.raises(ModelLoadError, match="mlserve:model.allowPickleDeserialization") as refused:
        _load_sklearn(source, allow_pickle=False)
    assert "cloudpickle" in str(refused.value) and "MLFLOW_ALLOW_PICKLE_DESERIALIZATION" in str(refused.value)


@pytest.mark.parametrize("serialization", ["pickle", "cloudpickle"])
def test_native_loading_reads_the_file_mlflow_wrote(serialization, tmp_path):
    import mlflow.sklearn
    from mlflow.models import Model

    mlflow.sklearn.save_model(BINARY, tmp_path / "model", serialization_format=serialization)
    flavors = Model.load(tmp_path / "model").flavors
    source = dataclasses.replace(source_at(tmp_path / "model"), flavors=flavors)

    loaded = _load_sklearn(source, allow_pickle=True)

    np.testing.assert_array_equal(loaded.predict_proba([[0.5], [2.5]]), BINARY.predict_proba([[0.5], [2.5]]))


def resolved(registry, model_uri: str):
    from service.settings import Settings

    return dataclasses.replace(Settings.from_env(), model_uri=model_uri, tracking_uri=registry.tracking_uri)


@pytest.mark.parametrize("model_uri", ["models:/customer-churn-classifier@champion",
                                       "models:/customer-churn-classifier/1"])
def test_the_sqlite_registry_is_read_without_mlflow_to_the_same_source_mlflow_resolves(registry, model_uri):
    """The cold-start fast path (``_resolve_from_sqlite``) pins the same version, folder, flavours and signature as
    MLflow's client and ``Model.load`` do (compared as the JSON the server hands its workers)."""
    import json

    from service.loading import _resolve_from_registry, _resolve_from_sqlite

    settings = resolved(registry, model_uri)
    fast = _resolve_from_sqlite(settings)

    assert fast is not None
    assert json.loads(fast.to_json()) == json.loads(_resolve_from_registry(settings).to_json())


@pytest.mark.parametrize("model_uri", ["models:/customer-churn-classifier@nobody", "models:/no-such-model/1",
                                       "models:/customer-churn-classifier/99"])
def test_what_the_fast_path_cannot_find_is_left_to_mlflow_and_its_words(registry, model_uri):
    from service.loading import _resolve_from_sqlite

    assert _resolve_from_sqlite(resolved(registry, model_uri)) is None


def test_the_fast_path_and_the_drift_profile_import_no_mlflow(registry):
    """A worker pins the version and reads its run's drift profile (the demo logs one at training) from the
    embedded registry without `import mlflow` and its tracking store (about 4 s of a cold start)."""
    import subprocess
    import sys

    from service.profiles import PROFILE_ARTIFACT, ReferenceProfile

    code = ("import sys; from service.loading import resolve_model; from service.settings import Settings; "
            "from service.profiles import _run_artifact_text; source = resolve_model(Settings.from_env()); "
            "profile = _run_artifact_text(source); print(source.version, 'mlflow' in sys.modules); print(profile)")
    env = {**registry.env(), "MODEL_URI": "models:/customer-churn-classifier@champion"}
    env.pop("MLSERVE_RESOLVED_MODEL", None)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                            cwd=Path(__file__).resolve().parents[2])

    first, profile = result.stdout.split("\n", 1)
    assert first.split() == [registry.champion, "False"], result.stderr
    import mlflow

    client = mlflow.MlflowClient(registry.tracking_uri)
    run_id = client.get_model_version("customer-churn-classifier", registry.champion).run_id
    logged = Path(client.download_artifacts(run_id, PROFILE_ARTIFACT)).read_text()
    assert ReferenceProfile.from_json(profile) == ReferenceProfile.from_json(logged)

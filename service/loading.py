"""Resolve the configured model in the MLflow registry, read its signature, and load it for serving.

``resolve_model(settings) -> ModelSource`` pins ``MODEL_URI`` to one version and reads its ``MLmodel`` file (flavours,
signature, pip requirements) without loading the model: cheap enough to run when the service module is imported,
so the API's types and OpenAPI can describe the real signature. ``load_model(settings, source) -> ServedModel``
then loads the model: natively through the scikit-learn API where the flavour is scikit-learn, XGBoost or LightGBM
(no DataFrame round trip through pyfunc's schema enforcement on every call), and through ``mlflow.pyfunc`` for
everything else. Both paths give ``mlflow.pyfunc.load_model(uri).predict``'s answers (tests prove it per model).
``missing_requirements(source)`` lists the model's pip requirements this environment does not satisfy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import typing as t
import urllib.parse
from pathlib import Path

from service.errors import ModelLoadError
from service.predictor import CLASS_PROBABILITIES, POSITIVE_PROBABILITY, PREDICT, ModelIdentity, ServedModel
from service.schema import InputSchema
from service.settings import ALLOW_PICKLE_ENV, RESOLVED_MODEL_ENV, Settings, parse_model_uri

logger = logging.getLogger("mlserve.service")

# Flavours served natively, and the scikit-learn-API base class the loaded object must be for that to apply.
NATIVE_FLAVOURS = ("sklearn", "xgboost", "lightgbm")
PICKLE_CONFIG_HINT = (
    f"stack config mlserve:model.allowPickleDeserialization: true (env {ALLOW_PICKLE_ENV}=true) allows it; "
    "load only models from a registry you trust"
)


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """One registered model version and what its MLmodel file says about it."""

    name: str
    version: str
    source_uri: str
    local_path: Path
    flavors: dict[str, t.Any]
    signature_inputs: list[dict[str, t.Any]] | None
    signature_outputs: list[dict[str, t.Any]] | None
    # The run that logged the version, and where its artifacts are (the drift profile may be one of them).
    run_id: str | None = None
    run_artifact_uri: str | None = None

    @property
    def run_artifact_path(self) -> Path | None:
        """The run's artifact folder when it is on local disk (the embedded registry's); None otherwise."""
        return local_folder(self.run_artifact_uri) if self.run_artifact_uri else None

    @property
    def schema(self) -> InputSchema:
        return InputSchema.from_signature(self.signature_inputs)

    def to_json(self) -> str:
        """This source as JSON, for ``RESOLVED_MODEL_ENV``."""
        return json.dumps({**dataclasses.asdict(self), "local_path": str(self.local_path)})

    @classmethod
    def from_json(cls, text: str) -> ModelSource:
        fields = json.loads(text)
        return cls(**{**fields, "local_path": Path(fields["local_path"])})


def resolve_model_version(model_uri: str, tracking_uri: str) -> t.Any:
    """The registry's ``ModelVersion`` that ``model_uri`` names right now; raises ModelLoadError when it names nothing."""
    import mlflow

    name, alias, version = parse_model_uri(model_uri)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except Exception as err:
        raise ModelLoadError(f"cannot resolve {model_uri} in the registry at {tracking_uri}: {err}") from err


def resolve_model(settings: Settings) -> ModelSource:
    """Pin ``settings.model_uri`` to one version and read its MLmodel file (signature, flavours).

    A version already pinned by a parent process for the same URI and registry (``RESOLVED_MODEL_ENV``) is reused
    without asking the registry again; a newly resolved one is left there for the processes this one starts.
    """
    inherited = os.environ.get(RESOLVED_MODEL_ENV)
    key = f"{settings.tracking_uri} {settings.model_uri}"
    if inherited and inherited.startswith(key + "\n"):
        source = ModelSource.from_json(inherited.split("\n", 1)[1])
        if (source.local_path / "MLmodel").is_file():
            return source
    source = _resolve_from_sqlite(settings) or _resolve_from_registry(settings)
    os.environ[RESOLVED_MODEL_ENV] = f"{key}\n{source.to_json()}"
    return source


def _resolve_from_sqlite(settings: Settings) -> ModelSource | None:
    """The registry lookup without importing MLflow, for the registry the server usually meets at start-up: MLflow's
    SQLite store (``MLSERVE_HOME``'s embedded registry) with the version's artifacts on local disk. ``import mlflow``
    and its SQLite store (alembic included) took about 2 s of every cold start, before BentoML starts the first
    worker; this reads the same rows MLflow's ``SqlAlchemyStore`` reads (``registered_model_aliases``,
    ``model_versions``) and the ``MLmodel`` file MLflow's ``Model.load`` reads. None whenever anything is not plainly
    that (another store, remote artifacts, a missing alias or version, a version not READY, an unexpected schema), so
    MLflow itself resolves it and words its errors."""
    if not settings.tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(settings.tracking_uri[len("sqlite:///"):])
    name, alias, version = parse_model_uri(settings.model_uri)
    if not database.is_file():
        return None
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as registry:
            if alias is not None:
                rows = registry.execute("SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?",
                                        (name, alias)).fetchall()
                if len(rows) != 1:
                    return None
                version = str(rows[0][0])
            rows = registry.execute("SELECT storage_location, status, run_id FROM model_versions WHERE name = ? AND version = ?",
                                    (name, int(version))).fetchall()
            run_id = rows[0][2] if len(rows) == 1 else None
            runs = registry.execute("SELECT artifact_uri FROM runs WHERE run_uuid = ?", (run_id,)).fetchall() if run_id else []
    except (sqlite3.Error, ValueError):
        return None
    if len(rows) != 1 or rows[0][1] != "READY" or not rows[0][0]:
        return None
    model_path = local_folder(rows[0][0])
    if model_path is None:
        return None
    try:
        import yaml

        meta = yaml.safe_load((model_path / "MLmodel").read_text())
        signature = meta.get("signature") or {}
        inputs = json.loads(signature["inputs"]) if signature.get("inputs") else None
        outputs = json.loads(signature["outputs"]) if signature.get("outputs") else None
        flavors = meta["flavors"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError):
        return None
    return ModelSource(name=name, version=version, source_uri=settings.model_uri, local_path=model_path,
                       flavors=flavors, signature_inputs=inputs, signature_outputs=outputs,
                       run_id=run_id, run_artifact_uri=runs[0][0] if len(runs) == 1 else None)


def local_folder(uri: str) -> Path | None:
    """The folder a ``file:`` URI or plain path names on this machine; None for any other scheme or host."""
    location = urllib.parse.urlparse(uri)
    if location.scheme not in ("", "file") or location.netloc not in ("", "localhost"):
        return None
    return Path(urllib.parse.unquote(location.path))


def _resolve_from_registry(settings: Settings) -> ModelSource:
    import mlflow
    from mlflow.models import Model

    found = resolve_model_version(settings.model_uri, settings.tracking_uri)
    name, version = found.name, str(found.version)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    try:
        local_path = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}"))
        meta = Model.load(local_path)
    except Exception as err:
        raise ModelLoadError(f"cannot read {name} version {version} ({settings.model_uri}): {err}") from err
    signature = meta.signature
    return ModelSource(
        name=name, version=version, source_uri=settings.model_uri, local_path=local_path, flavors=meta.flavors,
        signature_inputs=signature.inputs.to_dict() if signature is not None and signature.inputs else None,
        signature_outputs=signature.outputs.to_dict() if signature is not None and signature.outputs else None,
        run_id=found.run_id or None, run_artifact_uri=_run_artifact_uri(found.run_id, settings.tracking_uri),
    )


def _run_artifact_uri(run_id: str | None, tracking_uri: str) -> str | None:
    """Where the run that logged a version keeps its artifacts; None for a version without a (readable) run."""
    import mlflow

    try:
        return mlflow.MlflowClient(tracking_uri=tracking_uri).get_run(run_id).info.artifact_uri if run_id else None
    except Exception:  # a deleted run, or a registry apart from its tracking server
        return None


def load_model(settings: Settings, source: ModelSource) -> ServedModel:
    """Load ``source`` natively where its flavour allows, else through ``mlflow.pyfunc``, ready to serve."""
    identity = ModelIdentity(source.name, source.version, settings.variant, settings.model_uri)
    try:
        estimator = _native_estimator(source, settings.allow_pickle)
        pyfunc = None if estimator is not None else _pyfunc_model(source)
    except ModelLoadError:
        raise
    except Exception as err:
        hint = f"; {PICKLE_CONFIG_HINT}" if ALLOW_PICKLE_ENV in str(err) else ""
        raise ModelLoadError(
            f"cannot load {source.name} version {source.version} ({settings.model_uri}): {err}{hint}"
        ) from err
    output, classes = _output_mode(settings.classifier_output, estimator, source)
    if estimator is not None:
        scorers = {mode: _native_scorer(estimator, mode, _pyfunc_predict_fn(source))
                   for mode in {PREDICT, output}}
        serving_path = next(flavour for flavour in NATIVE_FLAVOURS if flavour in source.flavors)
    else:
        scorers = {PREDICT: pyfunc.predict}
        serving_path = "pyfunc"
    return ServedModel(identity, source.schema, scorers, output=output, classes=classes,
                       max_rows=settings.max_rows, serving_path=serving_path,
                       output_signature=source.signature_outputs)


def _native_estimator(source: ModelSource, allow_pickle: bool) -> t.Any | None:
    """The model as a scikit-learn-API estimator when its flavour has one, else None (served through pyfunc)."""
    if "sklearn" in source.flavors:
        return _load_sklearn(source, allow_pickle)
    if "xgboost" in source.flavors:
        import mlflow.xgboost
        from xgboost.sklearn import XGBModel

        model = mlflow.xgboost.load_model(str(source.local_path))
        return model if isinstance(model, XGBModel) else None
    if "lightgbm" in source.flavors:
        import mlflow.lightgbm
        from lightgbm import LGBMModel

        model = mlflow.lightgbm.load_model(str(source.local_path))
        return model if isinstance(model, LGBMModel) else None
    return None


def _load_sklearn(source: ModelSource, allow_pickle: bool) -> t.Any:
    """``mlflow.sklearn.load_model`` of a local model without importing mlflow (a second of every cold start).

    The same steps as MLflow 3.17's ``mlflow/sklearn/__init__.py`` (``load_model`` and
    ``_load_model_from_local_file``): the file named by the flavour's ``pickled_model``, read in its
    ``serialization_format`` (skops with the logged ``skops_trusted_types``, pickle by default, or cloudpickle), and
    refused, whatever the format, unless MLFLOW_ALLOW_PICKLE_DESERIALIZATION allows it. A model that ships its own
    code (``code_paths``) goes through MLflow, which puts that code on ``sys.path``.
    """
    conf = source.flavors["sklearn"]
    if conf.get("code"):
        import mlflow.sklearn

        return mlflow.sklearn.load_model(str(source.local_path))
    serialization = conf.get("serialization_format", "pickle")
    if not allow_pickle:
        raise ModelLoadError(
            f"{source.name} version {source.version} is saved with {serialization}, and loading it can run code "
            f"from the model file: refused because {ALLOW_PICKLE_ENV} is false; {PICKLE_CONFIG_HINT}"
        )
    path = source.local_path / conf["pickled_model"]
    if serialization == "skops":
        import skops.io

        return skops.io.load(path, trusted=conf.get("skops_trusted_types"))
    with open(path, "rb") as model_file:
        if serialization == "cloudpickle":
            import cloudpickle

            return cloudpickle.load(model_file)
        import pickle

        return pickle.load(model_file)


def _pyfunc_model(source: ModelSource) -> t.Any:
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(str(source.local_path))


def _pyfunc_predict_fn(source: ModelSource) -> str:
    """The estimator method MLflow's pyfunc calls for this model (``predict`` unless logged otherwise)."""
    return source.flavors.get("python_function", {}).get("predict_fn") or "predict"


def _output_mode(requested: str, estimator: t.Any | None, source: ModelSource) -> tuple[str, tuple[t.Any, ...]]:
    """How the model answers (see service.predictor) and its class names, from the classifier output setting."""
    has_proba = estimator is not None and hasattr(estimator, "predict_proba") and hasattr(estimator, "classes_")
    classes = tuple(getattr(estimator, "classes_", ())) if has_proba else ()
    if requested == "predict" or (requested == "auto" and not has_proba):
        return PREDICT, ()
    if requested == "predict_proba" and not has_proba:
        where = "it is served through mlflow.pyfunc" if estimator is None else "it has no predict_proba"
        raise ModelLoadError(
            f"{source.name} version {source.version} cannot answer class probabilities: {where}; "
            "set the classifier output (stack config mlserve:model.classifierOutput, env MLSERVE_CLASSIFIER_OUTPUT) "
            "to auto or predict"
        )
    if requested == "auto" and len(classes) == 2:
        return POSITIVE_PROBABILITY, classes
    return CLASS_PROBABILITIES, classes


def _native_scorer(estimator: t.Any, output: str, predict_fn: str) -> t.Callable[[t.Any], t.Any]:
    """The scoring function of a native estimator: its input as it was fitted (with column names or without)."""
    # scikit-learn records n_features_in_ on fitting, and feature_names_in_ only when fitted on named columns.
    fitted_on_matrix = hasattr(estimator, "n_features_in_") and not hasattr(estimator, "feature_names_in_")

    def as_fitted(model_input: t.Any) -> t.Any:
        # pyfunc hands the estimator a DataFrame; one fitted on a bare matrix gets the same values without names
        # (what it was fitted on, and no "X has feature names" warning on every call).
        if fitted_on_matrix and hasattr(model_input, "to_numpy"):
            return model_input.to_numpy()
        return model_input

    if output == POSITIVE_PROBABILITY:
        return lambda model_input: estimator.predict_proba(as_fitted(model_input))[:, 1]
    if output == CLASS_PROBABILITIES:
        return lambda model_input: estimator.predict_proba(as_fitted(model_input))
    method = getattr(estimator, predict_fn)
    return lambda model_input: method(as_fitted(model_input))


def missing_requirements(source: ModelSource) -> list[str]:
    """The model's pip requirements (``requirements.txt`` beside MLmodel) this environment lacks or mismatches."""
    from importlib import metadata

    from packaging.requirements import InvalidRequirement, Requirement

    path = source.local_path / "requirements.txt"
    if not path.is_file():
        return []
    problems = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{line} (not installed)")
            continue
        if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
            problems.append(f"{line} (installed {installed})")
    return problems

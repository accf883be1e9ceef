"""What the model server serves and its limits, read once from the environment; imports nothing heavy.

Environment: ``MODEL_URI`` (default ``models:/customer-churn-classifier@champion``, the demo), ``MODEL_VARIANT``
(``champion`` or ``challenger``), ``MLFLOW_TRACKING_URI`` (default: SQLite under ``MLSERVE_HOME``), ``MLSERVE_HOME``
(default ``.mlserve/`` in the checkout), ``MLSERVE_MAX_ROWS`` (rows per request, default 1000),
``MLSERVE_MAX_BODY_BYTES`` (default 1 MiB), ``MLSERVE_WORKERS`` (worker processes, default 1),
``MLSERVE_ACCESS_LOG`` (``true`` to log every request), ``MLSERVE_CLASSIFIER_OUTPUT`` (``auto``, ``predict`` or
``predict_proba``: how a classifier answers, default ``auto``), ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` (MLflow's own
switch for model files that run code when loaded: pickle, cloudpickle, skops; unset means MLflow's default, ``true``),
``MLSERVE_GRPC_PORT`` (the port every worker serves OIP v2 over gRPC on; unset: no gRPC) and ``MLSERVE_GRPC_HOST``
(default ``0.0.0.0``). ``BatchLimits`` reads ``MLSERVE_MAX_BATCH_SIZE`` and ``MLSERVE_MAX_BATCH_WAIT_MS``
(``service.batching``); ``limits_from_env`` reads such numeric limits (``service.admission.AdmissionLimits`` too).
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing as t

from service.errors import ModelLoadError
from service.names import CHAMPION, DEMO_MODEL_NAME, VARIANTS, mlserve_home, parse_registry_uri

# The demo model: served when nothing else is asked for, and registered only when it is what was asked for.
DEFAULT_MODEL_URI = f"models:/{DEMO_MODEL_NAME}@{CHAMPION}"
CLASSIFIER_OUTPUTS = ("auto", "predict", "predict_proba")
# MLflow's own variable: whether pickled (cloudpickle/joblib) model files may be loaded.
ALLOW_PICKLE_ENV = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
TRUE_WORDS = ("1", "true", "yes")
# The server's processes (BentoML's arbiter, then its workers) resolve the model once: the first one that does leaves
# the pinned version here for the processes it starts, so all of them serve the same version (service.loading).
RESOLVED_MODEL_ENV = "MLSERVE_RESOLVED_MODEL"
# Set by `python -m service serve`: the server may register the demo model when the demo is asked for and missing.
REGISTER_DEMO_ENV = "MLSERVE_REGISTER_DEMO"
# Where the front proxy's exporter listens on loopback (set by `serve --front-proxy` and in a pod with one): the
# first worker counts the requests it refused (service.front_proxy.RefusalCounter).
FRONT_PROXY_STATS_PORT_ENV = "MLSERVE_FRONT_PROXY_STATS_PORT"


def parse_model_uri(model_uri: str) -> tuple[str, str | None, str | None]:
    """Split ``models:/name@alias`` or ``models:/name/version`` into (name, alias, version)."""
    parsed = parse_registry_uri(model_uri)
    if parsed is None:
        raise ModelLoadError(
            f"MODEL_URI={model_uri!r} is not a registry URI; use models:/NAME@ALIAS or models:/NAME/VERSION"
        )
    return parsed


def tracking_uri_from_env() -> str:
    """``MLFLOW_TRACKING_URI``, or the embedded SQLite registry under ``MLSERVE_HOME``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{mlserve_home() / 'mlflow.db'}"


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        value = int(raw) if raw else default
    except ValueError as err:
        raise ValueError(f"{name}={raw!r} is not an integer") from err
    if value < 1:
        raise ValueError(f"{name}={value} must be at least 1")
    return value


def _port_env(name: str, hint: str = "") -> int | None:
    raw = os.environ.get(name, "")
    if not raw:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ValueError(f"{name}={raw!r} must be a port between 1 and 65535{hint}")
    return int(raw)


def _choice_env(name: str, allowed: tuple[str, ...], default: str) -> str:
    value = os.environ.get(name) or default
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(allowed)}")
    return value


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the server serves and its request limits, read once from the environment."""

    model_uri: str
    variant: str
    tracking_uri: str
    max_rows: int
    max_body_bytes: int
    workers: int
    access_log: bool
    classifier_output: str
    allow_pickle: bool
    grpc_port: int | None
    grpc_host: str
    front_proxy_stats_port: int | None  # the front proxy's exporter on loopback, when one is in front (front_proxy.py)

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            model_uri=os.environ.get("MODEL_URI") or DEFAULT_MODEL_URI,
            variant=_choice_env("MODEL_VARIANT", VARIANTS, "champion"),
            tracking_uri=tracking_uri_from_env(),
            max_rows=_int_env("MLSERVE_MAX_ROWS", 1000),
            max_body_bytes=_int_env("MLSERVE_MAX_BODY_BYTES", 1 << 20),
            workers=_int_env("MLSERVE_WORKERS", 1),
            access_log=os.environ.get("MLSERVE_ACCESS_LOG", "").lower() in TRUE_WORDS,
            classifier_output=_choice_env("MLSERVE_CLASSIFIER_OUTPUT", CLASSIFIER_OUTPUTS, "auto"),
            allow_pickle=os.environ.get(ALLOW_PICKLE_ENV, "true").lower() in TRUE_WORDS,
            # 0 cannot mean "any free port" here: each worker would pick a different one.
            grpc_port=_port_env("MLSERVE_GRPC_PORT", " (`service serve --grpc-port 0` picks a free one)"),
            grpc_host=os.environ.get("MLSERVE_GRPC_HOST") or "0.0.0.0",
            front_proxy_stats_port=_port_env(FRONT_PROXY_STATS_PORT_ENV),
        )


Limits = t.TypeVar("Limits")


def limits_from_env(cls: type[Limits], environ: t.Mapping[str, str] | None = None,
                    minimums: t.Mapping[str, float] | None = None) -> Limits:
    """A frozen dataclass of numeric limits read from the environment: each field from the variable its ``ENV``
    names, its ``DEFAULTS`` value when unset; integers at least 1, durations at least 0.001 unless ``minimums``
    (or the class's ``MINIMUMS``) says otherwise. Every bad variable is reported at once, with what is allowed."""
    environ = os.environ if environ is None else environ
    minimums = {**getattr(cls, "MINIMUMS", {}), **(minimums or {})}
    values: dict[str, float] = {}
    problems = []
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        name, default = cls.ENV[field.name], cls.DEFAULTS[field.name]  # type: ignore[attr-defined]
        raw = environ.get(name, "")
        want_int = field.type == "int"
        try:
            value = (int(raw) if want_int else float(raw)) if raw else default
        except ValueError:
            value = math.nan
        minimum = minimums.get(field.name, 1 if want_int else 0.001)
        if not (value >= minimum and math.isfinite(value)):
            unit = "milliseconds" if field.name.endswith("_ms") else "seconds"
            kind = "an integer" if want_int else f"a number of {unit}"
            problems.append(f"{name}={raw!r} must be {kind} of at least {minimum:g}")
        values[field.name] = value
    if problems:
        raise ValueError("; ".join(problems))
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class BatchLimits:
    """How large a merged model call may grow, and how long a request may wait for others to join it."""

    max_batch_size: int
    max_wait_ms: float

    ENV: t.ClassVar[dict[str, str]] = {
        "max_batch_size": "MLSERVE_MAX_BATCH_SIZE",
        "max_wait_ms": "MLSERVE_MAX_BATCH_WAIT_MS",
    }
    # The same defaults as Pulumi.yaml's serving.* keys (measured with bench/serving.py; README "Performance").
    DEFAULTS: t.ClassVar[dict[str, float]] = {"max_batch_size": 64, "max_wait_ms": 2.0}
    MINIMUMS: t.ClassVar[dict[str, float]] = {"max_batch_size": 1, "max_wait_ms": 0.0}

    @classmethod
    def from_env(cls, environ: t.Mapping[str, str] | None = None) -> BatchLimits:
        """Read the limits; every bad variable is reported at once, with its value and what is allowed."""
        return limits_from_env(cls, environ)

"""Names shared by the model server, the stack, the rollout and the benchmarks, each defined once.

The server exports the metrics under these names, the stack's dashboard and alerts chart them, the rollout
analysis queries them and the benchmarks read them back; the variants, the demo model, the telemetry switches,
the local state folder and the grammar of registry model URIs are likewise everyone's. This module imports the
standard library only, so any of them (and the image, which carries `service/`) can import it for free, and it
does nothing when imported.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

# The two variants of a stack: the model serving today and the candidate.
CHAMPION = "champion"
CHALLENGER = "challenger"
VARIANTS = (CHAMPION, CHALLENGER)

# The demo model: `python -m service.train` registers it; served when nothing else is asked for.
DEMO_MODEL_NAME = "customer-churn-classifier"

# Metrics of the model server, each labelled model_name, model_version, variant (and protocol).
PREDICTIONS_METRIC = "model_predictions_total"  # every prediction request, successful or not
LATENCY_METRIC = "model_prediction_latency_seconds"  # histogram
ERRORS_METRIC = "model_prediction_errors_total"  # failed requests again, by error_type
ACTIVE_METRIC = "model_active_requests"
INPUT_SIZE_METRIC = "model_input_size_bytes"
# The `error_type` label of ERRORS_METRIC. The client's mistakes (4xx) never count against the model.
CLIENT_ERROR_TYPES = ("invalid_input", "payload_too_large")
ERROR_TYPES = (*CLIENT_ERROR_TYPES, "model_error", "unavailable")
# On Seldon, every prediction call passes the executor first, which counts it with the status it answered
# (SeldonIO/seldon-core v1.18.2 executor/api/metric/constants.go, executor/api/rest/server.go wrapMetrics).
EXECUTOR_REQUESTS_METRIC = "seldon_api_executor_server_requests_seconds_count"

# BentoML and MLflow send usage telemetry unless told not to; every process we start, local or in a pod, gets these.
TELEMETRY_OFF = {"BENTOML_DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}

# The local state folder: the embedded MLflow registry, rollout locks, demo logs.
MLSERVE_HOME_ENV = "MLSERVE_HOME"
_CHECKOUT = Path(__file__).resolve().parent.parent

# Registry model URIs: models:/NAME@ALIAS or models:/NAME/VERSION (MLflow's `models:` scheme).
REGISTRY_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))")
# What a stack may name as a model: a registry URI (aliases in Kubernetes label characters), a run's artifact,
# or a storage URL.
STACK_MODEL_URI = re.compile(r"^(models:/[^/@]+(@[A-Za-z0-9_-]+|/\d+)|runs:/[^/]+/.+|[a-z][a-z0-9+.-]*://.+)$")


def mlserve_home() -> Path:
    """``$MLSERVE_HOME``, or ``.mlserve/`` at the root of the checkout this file lives in."""
    return Path(os.environ.get(MLSERVE_HOME_ENV) or _CHECKOUT / ".mlserve")


def parse_registry_uri(model_uri: str) -> tuple[str, str | None, str | None] | None:
    """``(name, alias, version)`` of a registry URI (one of alias and version is None); None for any other string."""
    match = REGISTRY_URI.fullmatch(model_uri)
    return (match["name"], match["alias"], match["version"]) if match else None


def registry_uri(name: str, version: str | int) -> str:
    """The registry URI of one version of a model, ``models:/NAME/VERSION``."""
    return f"models:/{name}/{version}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]

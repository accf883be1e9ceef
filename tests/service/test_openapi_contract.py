"""Schemathesis against the OpenAPI document two different served models publish: the document tells the truth.

``st run`` (schemathesis, pinned in requirements.txt) reads ``/docs.json`` from each running server and runs all
its phases (examples, coverage, fuzzing, stateful) with a fixed seed and a bounded number of examples per operation.
The checks: no 5xx (``not_a_server_error``), and no answer the document does not allow: status codes, content
types, headers and bodies (``status_code_conformance``, ``content_type_conformance``,
``response_headers_conformance``, ``response_schema_conformance``). The coverage phase is the one that found the
multipart 500 of issue 16.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests

from .conftest import start_server, stop_server
from .explain_models import wait_for_explainer
from .test_server import EXAMPLE

pytestmark = pytest.mark.integration

SEED = 16
MAX_EXAMPLES = 30
PHASES = "examples,coverage,fuzzing,stateful"
CHECKS = ",".join([
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
])
SCHEMATHESIS = Path(sys.executable).parent / "st"


@pytest.fixture(scope="module")
def other_model_server(registry, tmp_path_factory):
    """A second, different model: a Ridge regressor over ten float columns, in the session's registry."""
    import mlflow

    from . import matrix_models

    mlflow.set_tracking_uri(registry.tracking_uri)
    mlflow.set_registry_uri(registry.tracking_uri)
    # Artifacts beside the session's temporary registry, not in ./mlruns of the checkout.
    artifacts = (registry.home / "contract-artifacts").as_uri()
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("openapi-contract", artifact_location=artifacts))
    model = matrix_models.diabetes_regressor()
    server = start_server(registry, tmp_path_factory.mktemp("logs") / "diabetes.log",
                          "--model-uri", f"models:/{model.name}/1")
    server.explain_row = model.rows[0]
    yield server
    stop_server(server)


def run_schemathesis(url: str, workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCHEMATHESIS), "run", f"{url}/docs.json", "--phases", PHASES, "--checks", CHECKS,
         "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--workers", "1", "--request-timeout", "30",
         "--no-color"],
        cwd=workdir, capture_output=True, text=True, timeout=900,
    )


@pytest.mark.parametrize("served", ["champion_server", "other_model_server"])
def test_generated_requests_get_no_server_error_and_no_answer_the_document_does_not_allow(request, served, tmp_path):
    server = request.getfixturevalue(served)
    # /explain answers 503 until the server's explainer process has loaded the model: wait for it first.
    wait_for_explainer(server.url, getattr(server, "explain_row", EXAMPLE))

    result = run_schemathesis(server.url, tmp_path)

    assert result.returncode == 0, f"{result.stdout[-8000:]}\n{result.stderr[-2000:]}\nserver log:\n{server.log_tail()}"
    assert "Coverage" in result.stdout and "Stateful" in result.stdout, result.stdout[-3000:]
    assert requests.get(f"{server.url}/readyz", timeout=10).status_code == 200, "still serving afterwards"

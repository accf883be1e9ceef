"""`/invocations` against the real `mlflow models serve` (3.17.2, `--env-manager local`): the same requests, the same
answers, except the deliberate differences of one table (``parity_corpus.DIFFERENCES``) that the README shows.

Three models of different shapes (``parity_models``) are each served twice, by MLflow's scoring server and by mlserve
(`python -m service serve`, so `bentoml serve`), all six started at once and shared by the module. Every request of
the corpus (``parity_corpus.corpus``: valid bodies in every format and bad ones of every class) goes to both. Where
no difference is listed: the same status class, the same predictions within 1e-9 where both succeed, and MLflow's
``error_code`` on mlserve's 4xx. Where one is listed: each server answers what the table says. mlserve never answers
5xx, and every 4xx of its `/invocations` is JSON with ``error_code`` and ``message``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from service.__main__ import free_port

from . import parity_models
from .conftest import READY_TIMEOUT_SECONDS, REPO_ROOT, Registry, Server, stop_server
from .parity_corpus import DIFFERENCES, Case, corpus, differences_markdown

pytestmark = pytest.mark.integration

MODELS = {"churn": parity_models.churn_pipeline, "price": parity_models.price_bands,
          "kmeans": parity_models.float32_kmeans}
MLFLOW_ERROR_CODES = ("BAD_REQUEST", "INVALID_PARAMETER_VALUE")
TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def parity_registry(tmp_path_factory) -> Registry:
    home = tmp_path_factory.mktemp("parity-home")
    return Registry(home, f"sqlite:///{home / 'mlflow.db'}", "", "", "")


@pytest.fixture(scope="module")
def models(parity_registry) -> dict[str, tuple[parity_models.ParityModel, dict[str, str]]]:
    """Each model logged and registered as version 1, with its signature's column types."""
    import mlflow

    mlflow.set_tracking_uri(parity_registry.tracking_uri)
    mlflow.set_registry_uri(parity_registry.tracking_uri)
    artifacts = (parity_registry.home / "artifacts").as_uri()  # beside the registry, never ./mlruns
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("parity", artifact_location=artifacts))
    logged = {}
    for key, log in MODELS.items():
        model = log()
        inputs = mlflow.models.get_model_info(f"models:/{model.name}/1").signature.inputs.to_dict()
        logged[key] = (model, {spec["name"]: spec["type"] for spec in inputs})
    return logged


def _start(command: list[str], env: dict[str, str], log_path: Path) -> Server:
    port = free_port()
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen([*command, str(port)], cwd=REPO_ROOT, env=env, stdout=log_file,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    return Server(f"http://127.0.0.1:{port}", process, log_path)


@pytest.fixture(scope="module")
def servers(models, parity_registry, tmp_path_factory):
    """``{key: (mlflow, mlserve)}``: six servers started at once, waited for together, stopped at the end."""
    logs = tmp_path_factory.mktemp("parity-logs")
    env = {**parity_registry.env(), "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",
           # MLflow's server runs `uvicorn` from PATH; both unpickle parity_models.PriceBands by reference.
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(REPO_ROOT), "MLFLOW_MODELS_WORKERS": "1"}
    started: dict[str, tuple[Server, Server]] = {}
    try:
        for key, (model, _) in models.items():
            uri = f"models:/{model.name}/1"
            started[key] = (
                _start([sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
                        "-h", "127.0.0.1", "--workers", "1", "-p"], env, logs / f"mlflow-{key}.log"),
                _start([sys.executable, "-m", "service", "serve", "--model-uri", uri, "--port"], env,
                       logs / f"mlserve-{key}.log"),
            )
        waiting = {(key, index): (server, "/ping" if index == 0 else "/readyz")
                   for key, pair in started.items() for index, server in enumerate(pair)}
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS * 2
        while waiting and time.monotonic() < deadline:
            for name, (server, path) in list(waiting.items()):
                if server.process.poll() is not None:
                    raise RuntimeError(f"{name} exited {server.process.returncode}:\n{server.log_tail()}")
                try:
                    if requests.get(server.url + path, timeout=2).status_code == 200:
                        del waiting[name]
                except requests.RequestException:
                    pass
            time.sleep(0.5)
        if waiting:
            raise RuntimeError(f"not ready: {sorted(waiting)}\n" + "\n".join(s.log_tail() for s, _ in waiting.values()))
        yield started
    finally:
        for pair in started.values():
            for server in pair:
                stop_server(server)


def post(server: Server, case: Case) -> tuple[int, object]:
    headers = {"Content-Type": case.content_type} if case.content_type else {}
    response = requests.post(f"{server.url}/invocations", data=case.body, headers=headers, timeout=60)
    try:
        return response.status_code, response.json()
    except ValueError:
        # MLflow's 415 is plain text, and its answers with NaN are not JSON for a strict parser: keep the text.
        return response.status_code, response.text


def same_values(ours: object, theirs: object) -> bool:
    """Equal JSON shapes, numbers within TOLERANCE."""
    if isinstance(ours, bool) or isinstance(theirs, bool):
        return ours == theirs
    if isinstance(ours, (int, float)) and isinstance(theirs, (int, float)):
        return math.isclose(ours, theirs, rel_tol=TOLERANCE, abs_tol=TOLERANCE)
    if isinstance(ours, list) and isinstance(theirs, list):
        return len(ours) == len(theirs) and all(same_values(a, b) for a, b in zip(ours, theirs))
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return ours.keys() == theirs.keys() and all(same_values(ours[k], theirs[k]) for k in ours)
    return ours == theirs


def problems_with(case: Case, mlflow: tuple[int, object], ours: tuple[int, object]) -> list[str]:
    """What is wrong with mlserve's answer to ``case`` given MLflow's; empty when it is as it should be."""
    (their_status, their_body), (our_status, our_body) = mlflow, ours
    found = []
    if our_status >= 500:
        found.append(f"mlserve answered {our_status}: {our_body}")
    if our_status >= 400 and not (isinstance(our_body, dict) and our_body.get("error_code") in MLFLOW_ERROR_CODES
                                  and our_body.get("message")):
        found.append(f"mlserve's {our_status} lacks MLflow's error_code and message: {our_body}")
    difference = DIFFERENCES.get(case.difference or "")
    if difference and (not case.difference_models or case.model in case.difference_models):
        if (their_status, our_status) != (difference.mlflow_status, difference.mlserve_status):
            found.append(f"listed difference {case.difference!r} says MLflow {difference.mlflow_status} and mlserve "
                         f"{difference.mlserve_status}; got {their_status} and {our_status}")
        return found
    if their_status // 100 != our_status // 100:
        found.append(f"MLflow answered {their_status}, mlserve {our_status}: {str(our_body)[:300]}")
    elif our_status == 200 and not same_values(our_body.get("predictions"), their_body.get("predictions")):
        found.append(f"predictions differ: MLflow {their_body}, mlserve {our_body}")
    elif our_status >= 400 and isinstance(their_body, dict) and isinstance(our_body, dict) and (
        their_body.get("error_code") != our_body.get("error_code")
    ):
        found.append(f"MLflow's error_code is {their_body.get('error_code')}, mlserve's {our_body.get('error_code')}")
    return found


@pytest.mark.parametrize("key", list(MODELS))
def test_invocations_answers_what_mlflow_models_serve_answers(servers, models, key):
    model, types = models[key]
    mlflow_server, mlserve = servers[key]
    cases = corpus(key, model, types)

    failures = {}
    for case in cases:
        if problems := problems_with(case, post(mlflow_server, case), post(mlserve, case)):
            failures[case.name] = problems

    assert not failures, json.dumps(failures, indent=2)
    assert requests.get(f"{mlserve.url}/readyz", timeout=5).status_code == 200


def test_the_corpus_has_every_request_class_for_every_model(models):
    cases = [case for key, (model, types) in models.items() for case in corpus(key, model, types)]
    names = " ".join(case.name for case in cases)

    assert len(cases) >= 60, len(cases)
    for words in ("dataframe_split", "dataframe_records", "instances", "inputs", "CSV", "extra column",
                  "missing column", "null for", "text for", "empty", "not JSON", "1e300", "text/plain"):
        assert words in names, words
    assert {case.difference for case in cases if case.difference} == set(DIFFERENCES), "an unused difference"


def test_the_readme_shows_the_table_of_differences():
    readme = (REPO_ROOT / "README.md").read_text()

    assert differences_markdown() in readme, "README.md's table of differences is not parity_corpus.DIFFERENCES:\n" \
        + differences_markdown()

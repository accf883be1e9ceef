"""Seven kinds of registered model, each served for real by `python -m service serve` (so by `bentoml serve`).

For every model: `/predict`, `/invocations` and OIP `infer` agree with `mlflow.pyfunc.load_model(uri).predict` run
in-process (or with the estimator's `predict_proba` where the server is asked for probabilities), the OIP metadata
matches the signature, and a wrong column gets a 4xx naming it. Then generated requests (hypothesis, from the
OpenAPI schema the server publishes) at two of them: never a 5xx, and the server still answers afterwards.
The seven servers start together and are shared by every test of this module.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import requests

from service.__main__ import free_port
from service.predictor import to_json_values
from service.schema import COLUMN_TYPES, OIP_DATATYPES

from . import matrix_models
from .conftest import READY_TIMEOUT_SECONDS, REPO_ROOT, Registry, Server, stop_server

pytestmark = pytest.mark.integration

MATRIX = ["churn", "diabetes", "iris", "lightgbm", "text", "tensor", "unsigned"]
GENERATED_REQUESTS = 1000


def churn_model(tracking_uri: str) -> matrix_models.MatrixModel:
    from service.train import FEATURES, MODEL_NAME, ensure_demo_models, sample_instances

    ensure_demo_models(tracking_uri)
    rows = sample_instances(40, seed=12)
    bad = {**rows[0], "region": "north"}
    return matrix_models.MatrixModel(MODEL_NAME, rows, pd.DataFrame(rows, columns=list(FEATURES)), bad, "region",
                                     expects="probability")


@pytest.fixture(scope="module")
def matrix_registry(tmp_path_factory) -> Registry:
    home = tmp_path_factory.mktemp("matrix-home")
    return Registry(home, f"sqlite:///{home / 'mlflow.db'}", "", "", "")


@pytest.fixture(scope="module")
def models(matrix_registry) -> dict[str, matrix_models.MatrixModel]:
    import mlflow

    mlflow.set_tracking_uri(matrix_registry.tracking_uri)
    mlflow.set_registry_uri(matrix_registry.tracking_uri)
    # Artifacts beside the temporary registry, not in ./mlruns of the checkout.
    artifacts = (matrix_registry.home / "artifacts").as_uri()
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("matrix", artifact_location=artifacts))
    return {
        "churn": churn_model(matrix_registry.tracking_uri),
        "diabetes": matrix_models.diabetes_regressor(),
        "iris": matrix_models.iris_classifier(),
        "lightgbm": matrix_models.lightgbm_classifier(),
        "text": matrix_models.text_pyfunc(),
        "tensor": matrix_models.tensor_classifier(),
        "unsigned": matrix_models.unsigned_regressor(),
    }


@pytest.fixture(scope="module")
def servers(models, matrix_registry, tmp_path_factory):
    """All seven servers, started at once (start-up is mostly waiting on imports), stopped at the end."""
    registry = matrix_registry
    logs = tmp_path_factory.mktemp("matrix-logs")
    started: dict[str, Server] = {}
    try:
        for key, model in models.items():
            port = free_port()
            log_path = logs / f"{key}.log"
            with open(log_path, "wb") as log_file:
                process = subprocess.Popen(
                    [sys.executable, "-m", "service", "serve", "--port", str(port), "--model-uri",
                     f"models:/{model.name}/1"],
                    cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    env={**registry.env(), "MLSERVE_CLASSIFIER_OUTPUT": model.classifier_output,
                         "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"},
                )
            started[key] = Server(f"http://127.0.0.1:{port}", process, log_path)
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS * 2
        waiting = dict(started)
        while waiting and time.monotonic() < deadline:
            for key, server in list(waiting.items()):
                if server.process.poll() is not None:
                    raise RuntimeError(f"{key} server exited {server.process.returncode}:\n{server.log_tail()}")
                try:
                    if requests.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                        del waiting[key]
                except requests.RequestException:
                    pass
            time.sleep(0.5)
        if waiting:
            raise RuntimeError(f"not ready: {sorted(waiting)}\n" + "\n".join(s.log_tail() for s in waiting.values()))
        yield started
    finally:
        for server in started.values():
            stop_server(server)


@pytest.fixture(scope="module")
def pyfuncs(models):
    import mlflow.pyfunc

    return {key: mlflow.pyfunc.load_model(f"models:/{model.name}/1") for key, model in models.items()}


def expected_predict(model: matrix_models.MatrixModel, pyfunc) -> object:
    """What /predict should answer: pyfunc's predictions, or the estimator's probabilities when asked for them."""
    if model.expects == "predict":
        return to_json_values(pyfunc.predict(model.model_input))
    raw = pyfunc.get_raw_model()
    probabilities = raw.predict_proba(model.model_input)
    if model.expects == "probability":
        return probabilities[:, 1].tolist()
    return [dict(zip(map(str, raw.classes_), row)) for row in probabilities.tolist()]


def assert_same(actual: object, expected: object) -> None:
    """Equal, with floats compared to 1e-9 (JSON round trip)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), (actual, expected)
        for key in expected:
            assert_same(actual[key], expected[key])
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), (actual, expected)
        for got, want in zip(actual, expected):
            assert_same(got, want)
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-9, abs=1e-12)
    else:
        assert actual == expected


def oip_inputs(model: matrix_models.MatrixModel) -> list[dict]:
    """The rows as OIP tensors: one per column, or one [rows, ...] tensor for a tensor signature."""
    if isinstance(model.model_input, np.ndarray):
        array = model.model_input
        return [{"name": "input", "shape": list(array.shape), "datatype": OIP_DATATYPES[str(array.dtype)],
                 "data": array.ravel().tolist()}]
    frame = pd.DataFrame(model.rows)
    return [{"name": name, "shape": [len(frame)], "datatype": "BYTES",
             "data": [value.item() if hasattr(value, "item") else value for value in frame[name]]}
            for name in frame.columns]


@pytest.mark.parametrize("key", MATRIX)
def test_predict_answers_what_pyfunc_predicts_in_process(servers, models, pyfuncs, key):
    model = models[key]
    response = requests.post(f"{servers[key].url}/predict", json={"instances": model.rows}, timeout=30)

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model_name"], body["model_version"], body["variant"]) == (model.name, "1", "champion")
    assert_same(body["predictions"], expected_predict(model, pyfuncs[key]))


@pytest.mark.parametrize("key", MATRIX)
def test_predict_batch_answers_what_predict_answers(servers, models, key):
    model = models[key]
    predicted = requests.post(f"{servers[key].url}/predict", json={"instances": model.rows}, timeout=30).json()

    response = requests.post(f"{servers[key].url}/predict_batch", json={"instances": model.rows}, timeout=30)

    assert response.status_code == 200, response.text
    assert_same(response.json(), predicted["predictions"])


@pytest.mark.parametrize("key", ["churn", "tensor"])
def test_a_bad_row_fails_only_its_own_request_when_requests_are_batched_together(servers, models, key):
    """/predict_batch merges concurrent requests into one batch: each request's rows are checked before that, so a
    client's wrong row (a wrong column, or a tensor row of the wrong length) is refused, and only that client's."""
    model = models[key]
    url = f"{servers[key].url}/predict_batch"
    expected = requests.post(f"{servers[key].url}/predict", json={"instances": model.rows[:1]}, timeout=30).json()
    bodies = [{"instances": [model.bad_row if index % 3 == 0 else model.rows[0]]} for index in range(24)]

    with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
        responses = list(pool.map(lambda body: requests.post(url, json=body, timeout=60), bodies))

    for body, response in zip(bodies, responses):
        if body["instances"][0] is model.bad_row:
            assert response.status_code == 400, response.text
            assert response.json()["detail"][0]["loc"][:2] == ["instances", 0], response.text  # names the row
        else:
            assert response.status_code == 200, response.text
            assert_same(response.json(), expected["predictions"])


@pytest.mark.parametrize("key", MATRIX)
def test_invocations_answers_what_mlflow_models_serve_would(servers, models, pyfuncs, key):
    model = models[key]
    expected = to_json_values(pyfuncs[key].predict(model.model_input))
    bodies = [{"instances": model.rows}]
    if isinstance(model.rows[0], dict):
        frame = pd.DataFrame(model.rows)
        bodies += [{"dataframe_records": model.rows},
                   {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}]
    else:
        bodies += [{"inputs": model.rows}]

    for body in bodies:
        response = requests.post(f"{servers[key].url}/invocations", json=body, timeout=30)
        assert response.status_code == 200, (list(body), response.text)
        assert_same(response.json()["predictions"], expected)
    if isinstance(model.rows[0], dict) and key != "text":
        csv = pd.DataFrame(model.rows).to_csv(index=False)
        response = requests.post(f"{servers[key].url}/invocations", data=csv,
                                 headers={"Content-Type": "text/csv"}, timeout=30)
        assert response.status_code == 200, response.text
        assert_same(response.json()["predictions"], expected)


@pytest.mark.parametrize("key", MATRIX)
def test_oip_infer_agrees_with_predict(servers, models, key):
    model = models[key]
    predicted = requests.post(f"{servers[key].url}/predict", json={"instances": model.rows}, timeout=30).json()

    response = requests.post(f"{servers[key].url}/v2/models/{model.name}/infer",
                             json={"id": key, "inputs": oip_inputs(model)}, timeout=30)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == key and body["model_name"] == model.name and body["parameters"]["variant"] == "champion"
    outputs = body["outputs"]
    values = predicted["predictions"]
    if isinstance(values[0], dict) and model.expects != "predict_proba":  # a DataFrame answer: one tensor per column
        assert [o["name"] for o in outputs] == list(values[0])
        for output in outputs:
            assert_same(output["data"], [row[output["name"]] for row in values])
    elif model.expects == "predict_proba":
        [output] = outputs
        classes = output["parameters"]["classes"]
        assert output["shape"] == [len(values), len(classes)]
        assert_same(output["data"], [row[name] for row in values for name in classes])
    else:
        [output] = outputs
        assert output["shape"][0] == len(values)
        assert_same(output["data"], [v if isinstance(v, (int, float)) else str(v) for v in np.ravel(values).tolist()])


@pytest.mark.parametrize("key", MATRIX)
def test_oip_metadata_describes_the_signature(servers, models, pyfuncs, key):
    model = models[key]
    signature = pyfuncs[key].metadata.signature

    body = requests.get(f"{servers[key].url}/v2/models/{model.name}", timeout=10).json()

    assert body["name"] == model.name and body["versions"] == ["1"]
    assert body["platform"] == f"mlflow-{model.path}"
    if signature is None:
        assert body["inputs"] == [] and body["parameters"]["signature"] == "none"
    elif not signature.inputs.is_tensor_spec():
        assert [(i["name"], i["datatype"]) for i in body["inputs"]] == [
            (spec.name, COLUMN_TYPES[spec.type.name][2]) for spec in signature.inputs.inputs]
    else:
        [tensor] = signature.inputs.inputs
        assert body["inputs"] == [{"name": "input", "datatype": OIP_DATATYPES[str(tensor.type)],
                                   "shape": list(tensor.shape)}]


@pytest.mark.parametrize("key", MATRIX)
def test_a_wrong_column_gets_a_4xx_naming_it(servers, models, key):
    model = models[key]

    # /invocations drops a column a signature does not name, as MLflow's _enforce_schema does ("Any extra columns are
    # ignored"): a bad row that only adds one is refused by /predict alone.
    adds_a_column = isinstance(model.bad_row, dict) and set(model.rows[0]) < set(model.bad_row)
    paths = ("/predict",) if adds_a_column else ("/predict", "/invocations")
    for path, body in ((path, {"instances": [model.bad_row]}) for path in paths):
        response = requests.post(f"{servers[key].url}{path}", json=body, timeout=30)
        assert 400 <= response.status_code < 500, (path, response.text)
        assert model.bad_words in response.json()["error"], (path, response.text)


def value_of(spec: dict):
    """A hypothesis strategy for values of one OpenAPI (JSON Schema) property: its type, and infinity for numbers."""
    from hypothesis import strategies as st

    kinds = {"number": st.floats(allow_nan=False) | st.integers(), "integer": st.integers(),
             "boolean": st.booleans(), "string": st.text()}
    return kinds.get(spec.get("type"), st.none())


@pytest.mark.parametrize("key", ["churn", "iris"])
def test_generated_requests_from_the_openapi_schema_never_get_a_5xx(servers, models, key):
    """Hypothesis draws /predict bodies from the published OpenAPI row schema (its columns and their types) and
    from arbitrary JSON around it: wrong types, extra and missing columns, nesting, non-finite numbers."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    url = servers[key].url
    spec = requests.get(f"{url}/docs.json", timeout=10).json()
    schema = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    row_schema = schema["properties"]["instances"]["items"]
    assert sorted(row_schema["properties"]) == sorted(models[key].rows[0]), "the OpenAPI names the real columns"
    valid_rows = st.fixed_dictionaries({name: value_of(spec) for name, spec in row_schema["properties"].items()})
    json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                               lambda children: st.lists(children, max_size=3)
                               | st.dictionaries(st.text(max_size=8), children, max_size=3), max_leaves=8)
    near_rows = st.dictionaries(st.sampled_from(sorted(row_schema["properties"]) + ["extra"]), json_values)
    known_rows = st.sampled_from(models[key].rows)  # rows the model accepts, so some answers are 200
    bodies = (st.fixed_dictionaries({"instances": st.lists(known_rows, min_size=1, max_size=5)})
              | st.fixed_dictionaries({"instances": st.lists(valid_rows | known_rows, min_size=1, max_size=5)})
              | st.fixed_dictionaries({"instances": st.lists(near_rows | json_values, max_size=4)})
              | json_values)
    statuses: list[int] = []
    session = requests.Session()

    @settings(max_examples=GENERATED_REQUESTS, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(bodies)
    def post(body) -> None:
        response = session.post(f"{url}/predict", data=json.dumps(body), timeout=30,
                                headers={"Content-Type": "application/json"})
        statuses.append(response.status_code)
        assert response.status_code < 500, (body, response.text)

    post()

    assert len(statuses) >= GENERATED_REQUESTS
    assert statuses.count(200) > GENERATED_REQUESTS // 20, "some generated bodies are valid"
    assert set(statuses) - {200} <= {400, 413, 422}
    assert requests.get(f"{url}/readyz", timeout=10).status_code == 200
    assert requests.post(f"{url}/predict", json={"instances": models[key].rows[:1]}, timeout=10).status_code == 200

"""``POST /explain`` and ``/v2/models/{name}/explain`` against real servers, over the kinds of model mlserve serves.

The demo churn pipeline (strings one-hot encoded inside it: attributions on its raw columns), a linear regressor, a
multi-class random forest (background from a file named by MLSERVE_EXPLAIN_BACKGROUND_URI), a LightGBM classifier
and a custom pyfunc model: the answer's shape and column names, the prediction it explains being /predict's, and
additivity (base value + attributions == prediction within service.explain.ADDITIVITY_TOLERANCE). Then the refusals:
409 without background data, 422 for a tensor model, 413 over the row cap, 4xx for bad rows, and 503 + Retry-After
when the explainer is busy or too slow, while /predict keeps answering.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import time

import pytest
import requests

from service.__main__ import free_port
from service.explain import ADDITIVITY_TOLERANCE

from . import explain_models
from .conftest import READY_TIMEOUT_SECONDS, REPO_ROOT, Registry, Server, stop_server

pytestmark = pytest.mark.integration

EXPLAINER_READY_SECONDS = 240
CHURN_ROWS = [
    {"tenure": 2.0, "monthly_charges": 95.5, "total_charges": 191.0, "contract_type": "Month-to-month",
     "payment_method": "Electronic check"},
    {"tenure": 60.0, "monthly_charges": 30.0, "total_charges": 1800.0, "contract_type": "Two year",
     "payment_method": "Credit card (automatic)"},
]


@pytest.fixture(scope="module")
def explain_registry(tmp_path_factory) -> Registry:
    home = tmp_path_factory.mktemp("explain-home")
    return Registry(home, f"sqlite:///{home / 'mlflow.db'}", "", "", "")


@pytest.fixture(scope="module")
def explained(explain_registry) -> dict[str, tuple[explain_models.ExplainedModel, dict[str, str]]]:
    """key -> (model, extra server environment)."""
    import mlflow

    from service.train import ensure_demo_models

    mlflow.set_tracking_uri(explain_registry.tracking_uri)
    mlflow.set_registry_uri(explain_registry.tracking_uri)
    artifacts = (explain_registry.home / "artifacts").as_uri()
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("explain", artifact_location=artifacts))
    iris, iris_background = explain_models.iris_classifier()
    background = explain_registry.home / "iris-background.csv"
    iris_background.to_csv(background, index=False)
    ensure_demo_models(explain_registry.tracking_uri)
    tight = {"MLSERVE_EXPLAIN_MAX_CONCURRENCY": "1", "MLSERVE_EXPLAIN_MAX_QUEUE": "0",
             "MLSERVE_EXPLAIN_TIMEOUT_SECONDS": "3", "MLSERVE_EXPLAIN_MAX_ROWS": "3"}
    return {
        "churn": (explain_models.ExplainedModel("customer-churn-classifier", CHURN_ROWS), {}),
        "diabetes": (explain_models.diabetes_regressor(), {}),
        "iris": (iris, {"MLSERVE_EXPLAIN_BACKGROUND_URI": background.as_uri()}),
        "lightgbm": (explain_models.lightgbm_classifier(), {}),
        "pyfunc": (explain_models.risk_pyfunc(), {}),
        "slow": (explain_models.slow_pyfunc(), tight),
        "bare": (explain_models.diabetes_regressor(input_example=False, name="explain-bare"), {}),
        "tensor": (explain_models.tensor_classifier(), {}),
    }


@pytest.fixture(scope="module")
def servers(explained, explain_registry, tmp_path_factory):
    """A server per model, started together, each waited for until its explainer has answered once."""
    logs = tmp_path_factory.mktemp("explain-logs")
    started: dict[str, Server] = {}
    try:
        for key, (model, env) in explained.items():
            port = free_port()
            version = "1"
            log_path = logs / f"{key}.log"
            with open(log_path, "wb") as log_file:
                process = subprocess.Popen(
                    [sys.executable, "-m", "service", "serve", "--port", str(port), "--model-uri",
                     f"models:/{model.name}/{version}"],
                    cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True, env={**explain_registry.env(), **env},
                )
            started[key] = Server(f"http://127.0.0.1:{port}", process, log_path)
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS + EXPLAINER_READY_SECONDS
        waiting = dict(started)
        while waiting and time.monotonic() < deadline:
            for key, server in list(waiting.items()):
                if server.process.poll() is not None:
                    raise RuntimeError(f"{key} server exited {server.process.returncode}:\n{server.log_tail()}")
                model = explained[key][0]
                try:
                    response = requests.post(f"{server.url}/explain", json={"instances": model.rows[:1]}, timeout=30)
                except requests.RequestException:
                    continue
                if response.status_code != 503:  # answered by the explainer, whatever the answer
                    del waiting[key]
            time.sleep(1)
        if waiting:
            raise RuntimeError(f"explainers not ready: {sorted(waiting)}\n"
                               + "\n".join(s.log_tail() for s in waiting.values()))
        yield started
    finally:
        for server in started.values():
            stop_server(server)


def explain(server: Server, rows: list, **extra) -> requests.Response:
    return requests.post(f"{server.url}/explain", json={"instances": rows, **extra}, timeout=60)


def assert_adds_up(explanation: dict) -> None:
    total = explanation["base_value"] + sum(explanation["attributions"].values())
    assert abs(total - explanation["prediction"]) <= ADDITIVITY_TOLERANCE * max(1.0, abs(explanation["prediction"])), \
        explanation


@pytest.mark.parametrize("key", ["churn", "diabetes", "iris", "lightgbm", "pyfunc"])
def test_explanations_name_the_raw_columns_add_up_and_explain_what_predict_answers(servers, explained, key):
    model, _ = explained[key]
    server = servers[key]

    response = explain(server, model.rows)

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model_name"], body["model_version"], body["variant"]) == (model.name, "1", "champion")
    assert response.headers["X-Model-Variant"] == "champion"
    per_row = len(model.classes) or 1
    explanations = body["explanations"]
    assert len(explanations) == len(model.rows) * per_row
    predictions = requests.post(f"{server.url}/predict", json={"instances": model.rows}, timeout=30).json()
    for index, item in enumerate(explanations):
        row = index // per_row
        assert item["row"] == row
        assert list(item["attributions"]) == list(model.rows[row]), "one attribution per raw column, in order"
        assert_adds_up(item)
        predicted = predictions["predictions"][row]
        if model.classes:
            assert item["class"] == model.classes[index % per_row]
            predicted = predicted[item["class"]]  # /predict answers {class: probability} for more classes
        assert item["prediction"] == pytest.approx(predicted, rel=1e-9, abs=1e-12)


def test_a_binary_classifier_explains_its_positive_class_or_the_class_asked_for(servers):
    positive = explain(servers["churn"], CHURN_ROWS[:1]).json()["explanations"][0]
    negative = explain(servers["churn"], CHURN_ROWS[:1], **{"class": "0"}).json()["explanations"][0]

    assert positive["class"] == "1" and negative["class"] == "0"
    assert negative["prediction"] == pytest.approx(1 - positive["prediction"])
    for column, value in positive["attributions"].items():
        assert negative["attributions"][column] == pytest.approx(-value)
    # The churn pipeline's drivers: a new month-to-month customer on electronic check is pushed towards churn.
    assert positive["attributions"]["contract_type"] > 0 and positive["attributions"]["tenure"] > 0


def test_a_multi_class_model_explains_one_class_when_asked(servers, explained):
    model, _ = explained["iris"]

    response = explain(servers["iris"], model.rows, **{"class": "virginica"})

    assert response.status_code == 200, response.text
    explanations = response.json()["explanations"]
    assert [item["class"] for item in explanations] == ["virginica"] * len(model.rows)
    assert explanations[2]["prediction"] > explanations[0]["prediction"], "row 120 is a virginica, row 0 is not"
    bad = explain(servers["iris"], model.rows, **{"class": "rose"})
    assert bad.status_code == 400 and "setosa, versicolor, virginica" in bad.json()["error"]


def test_oip_explain_answers_tensors_for_the_same_rows(servers, explained):
    model, _ = explained["pyfunc"]
    rest = explain(servers["pyfunc"], model.rows).json()["explanations"]
    columns = list(model.rows[0])
    inputs = [{"name": name, "shape": [len(model.rows)], "datatype": "BYTES",
               "data": [row[name] for row in model.rows]} for name in columns]

    response = requests.post(f"{servers['pyfunc'].url}/v2/models/{model.name}/explain",
                             json={"id": "x", "inputs": inputs}, timeout=60)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "x" and body["parameters"]["variant"] == "champion"
    outputs = {output["name"]: output for output in body["outputs"]}
    assert outputs["attributions"]["shape"] == [len(model.rows), len(columns)]
    assert outputs["attributions"]["parameters"]["columns"] == columns
    assert outputs["prediction"]["data"] == pytest.approx([item["prediction"] for item in rest])
    assert outputs["attributions"]["data"] == pytest.approx(
        [item["attributions"][name] for item in rest for name in columns])


@pytest.mark.parametrize(("key", "status", "words"), [
    ("bare", 409, "explain.backgroundUri"),
    ("tensor", 422, "tensors"),
])
def test_a_model_that_cannot_be_explained_gets_a_4xx_saying_why(servers, explained, key, status, words):
    model, _ = explained[key]

    response = explain(servers[key], model.rows)

    assert response.status_code == status, response.text
    assert words in response.json()["error"]
    assert requests.post(f"{servers[key].url}/predict", json={"instances": model.rows}, timeout=30).ok


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"instances": [{"tenure": "long"}]}, 400, "tenure"),
    ({"instances": []}, 400, "empty"),
    ({"rows": []}, 400, "instances"),
    ({"instances": [CHURN_ROWS[0]], "class": 1}, 400, "class"),
    ({"instances": [{**CHURN_ROWS[0], "region": "north"}]}, 400, "region"),
    ({"instances": [{**CHURN_ROWS[0], "contract_type": ""}]}, 422, "unknown categories"),  # found by schemathesis
])
def test_bad_requests_get_a_4xx_naming_the_problem(servers, body, status, words):
    response = requests.post(f"{servers['churn'].url}/explain", json=body, timeout=30)

    assert response.status_code == status, response.text
    assert words in response.text


def test_more_rows_than_the_cap_get_413(servers, explained):
    model, _ = explained["slow"]

    response = explain(servers["slow"], model.rows * 2)

    assert response.status_code == 413 and "MLSERVE_EXPLAIN_MAX_ROWS" in response.json()["error"]


def test_a_busy_or_slow_explainer_answers_503_with_retry_after_and_predict_still_answers(servers, explained):
    model, _ = explained["slow"]
    server = servers["slow"]
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        slow = [pool.submit(explain, server, model.rows) for _ in range(3)]
        time.sleep(0.5)
        predicted = requests.post(f"{server.url}/predict", json={"instances": model.rows}, timeout=10)
        answers = [future.result() for future in slow]

    assert predicted.status_code == 200
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses.count(503) >= 2, [answer.text for answer in answers]  # one explainer, no queue
    for answer in answers:
        if answer.status_code == 503:
            assert int(answer.headers["Retry-After"]) >= 1 and answer.json()["error"]
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    assert 'model_explain_errors_total{error_type="unavailable"' in metrics

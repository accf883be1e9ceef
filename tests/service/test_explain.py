"""The explainer in-process, without a server: settings, the raw-column codec, additivity, classes, refusals, and the
rows a rollout report explains (`sample_rows`)."""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import pytest

from service.errors import InvalidInput
from service.explain import (
    ADDITIVITY_TOLERANCE,
    ExplainSettings,
    FrameCodec,
    ModelExplainer,
    _numeric_output,
    sample_rows,
)
from service.explain_pool import ExplainProtocol
from service.predictor import ModelIdentity, ServedModel
from service.schema import Column, InputSchema
from service.settings import Settings

BACKGROUND = pd.DataFrame({
    "amount": [10.0, 200.0, 55.5, 80.0],
    "count": np.array([1, 4, 2, 9], dtype=np.int64),
    "foreign": [False, True, False, True],
    "plan": ["basic", "premium", "basic", "family"],
})
ROWS = pd.DataFrame({
    "amount": [120.0, 5.0],
    "count": np.array([3, 0], dtype=np.int64),
    "foreign": [True, False],
    "plan": ["premium", "student"],  # a value the background never had
})
PLAN_WEIGHT = {"basic": 0.0, "premium": 2.0, "family": 1.0, "student": -1.0}


def score(frame: pd.DataFrame) -> np.ndarray:
    """A non-linear model of raw columns, strings included (what a pipeline or a pyfunc model sees)."""
    plan = frame["plan"].map(PLAN_WEIGHT).to_numpy(dtype=float)
    return (0.01 * frame["amount"].to_numpy() * (1 + frame["foreign"].to_numpy()) + np.sqrt(frame["count"]) + plan)


def three_classes(frame: pd.DataFrame) -> np.ndarray:
    logits = np.stack([score(frame), -score(frame), np.zeros(len(frame))], axis=1)
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def test_settings_default_to_the_stack_defaults_and_report_every_bad_variable_at_once():
    assert ExplainSettings.from_env({}) == ExplainSettings(**ExplainSettings.DEFAULTS)
    with pytest.raises(ValueError) as caught:
        ExplainSettings.from_env({"MLSERVE_EXPLAIN_ENABLED": "maybe", "MLSERVE_EXPLAIN_MAX_ROWS": "0",
                                  "MLSERVE_EXPLAIN_TIMEOUT_SECONDS": "soon"})
    message = str(caught.value)
    assert "MLSERVE_EXPLAIN_ENABLED='maybe'" in message and "MLSERVE_EXPLAIN_MAX_ROWS='0'" in message
    assert "MLSERVE_EXPLAIN_TIMEOUT_SECONDS='soon'" in message


def test_the_codec_gives_the_model_back_the_rows_it_was_given():
    codec = FrameCodec([BACKGROUND, ROWS])

    decoded = codec.decode(codec.encode(ROWS))

    pd.testing.assert_frame_equal(decoded, ROWS)


@pytest.mark.parametrize("columns_limit", [10, 2], ids=["exact", "permutation"])
def test_attributions_name_every_raw_column_and_add_up_to_the_prediction(monkeypatch, columns_limit):
    monkeypatch.setattr("service.explain.EXACT_MAX_COLUMNS", columns_limit)
    explainer = ModelExplainer(score, BACKGROUND).prepared()

    explanations = explainer.explain(ROWS)

    assert [item["row"] for item in explanations] == [0, 1]
    for item, prediction in zip(explanations, score(ROWS)):
        assert list(item["attributions"]) == list(BACKGROUND.columns)
        assert item["prediction"] == pytest.approx(prediction)
        assert item["base_value"] == pytest.approx(score(BACKGROUND).mean())
        total = item["base_value"] + sum(item["attributions"].values())
        assert abs(total - item["prediction"]) <= ADDITIVITY_TOLERANCE
        assert "class" not in item
    # A column the row shares with every background row has no effect on it.
    same = ModelExplainer(score, BACKGROUND.assign(plan="basic")).explain(ROWS.assign(plan="basic"))
    assert same[0]["attributions"]["plan"] == 0.0


def test_every_class_is_explained_in_order_or_only_the_one_asked_for():
    explainer = ModelExplainer(three_classes, BACKGROUND, classes=("a", "b", "c"))

    every = explainer.explain(ROWS)
    one = explainer.explain(ROWS, "b")

    assert [(item["row"], item["class"]) for item in every] == [(0, "a"), (0, "b"), (0, "c"), (1, "a"), (1, "b"),
                                                                (1, "c")]
    assert [item["class"] for item in one] == ["b", "b"]
    assert one[0]["attributions"] == pytest.approx(every[1]["attributions"])
    with pytest.raises(InvalidInput, match="not one of the model's classes: a, b, c"):
        explainer.explain(ROWS, "d")


def test_a_binary_classifier_explains_the_other_class_as_one_minus_the_positive():
    def positive(frame: pd.DataFrame) -> np.ndarray:
        return 1 / (1 + np.exp(-score(frame) + 2))

    explainer = ModelExplainer(positive, BACKGROUND, binary=("stay", "churn"))

    [churn] = explainer.explain(ROWS.head(1))
    [stay] = explainer.explain(ROWS.head(1), "stay")

    assert (churn["class"], stay["class"]) == ("churn", "stay")
    assert stay["prediction"] == pytest.approx(1 - churn["prediction"])
    assert stay["base_value"] == pytest.approx(1 - churn["base_value"])
    assert stay["attributions"]["amount"] == pytest.approx(-churn["attributions"]["amount"])


def test_rows_the_model_refuses_get_422_with_its_words():
    def strict(frame: pd.DataFrame) -> np.ndarray:
        if (frame["plan"] == "").any():
            raise ValueError("Found unknown categories [''] in column 3 during transform")
        return score(frame)

    with pytest.raises(InvalidInput) as caught:
        ModelExplainer(strict, BACKGROUND).explain(ROWS.assign(plan=""))
    assert caught.value.status == 422 and "unknown categories" in caught.value.message


def test_rows_without_the_background_columns_are_refused():
    with pytest.raises(InvalidInput, match="lack column"):
        ModelExplainer(score, BACKGROUND).explain(ROWS.drop(columns=["plan"]))


@pytest.mark.parametrize("answer", [
    pd.DataFrame({"words": [1, 2], "label": ["a", "b"]}),
    np.array(["yes", "no"]),
    np.zeros((2, 3)),
], ids=["two-columns", "labels", "matrix"])
def test_a_model_answering_more_than_one_number_per_row_cannot_be_explained(answer):
    class Source:
        name, version = "m", "1"

    output = _numeric_output(lambda frame: answer, Source())

    with pytest.raises(InvalidInput) as caught:
        output(ROWS)
    assert caught.value.status == 422 and "one number per row" in caught.value.message


def served_model(max_rows: int = 100) -> ServedModel:
    schema = InputSchema(columns=(Column("amount", "double"), Column("plan", "string")))
    identity = ModelIdentity("m", "3", "challenger", "models:/m/3")
    return ServedModel(identity, schema, {"predict": lambda frame: frame["amount"]}, max_rows=max_rows)


@pytest.mark.parametrize(("env", "body", "status", "words"), [
    ({"MLSERVE_EXPLAIN_ENABLED": "false"}, b'{"instances": [{"amount": 1.0, "plan": "basic"}]}', 404,
     "explain.enabled"),
    ({"MLSERVE_EXPLAIN_MAX_ROWS": "1"}, b'{"instances": [{"amount": 1.0, "plan": "a"}, {"amount": 2.0, "plan": "b"}]}',
     413, "MLSERVE_EXPLAIN_MAX_ROWS"),
    ({}, b'{"instances": [{"amount": "x", "plan": "basic"}]}', 400, "amount"),
    ({}, b'{"instances": [{"amount": 1.0}]}', 400, "plan"),
    ({}, b'[1, 2]', 400, "instances"),
    ({}, b'{"instances": [', 400, "JSON"),
])
def test_requests_refused_before_any_explainer_runs(env, body, status, words):
    """Validation happens in the server worker, with /predict's schema code: no explainer process is started."""
    protocol = ExplainProtocol(served_model(), Settings.from_env(), None, ExplainSettings.from_env(env))

    answer = asyncio.run(protocol.rest(body))

    assert answer.status == status, answer.body
    assert words in answer.body["error"]
    assert answer.headers["X-Model-Variant"] == "challenger"


@pytest.fixture(scope="module")
def logged_rows(tmp_path_factory):
    """A registry holding a pyfunc model of (amount, flagged, level) logged with a 30-row input example, aliased
    champion, and one logged without an example; returns the tracking URI."""
    import mlflow

    from . import explain_models

    home = tmp_path_factory.mktemp("rows-home")
    tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("rows", artifact_location=(home / "a").as_uri()))
    frame = pd.DataFrame({"amount": [10.0 * i for i in range(30)], "flagged": [i % 2 == 0 for i in range(30)],
                          "level": ["low", "high", "medium"] * 10})
    signature = mlflow.models.infer_signature(frame, explain_models.RiskScore().predict(None, frame))
    for name, example in (("rows-example", frame), ("rows-bare", None)):
        with mlflow.start_run():
            mlflow.pyfunc.log_model(name="model", python_model=explain_models.RiskScore(), input_example=example,
                                    signature=signature, pip_requirements=["mlflow"], registered_model_name=name)
    mlflow.MlflowClient().set_registered_model_alias("rows-example", "champion", "1")
    return tracking_uri


def test_rows_to_explain_are_a_fixed_sample_of_the_logged_input_example(logged_rows):
    rows, origin = sample_rows("models:/rows-example@champion", "", 5, logged_rows)

    assert len(rows) == 5 and rows == sample_rows("models:/rows-example/1", "", 5, logged_rows)[0]
    assert all(list(row) == ["amount", "flagged", "level"] for row in rows)
    assert all(type(row["flagged"]) is bool and type(row["amount"]) is float for row in rows), "JSON-ready values"
    assert "input example logged with models:/rows-example@champion" in origin


def test_rows_to_explain_come_from_the_background_file_cut_to_the_signature(logged_rows, tmp_path):
    background = tmp_path / "background.csv"
    pd.DataFrame({"amount": [1.0, None, 3.0], "flagged": [True, False, True], "level": ["low", "high", "low"],
                  "churned": [0, 1, 0]}).to_csv(background, index=False)

    rows, origin = sample_rows("models:/rows-bare/1", background.as_uri(), 20, logged_rows)

    assert rows == [{"amount": 1.0, "flagged": True, "level": "low"},
                    {"amount": None, "flagged": False, "level": "high"},
                    {"amount": 3.0, "flagged": True, "level": "low"}]
    assert origin == f"explain.backgroundUri {background.as_uri()}"


def test_without_an_example_or_a_background_there_are_no_rows_to_explain(logged_rows):
    with pytest.raises(InvalidInput) as caught:
        sample_rows("models:/rows-bare/1", "", 5, logged_rows)

    assert caught.value.status == 409 and "explain.backgroundUri" in caught.value.message

"""Live output counts: every scored row counted by its predicted class, per variant, whatever the protocol."""

from __future__ import annotations

import numpy as np
import prometheus_client
import pytest
import requests

from service.drift import MAX_OUTPUTS, OTHER_OUTPUT, OUTPUTS_METRIC, OutputMetrics, predicted_outputs, output_name


@pytest.mark.parametrize("case, output, raw, classes, expected", [
    ("positive-probability", "probability", [0.1, 0.5, 0.9, 0.2], (0, 1), {"0": 2, "1": 2}),
    ("positive-probability-all-negative", "probability", [0.1, 0.2], (0, 1), {"0": 2}),
    ("named-classes-probability", "probability", [0.7], ("stay", "churn"), {"churn": 1}),
    ("class-probabilities", "predict_proba", [[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]], ("a", "b", "c"), {"b": 1, "a": 1}),
    ("predicted-labels", "predict", np.array([1, 0, 1]), (), {"1": 2, "0": 1}),
    ("integer-valued-floats-are-classes", "predict", np.array([1.0, 0.0]), (), {"1": 1, "0": 1}),
    ("booleans", "predict", np.array([True, False, True]), (), {"1": 2, "0": 1}),
    ("string-labels", "predict", np.array(["yes", "no", "yes"]), (), {"yes": 2, "no": 1}),
    ("regression-values-are-not-counted", "predict", np.array([1.5, 2.25]), (), None),
    ("a-frame-is-not-counted", "predict", np.array([[1.0, 2.0]]), (), None),
])
def test_predicted_outputs(case, output, raw, classes, expected):
    assert predicted_outputs(output, raw, classes) == expected


def test_one_two_and_true_name_the_same_class():
    assert output_name(1) == output_name(1.0) == output_name(True) == output_name(np.int64(1)) == "1"


def _value(registry, **labels) -> float | None:
    return registry.get_sample_value(OUTPUTS_METRIC, labels)


def test_counts_start_at_zero_and_unbounded_outputs_are_capped():
    registry = prometheus_client.CollectorRegistry()

    class Metrics:  # prometheus_client's Counter on a private registry, as bentoml.metrics creates it
        @staticmethod
        def Counter(**kwargs):
            return prometheus_client.Counter(registry=registry, **kwargs)

    outputs = OutputMetrics(Metrics, ["variant"])
    outputs.start({"variant": "champion"}, (0, 1))
    assert _value(registry, variant="champion", output="1") == 0
    outputs.record({"variant": "champion"}, "probability", [0.9, 0.8, 0.1], (0, 1))
    assert (_value(registry, variant="champion", output="1"), _value(registry, variant="champion", output="0")) == (2, 1)
    outputs.record({"variant": "champion"}, "predict", np.array([f"label-{n}" for n in range(2 * MAX_OUTPUTS)]), ())
    assert _value(registry, variant="champion", output=OTHER_OUTPUT) == MAX_OUTPUTS + 2


@pytest.mark.integration
def test_the_server_counts_outputs_per_variant_on_every_protocol(champion_server, registry):
    from tests.service.test_server import EXAMPLE, metric_value, oip_request

    labels = {"model_name": "customer-churn-classifier", "model_version": registry.champion, "variant": "champion"}

    def counted() -> float:
        return sum(metric_value(champion_server.url, OUTPUTS_METRIC, **labels, output=name) for name in ("0", "1"))

    before = counted()
    assert requests.post(f"{champion_server.url}/predict", json={"instances": [EXAMPLE, EXAMPLE]}, timeout=10).ok
    assert requests.post(f"{champion_server.url}/predict_batch", json={"instances": [EXAMPLE]}, timeout=10).ok
    assert requests.post(f"{champion_server.url}/invocations", json={"dataframe_records": [EXAMPLE]}, timeout=10).ok
    assert requests.post(f"{champion_server.url}/v2/models/customer-churn-classifier/infer",
                         json=oip_request([EXAMPLE]), timeout=10).ok
    assert requests.post(f"{champion_server.url}/predict", json={"instances": [{"tenure": "x"}]}, timeout=10).status_code == 400
    assert counted() == before + 5
    # The demo logs its training data's profile: the live rows land in its bins, next to the reference shares.
    assert metric_value(champion_server.url, "model_input_bin_rows_total", **labels, column="monthly_charges") >= 5
    assert metric_value(champion_server.url, "model_input_reference_share", **labels,
                        column="contract_type") == pytest.approx(1.0)


def test_reference_profile_bins_numbers_by_quantile_and_categories_by_frequency():
    import pandas as pd

    from service.profiles import OTHER, ReferenceProfile, build_profile

    frame = pd.DataFrame({"charges": np.arange(1000, dtype=float), "plan": ["a"] * 700 + ["b"] * 300,
                          "empty": [None] * 1000})
    profile = build_profile(frame, {"1": 250, "0": 750}, "test")
    assert ReferenceProfile.from_json(profile.to_json()) == profile
    charges, plan = profile.columns  # a column with no values has no profile
    assert len(charges.edges) == 9 and all(share == pytest.approx(0.1) for share in charges.shares.values())
    assert plan.shares == {"a": 0.7, "b": 0.3} and profile.outputs == {"0": 0.75, "1": 0.25}
    assert charges.bin_counts(np.array([-5.0, 999.0, 2000.0, np.nan])) == {"0": 1, "9": 2}
    assert plan.bin_counts(np.array(["a", "c", None], dtype=object)) == {"a": 1, OTHER: 1}


def test_input_bins_are_counted_per_column_and_the_reference_exported():
    import pandas as pd

    from service.drift import INPUT_BINS_METRIC, REFERENCE_SHARE_METRIC, InputMetrics
    from service.profiles import build_profile

    registry = prometheus_client.CollectorRegistry()

    class Metrics:
        @staticmethod
        def Counter(**kwargs):
            return prometheus_client.Counter(registry=registry, **kwargs)

        @staticmethod
        def Gauge(multiprocess_mode, **kwargs):
            return prometheus_client.Gauge(registry=registry, **kwargs)

    profile = build_profile(pd.DataFrame({"charges": np.arange(100, dtype=float), "plan": ["a", "b"] * 50}))
    inputs = InputMetrics(Metrics, ["variant"])
    inputs.start({"variant": "champion"}, profile)
    observe = inputs.observer({"variant": "champion"}, profile)
    observe(pd.DataFrame({"plan": ["a", "z"], "charges": [95.0, 0.0]}), None)
    value = registry.get_sample_value
    assert value(INPUT_BINS_METRIC, {"variant": "champion", "column": "charges", "bin": "9"}) == 1
    assert value(INPUT_BINS_METRIC, {"variant": "champion", "column": "charges", "bin": "5"}) == 0
    assert value(INPUT_BINS_METRIC, {"variant": "champion", "column": "plan", "bin": "other"}) == 1
    assert value(REFERENCE_SHARE_METRIC, {"variant": "champion", "column": "plan", "bin": "a"}) == 0.5

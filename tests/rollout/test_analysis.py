"""Analysis rules, table-driven: thresholds, comparison with the champion, minimum counts, statistics."""

from __future__ import annotations

import pytest

from rollout.analysis import Phase, Thresholds, VariantSample, judge, variant_queries

LIMITS = Thresholds(min_requests=100, max_error_rate=0.01, max_p95_seconds=0.5)


def sample(variant, requests, errors, p95=0.05):
    return VariantSample(variant, requests, errors, p95)


@pytest.mark.parametrize(
    ("case", "champion", "challenger", "expected"),
    [
        ("healthy twins pass", sample("champion", 2000, 2), sample("challenger", 200, 0), Phase.PASSED),
        ("too few challenger requests is inconclusive even with many errors",
         sample("champion", 2000, 0), sample("challenger", 40, 10), Phase.INCONCLUSIVE),
        ("no challenger data is inconclusive", sample("champion", 2000, 0), None, Phase.INCONCLUSIVE),
        ("5% errors vs a clean champion fails", sample("champion", 2000, 0), sample("challenger", 200, 10), Phase.FAILED),
        ("5% errors fails on the absolute limit alone (no champion data)", None, sample("challenger", 400, 20), Phase.FAILED),
        ("one error in 100 above the limit is noise: inconclusive",
         sample("champion", 300, 0), sample("challenger", 100, 2), Phase.INCONCLUSIVE),
        ("significantly worse than champion but within the limit passes",
         sample("champion", 20000, 0), sample("challenger", 2000, 15), Phase.PASSED),
        ("both at 3%: over the limit but no worse than the champion holds",
         sample("champion", 5000, 150), sample("challenger", 1000, 30), Phase.INCONCLUSIVE),
        ("3% vs a 0.5% champion fails", sample("champion", 5000, 25), sample("challenger", 1000, 30), Phase.FAILED),
        ("2 errors in 100 vs a clean champion of 2000 fails the check",
         sample("champion", 2000, 0), sample("challenger", 100, 2), Phase.FAILED),
        ("2 errors in 100 vs a clean champion of 500 is not yet significant",
         sample("champion", 500, 0), sample("challenger", 100, 2), Phase.INCONCLUSIVE),
        ("3% of 100 over the limit with no champion data is not yet significant", None, sample("challenger", 100, 3), Phase.INCONCLUSIVE),
        ("p95 over the absolute limit fails", sample("champion", 2000, 0), sample("challenger", 200, 0, p95=0.8), Phase.FAILED),
        ("p95 three times the champion's fails",
         sample("champion", 2000, 0, p95=0.1), sample("challenger", 200, 0, p95=0.3), Phase.FAILED),
        ("p95 within ratio plus slack passes",
         sample("champion", 2000, 0, p95=0.01), sample("challenger", 200, 0, p95=0.06), Phase.PASSED),
        ("missing latency data is inconclusive", sample("champion", 2000, 0), sample("challenger", 200, 0, p95=None), Phase.INCONCLUSIVE),
        ("NaN latency is inconclusive", sample("champion", 2000, 0), sample("challenger", 200, 0, p95=float("nan")), Phase.INCONCLUSIVE),
        ("a champion under the minimum is not compared against",
         sample("champion", 10, 0, p95=0.001), sample("challenger", 200, 0, p95=0.2), Phase.PASSED),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_judge(case, champion, challenger, expected):
    measurement = judge(champion, challenger, LIMITS)
    assert measurement.phase is expected, measurement.reason


def test_failed_measurement_explains_itself():
    measurement = judge(sample("champion", 2000, 0), sample("challenger", 200, 10), LIMITS)
    assert "error_rate" in measurement.reason
    assert "10/200" in measurement.reason
    data = measurement.to_dict()
    assert data["phase"] == "failed"
    assert data["challenger"]["error_rate"] == pytest.approx(0.05)


def test_queries_key_on_service_metrics():
    queries = variant_queries('variant="challenger"', 30)
    assert queries.requests == 'sum(increase(model_predictions_total{variant="challenger"}[30s]))'
    assert queries.errors == (
        'sum(increase(model_prediction_errors_total{variant="challenger",error_type!~"invalid_input|payload_too_large"}[30s]))'
    )
    assert queries.p95_seconds.startswith("histogram_quantile(0.95, sum by (le) (rate(model_prediction_latency_seconds_bucket")

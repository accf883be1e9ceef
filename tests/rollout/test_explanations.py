"""Per-variant explanations for the demo and the rollout report: top reasons, mean absolute attributions, side by
side, and the report's section, where a variant that cannot explain leaves a note saying why."""

from __future__ import annotations

import pytest

from rollout.errors import ExplanationError
from rollout.explanations import (
    explain_rows,
    mean_absolute_attributions,
    report_explanations,
    side_by_side,
    top_reasons,
)
from service.names import free_port

CHAMPION = {"prediction": 0.74, "attributions": {"tenure": 0.21, "contract_type": 0.18, "monthly_charges": -0.02,
                                                 "payment_method": 0.09}}
CHALLENGER = {"prediction": 0.41, "attributions": {"tenure": 0.0, "contract_type": 0.0, "monthly_charges": 0.15,
                                                   "payment_method": 0.11}}


def test_top_reasons_are_the_largest_attributions_whatever_their_sign():
    assert top_reasons({"attributions": {"a": 0.1, "b": -0.5, "c": 0.3, "d": 0.0}}) == [("b", -0.5), ("c", 0.3),
                                                                                          ("a", 0.1)]


def test_mean_absolute_attribution_per_column():
    means = mean_absolute_attributions([CHAMPION, {"attributions": {k: -v for k, v in CHAMPION["attributions"].items()}}])

    assert means == pytest.approx(CHAMPION["attributions"] | {"monthly_charges": 0.02})


def test_side_by_side_shows_each_variants_prediction_and_reasons_in_columns():
    lines = side_by_side({"champion": CHAMPION, "challenger": CHALLENGER})

    assert lines[0].startswith("champion: 0.740") and "challenger: 0.410" in lines[0]
    assert "1. tenure +0.210" in lines[1] and "1. monthly_charges +0.150" in lines[1]
    assert len(lines) == 4


ROWS = [{"tenure": 1.0, "plan": "basic"}, {"tenure": 30.0, "plan": "premium"}]
OK = (200, {}, {})


@pytest.mark.parametrize(("answer", "words"), [
    ((409, {"error": "no background data to explain against"}, {}), "no background data"),
    ((404, {"error": "explanations are off on this server"}, {}), "explanations are off"),
    ((503, {"error": "explainers busy"}, {"Retry-After": "0"}), "still starting or busy after 0.5s"),
    (None, "unreachable"),
], ids=["no-background", "disabled", "busy", "unreachable"])
def test_the_report_has_each_variants_mean_attribution_or_a_note_saying_why(explainer_url, answer, words):
    challenger = explainer_url(answer) if answer else f"http://127.0.0.1:{free_port()}"

    section = report_explanations({"champion": explainer_url(OK), "challenger": challenger}, ROWS, "a file",
                                  wait_seconds=0.5)

    assert section["rows"] == 2 and section["rows_from"] == "a file"
    assert section["mean_absolute_attribution"] == {"champion": pytest.approx({"tenure": 0.15, "plan": 0.1})}
    assert words in section["notes"]["challenger"] and "challenger" not in section["mean_absolute_attribution"]


def test_a_starting_explainer_is_waited_for(explainer_url):
    starting = (503, {"error": "the explainer is starting"}, {"Retry-After": "0"})
    url = explainer_url(starting, starting, OK)

    assert len(explain_rows(url, ROWS, wait_seconds=30)) == 2


def test_a_refusal_is_not_retried(explainer_url):
    url = explainer_url((422, {"error": "this model takes tensors"}, {}), OK)

    with pytest.raises(ExplanationError, match="cannot be explained.*422.*takes tensors"):
        explain_rows(url, ROWS, wait_seconds=30)

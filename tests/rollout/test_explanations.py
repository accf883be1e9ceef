"""Per-variant explanations for the demo and its report: top reasons, mean absolute attributions, side by side."""

from __future__ import annotations

import pytest

from rollout.explanations import mean_absolute_attributions, side_by_side, top_reasons

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

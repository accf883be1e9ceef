"""How each variant decides: its top reasons for one customer, and its mean absolute attribution per column.

Both come from the model servers' ``POST /explain`` (service/explain_pool.py). ``explain_rows(url, rows)`` asks one
variant (waiting, bounded, while its explainer process starts); ``top_reasons`` and ``mean_absolute_attributions``
are pure; ``side_by_side`` formats two variants' reasons as text columns. The local demo prints the reasons and puts
the means into its report, so a rollout shows what changed in *how* the challenger decides, not only how often it
errs.
"""

from __future__ import annotations

import time
import typing as t

import requests

EXPLAINER_WAIT_SECONDS = 180


def explain_rows(url: str, rows: list[dict[str, t.Any]], wait_seconds: float = EXPLAINER_WAIT_SECONDS
                 ) -> list[dict[str, t.Any]]:
    """The explanations of ``rows`` by the server at ``url``; retries its 503s (explainer starting or busy) until
    ``wait_seconds`` have passed, then raises RuntimeError with the last answer."""
    deadline = time.monotonic() + wait_seconds
    while True:
        response = requests.post(f"{url}/explain", json={"instances": rows}, timeout=60)
        if response.status_code == 200:
            return response.json()["explanations"]
        if response.status_code != 503 or time.monotonic() > deadline:
            raise RuntimeError(f"{url}/explain answered {response.status_code}: {response.text[:300]}")
        time.sleep(min(float(response.headers.get("Retry-After", 1)), 2.0))


def top_reasons(explanation: dict[str, t.Any], count: int = 3) -> list[tuple[str, float]]:
    """The ``count`` columns that moved this prediction most, largest absolute attribution first."""
    ranked = sorted(explanation["attributions"].items(), key=lambda item: abs(item[1]), reverse=True)
    return ranked[:count]


def mean_absolute_attributions(explanations: list[dict[str, t.Any]]) -> dict[str, float]:
    """Per column, the mean absolute attribution over ``explanations`` (how much the model leans on it)."""
    totals: dict[str, float] = {}
    for explanation in explanations:
        for column, value in explanation["attributions"].items():
            totals[column] = totals.get(column, 0.0) + abs(value)
    return {column: total / max(1, len(explanations)) for column, total in totals.items()}


def side_by_side(by_variant: dict[str, dict[str, t.Any]], count: int = 3, width: int = 38) -> list[str]:
    """Lines showing each variant's prediction and top ``count`` reasons in its own column."""
    variants = list(by_variant)
    lines = ["".join(f"{variant}: {by_variant[variant]['prediction']:.3f}".ljust(width) for variant in variants)]
    reasons = {variant: top_reasons(by_variant[variant], count) for variant in variants}
    for rank in range(count):
        cells = []
        for variant in variants:
            if rank < len(reasons[variant]):
                column, value = reasons[variant][rank]
                cells.append(f"  {rank + 1}. {column} {value:+.3f}".ljust(width))
            else:
                cells.append("".ljust(width))
        lines.append("".join(cells).rstrip())
    return lines

"""How each variant decides: its top reasons for one customer, and its mean absolute attribution per column.

Both come from the model servers' ``POST /explain`` (service/explain_pool.py). ``explain_rows(url, rows)`` asks one
variant (waiting, bounded, while its explainer process starts); ``top_reasons`` and ``mean_absolute_attributions``
are pure; ``side_by_side`` formats two variants' reasons as text columns. The local demo prints the reasons and puts
the means into its report; ``python -m rollout start --report`` puts them into its report with
``report_explanations`` (rows from ``service.explain.sample_rows``), so a rollout shows what changed in *how* the
challenger decides, not only how often it errs. A variant that cannot explain leaves a note, never a failed rollout.
"""

from __future__ import annotations

import time
import typing as t

import requests

from rollout.errors import ExplanationError

EXPLAINER_WAIT_SECONDS = 180
# The rollout report's explanations: at most this many rows (and never more than the stack's explain.maxRows, one
# request per variant), and at most this long waiting for a variant's explainer to start or come free.
REPORT_ROWS = 20
REPORT_WAIT_SECONDS = 60
# What a refusal means for the report, by status (the server's own words follow).
REFUSALS = {
    404: "explanations are off on this server (stack config explain.enabled)",
    409: "the model has no background data to explain against",
    413: "more rows than the server's explain.maxRows",
    422: "this model cannot be explained",
    503: "the explainer was still starting or busy",
}


def explain_rows(url: str, rows: list[dict[str, t.Any]], wait_seconds: float = EXPLAINER_WAIT_SECONDS
                 ) -> list[dict[str, t.Any]]:
    """The explanations of ``rows`` by the server at ``url``; retries its 503s (explainer starting or busy) until
    ``wait_seconds`` have passed. ExplanationError when it refuses, stays unavailable, or cannot be reached."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            response = requests.post(f"{url}/explain", json={"instances": rows}, timeout=60)
        except requests.RequestException as err:
            raise ExplanationError(f"{url}/explain is unreachable: {err}") from err
        if response.status_code == 200:
            return response.json()["explanations"]
        if response.status_code != 503 or time.monotonic() > deadline:
            try:
                words = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                words = response.text[:300]
            meaning = REFUSALS.get(response.status_code, "the explanation failed")
            waited = f" after {wait_seconds:g}s" if response.status_code == 503 else ""
            raise ExplanationError(f"{meaning}{waited}: {url}/explain answered {response.status_code}: {words}")
        time.sleep(min(float(response.headers.get("Retry-After", 1)), 2.0, max(0.0, deadline - time.monotonic())))


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


def report_explanations(urls: dict[str, str], rows: list[dict[str, t.Any]], rows_from: str,
                        wait_seconds: float = REPORT_WAIT_SECONDS) -> dict[str, t.Any]:
    """The report's ``explanations`` section: each variant's mean absolute attribution per column over the same
    ``rows`` (from ``rows_from``), and for a variant that cannot explain a note saying why instead.

    For a multi-class model each row is explained once per class, and the mean runs over rows and classes."""
    section: dict[str, t.Any] = {"rows": len(rows), "rows_from": rows_from, "mean_absolute_attribution": {},
                                 "notes": {}}
    for variant, url in urls.items():
        try:
            section["mean_absolute_attribution"][variant] = mean_absolute_attributions(
                explain_rows(url, rows, wait_seconds))
        except ExplanationError as err:
            section["notes"][variant] = str(err)
    return section


def strongest_columns(means: dict[str, float], count: int = 3) -> str:
    """``column 0.123, ...``: the ``count`` columns a variant leans on most, for one line of the CLI's output."""
    ranked = sorted(means.items(), key=lambda item: item[1], reverse=True)[:count]
    return ", ".join(f"{column} {value:.3g}" for column, value in ranked)

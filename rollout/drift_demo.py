"""The demo's shifted traffic (`python -m rollout demo --shifted-traffic`): inputs drift, Prometheus notices.

After `SHIFT_START_SECONDS` of traffic like the training data, every row's `monthly_charges` grows by
`SHIFT_PER_SECOND` of itself per second (customers' bills creeping up), while the other columns are left alone. The
local Prometheus evaluates the stack's drift rules (`infra.drift`) with demo-sized windows, and `watch_drift` waits,
bounded, for `ModelInputDrift` to fire on `monthly_charges`, then reads every column's drift score: the shifted
column above the threshold, the untouched ones below it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import requests

from infra.drift import DRIFT_SCORE_RULE, INPUT_DRIFT, drift_rules_for

SHIFTED_COLUMN = "monthly_charges"
SHIFT_START_SECONDS = 20
SHIFT_PER_SECOND = 0.02
# Demo-sized drift rules: a one-minute window, firing after 15 s above the usual threshold.
DEMO_DRIFT_WINDOW = "1m"
DEMO_DRIFT_FOR = "15s"
DEMO_PSI_THRESHOLD = 0.2
WATCH_SECONDS = 180


def demo_drift_rule_group(jobs: tuple[str, ...] = ("champion", "challenger")) -> dict:
    """The drift rules for the local Prometheus, whose jobs are the server names and which has no namespaces."""
    selector = f'job=~"{"|".join(jobs)}"'
    return {"name": "mlserve.demo.drift",
            "rules": drift_rules_for(selector, DEMO_DRIFT_WINDOW, DEMO_PSI_THRESHOLD, DEMO_DRIFT_FOR)}


def shift_monthly_charges(row: dict, seconds: float) -> dict:
    """`row` as the shifted traffic sends it: `monthly_charges` scaled up once the shift has started."""
    growth = max(seconds - SHIFT_START_SECONDS, 0.0) * SHIFT_PER_SECOND
    if growth == 0.0:
        return row
    return {**row, SHIFTED_COLUMN: round(float(row[SHIFTED_COLUMN]) * (1.0 + growth), 2)}


@dataclass
class DriftWatch:
    """What the demo saw: when the alert fired (seconds after watching began) and each column's highest score."""

    fired_after_seconds: float | None = None
    fired_columns: set[str] = field(default_factory=set)
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def as_expected(self) -> bool:
        """The shifted column fired, and every other column stayed under the threshold."""
        others = [score for column, score in self.scores.items() if column != SHIFTED_COLUMN]
        return SHIFTED_COLUMN in self.fired_columns and all(score <= DEMO_PSI_THRESHOLD for score in others)


def _get(url: str, path: str, **params) -> dict:
    response = requests.get(f"{url}{path}", params=params, timeout=5)
    response.raise_for_status()
    return response.json()["data"]


def watch_drift(prometheus_url: str, stop, say=print, seconds: float = WATCH_SECONDS) -> DriftWatch:
    """Wait (at most `seconds`, or until `stop` is set) for ModelInputDrift to fire; then read every column's score."""
    watch = DriftWatch()
    started = time.monotonic()
    while time.monotonic() - started < seconds and not stop.is_set():
        try:
            alerts = _get(prometheus_url, "/api/v1/alerts")["alerts"]
        except requests.RequestException:
            alerts = []
        firing = {alert["labels"].get("column") for alert in alerts
                  if alert["labels"].get("alertname") == INPUT_DRIFT and alert.get("state") == "firing"}
        if firing:
            watch.fired_after_seconds = round(time.monotonic() - started, 1)
            watch.fired_columns = {column for column in firing if column}
            break
        stop.wait(2)
    try:
        for series in _get(prometheus_url, "/api/v1/query", query=f"max by (column) ({DRIFT_SCORE_RULE})")["result"]:
            watch.scores[series["metric"].get("column", "")] = round(float(series["value"][1]), 4)
    except requests.RequestException as err:
        say(f"could not read the drift scores: {err}")
    return watch

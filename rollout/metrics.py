"""Metrics providers: where the scheduler's PromQL goes, and how "no data" differs from "unreachable".

`MetricsProvider.query` returns a float, or None when the query matched nothing (no series, or NaN,
as `histogram_quantile` gives for an idle window). A provider that cannot be reached raises
`MetricsUnreachableError`; one that rejects the query raises `MetricsQueryError`. The scheduler turns
both into an `error` measurement and holds, so neither case can advance a rollout.
"""

from __future__ import annotations

import math
from typing import Protocol

import requests

from rollout.analysis import QualitySample, VariantSample, quality_queries, quality_sample, variant_queries
from rollout.errors import MetricsQueryError, MetricsUnreachableError


class MetricsProvider(Protocol):
    """A source of scalar answers to PromQL queries."""

    def query(self, promql: str) -> float | None:
        """Evaluate `promql` now; None when it matched no data. Raises on an unreachable backend."""
        ...

    def is_online(self) -> bool:
        """Whether the backend answers its readiness check right now."""
        ...


class PrometheusProvider:
    """PromQL instant queries over Prometheus's HTTP API (`GET /api/v1/query`)."""

    def __init__(self, url: str, timeout_seconds: float = 5.0, session: requests.Session | None = None):
        self.url = url.rstrip("/")
        self.timeout_seconds = timeout_seconds
        self._session = session or requests.Session()

    def is_online(self) -> bool:
        """True when `/-/ready` answers 200 within the timeout."""
        try:
            response = self._session.get(f"{self.url}/-/ready", timeout=self.timeout_seconds)
        except requests.RequestException:
            return False
        return response.status_code == 200

    def query(self, promql: str) -> float | None:
        """Evaluate `promql`; a vector must hold at most one series (wrap it in `sum()` otherwise)."""
        return _scalar_from_result(promql, self._query_data(promql))

    def _query_data(self, promql: str) -> dict:
        """The `data` of Prometheus's answer to an instant query; raises as `query` documents."""
        try:
            response = self._session.get(
                f"{self.url}/api/v1/query",
                params={"query": promql, "timeout": f"{int(self.timeout_seconds * 1000)}ms"},
                timeout=self.timeout_seconds,
            )
        except requests.RequestException as err:
            raise MetricsUnreachableError(f"Prometheus at {self.url} is unreachable: {err}") from err
        if response.status_code >= 500:
            raise MetricsUnreachableError(
                f"Prometheus at {self.url} answered HTTP {response.status_code}: {response.text[:200]}"
            )
        try:
            body = response.json()
        except ValueError as err:
            raise MetricsQueryError(
                f"Prometheus at {self.url} answered HTTP {response.status_code} with non-JSON: {response.text[:200]}"
            ) from err
        if body.get("status") != "success":
            raise MetricsQueryError(
                f"Prometheus rejected {promql!r}: {body.get('errorType')}: {body.get('error')}"
            )
        return body["data"]

    def query_by(self, promql: str, label: str) -> dict[str, float]:
        """Evaluate `promql` (an instant vector) as {value of `label`: sample}; {} when nothing matched."""
        data = self._query_data(promql)
        if data.get("resultType") != "vector":
            raise MetricsQueryError(f"{promql!r} returned a {data.get('resultType')}; expected an instant vector")
        values = {}
        for series in data.get("result") or []:
            value = float(series["value"][1])
            if not math.isnan(value):
                values[series["metric"].get(label, "")] = value
        return values


def _scalar_from_result(promql: str, data: dict) -> float | None:
    result_type, result = data.get("resultType"), data.get("result")
    if result_type == "scalar":
        value = float(result[1])
    elif result_type == "vector":
        if not result:
            return None
        if len(result) > 1:
            raise MetricsQueryError(
                f"{promql!r} returned {len(result)} series; aggregate it (e.g. sum(...)) to one value"
            )
        value = float(result[0]["value"][1])
    else:
        raise MetricsQueryError(f"{promql!r} returned a {result_type}; expected a scalar or an instant vector")
    return None if math.isnan(value) else value


def collect_sample(
    provider: MetricsProvider, variant: str, selector: str, window_seconds: float, executor_selector: str | None = None
) -> VariantSample | None:
    """Ask `provider` what `variant` did over the last window; None when it served no data at all.
    With `executor_selector`, requests and errors are Seldon's executor's view (see `variant_queries`)."""
    queries = variant_queries(selector, int(math.ceil(window_seconds)), executor_selector)
    requests_served = provider.query(queries.requests)
    if requests_served is None:
        return None
    errors = provider.query(queries.errors) or 0.0
    p95 = provider.query(queries.p95_seconds)
    # increase() extrapolates to the window's edges, so counts come back fractional.
    served = int(round(requests_served))
    return VariantSample(variant, served, min(int(round(errors)), served), p95)


def collect_quality(provider: MetricsProvider, variant: str, selector: str, window_seconds: float,
                    metric: str) -> QualitySample | None:
    """The feedback `variant` received over the window, for `metric`; None when the server reports none."""
    queries = quality_queries(selector, int(math.ceil(window_seconds)), metric)
    count = provider.query(queries["count"])
    if count is None:
        return None
    return quality_sample(variant, metric, count, provider.query(queries["sum"]), provider.query(queries["squared"]))

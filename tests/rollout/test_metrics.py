"""PrometheusProvider against a stand-in HTTP server: values, no data, rejected queries, unreachable."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rollout.errors import MetricsQueryError, MetricsUnreachableError
from rollout.metrics import PrometheusProvider, collect_sample
from service.names import free_port


def vector(*values):
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {}, "value": [time.time(), str(value)]} for value in values]}}


ANSWERS = {
    "one": (200, vector(42.5)),
    "empty": (200, vector()),
    "nan": (200, vector("NaN")),
    "two": (200, vector(1, 2)),
    "scalar": (200, {"status": "success", "data": {"resultType": "scalar", "result": [time.time(), "3"]}}),
    "bad": (400, {"status": "error", "errorType": "bad_data", "error": "parse error at char 4"}),
    "down": (503, "Service Unavailable"),
    "slow": (200, vector(1)),
    "by-output": (200, {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"output": "0"}, "value": [time.time(), "750.5"]},
        {"metric": {"output": "1"}, "value": [time.time(), "249.5"]},
        {"metric": {"output": "2"}, "value": [time.time(), "NaN"]}]}}),
}


class StandInPrometheus(BaseHTTPRequestHandler):
    def do_GET(self):
        from urllib.parse import parse_qs, urlparse

        url = urlparse(self.path)
        if url.path == "/-/ready":
            status, body = 200, "Prometheus Server is Ready."
        else:
            query = parse_qs(url.query)["query"][0]
            if query == "slow":
                time.sleep(1.0)
            status, body = ANSWERS.get(query, (200, vector(query.count("errors") and 3 or 100)))
        payload = body if isinstance(body, str) else json.dumps(body)
        self.send_response(status)
        self.end_headers()
        self.wfile.write(payload.encode())

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def prometheus_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandInPrometheus)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.mark.parametrize(("query", "expected"), [("one", 42.5), ("empty", None), ("nan", None), ("scalar", 3.0)])
def test_query_values_and_no_data(prometheus_url, query, expected):
    assert PrometheusProvider(prometheus_url).query(query) == expected


@pytest.mark.parametrize(
    ("query", "error", "message"),
    [("two", MetricsQueryError, "2 series"), ("bad", MetricsQueryError, "parse error"),
     ("down", MetricsUnreachableError, "HTTP 503"), ("slow", MetricsUnreachableError, "unreachable")],
)
def test_query_failures(prometheus_url, query, error, message):
    with pytest.raises(error, match=message):
        PrometheusProvider(prometheus_url, timeout_seconds=0.3).query(query)


def test_unreachable_is_not_no_data():
    provider = PrometheusProvider(f"http://127.0.0.1:{free_port()}", timeout_seconds=0.5)
    assert provider.is_online() is False
    with pytest.raises(MetricsUnreachableError, match="unreachable"):
        provider.query("up")


def test_online(prometheus_url):
    assert PrometheusProvider(prometheus_url).is_online() is True


def test_collect_sample_rounds_extrapolated_counts(prometheus_url):
    sample = collect_sample(PrometheusProvider(prometheus_url), "challenger", 'variant="challenger"', 30)
    assert (sample.requests, sample.errors) == (100, 3)


def test_query_by_answers_one_value_per_label(prometheus_url):
    provider = PrometheusProvider(prometheus_url)
    assert provider.query_by("by-output", "output") == {"0": 750.5, "1": 249.5}
    assert provider.query_by("empty", "output") == {}
    with pytest.raises(MetricsQueryError, match="expected an instant vector"):
        provider.query_by("scalar", "output")

"""`service serve --front-proxy`: HAProxy holds the connections and refuses overload with our 503 before Python.

The configuration is checked by HAProxy itself (``haproxy -c``); the served behaviour with a real server whose one slot
is held by a request whose body has not finished arriving (so nothing depends on how fast the model is), including
that the worker's metrics count what the proxy refused.
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from service.admission import AdmissionLimits
from service.front_proxy import FRONTEND, LIMITED_BACKEND, REFUSALS_PERIOD_S, FrontProxy, RefusalCounter, find_haproxy
from tests.service.conftest import start_server, stop_server

ROW = {"tenure": 3, "monthly_charges": 20.5, "total_charges": 61.5, "contract_type": "Two year",
       "payment_method": "Credit card (automatic)"}


def test_the_configuration_carries_the_serving_limits_and_haproxy_accepts_it(tmp_path):
    limits = AdmissionLimits(max_concurrency=16, max_queue=4, queue_timeout=0.25, body_timeout=10.0)
    config = FrontProxy("0.0.0.0", 3000, 3100, 3200, 2, limits).config(fd_limit=4096)
    assert "server workers 127.0.0.1:3100 maxconn 32\n" in config
    assert "queue(workers) ge 8" in config  # a full queue is refused at once, not parked in the backend's queue
    assert "timeout queue 250ms" in config
    assert "bind 0.0.0.0:3000" in config and "hdr retry-after 1" in config
    body = json.loads(config.split("status 503 content-type application/json string '", 1)[1].split("' hdr", 1)[0])
    assert body["error_code"] == "TEMPORARILY_UNAVAILABLE" and "overloaded" in body["error"]
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    check = subprocess.run([find_haproxy(), "-c", "-f", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_no_queue_is_a_one_millisecond_queue_budget_not_an_unlimited_queue():
    limits = AdmissionLimits(max_concurrency=4, max_queue=0, queue_timeout=1.0, body_timeout=10.0)
    config = FrontProxy("127.0.0.1", 3000, 3100, 3200, 1, limits).config(fd_limit=4096)
    assert "timeout queue 1ms" in config and "maxqueue" not in config


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def request_head(length: int) -> bytes:
    return (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % length)


# A valid /predict body longer than HAProxy's 16 kB request buffer (JSON allows the blanks): the proxy passes such a
# request on once its buffer is full, so a client holding back the last byte holds a worker slot.
LONG_BODY = json.dumps({"instances": [ROW]}).encode()[:-1] + b" " * 32768 + b"}"


@pytest.fixture(scope="module")
def proxied_server(registry, tmp_path_factory):
    server = start_server(
        registry, tmp_path_factory.mktemp("logs") / "front-proxy.log", "--front-proxy",
        env={"MLSERVE_MAX_CONCURRENCY": "1", "MLSERVE_MAX_QUEUE": "1", "MLSERVE_QUEUE_TIMEOUT_SECONDS": "1.5",
             "MLSERVE_BODY_TIMEOUT_SECONDS": "4", "MLSERVE_EXPLAIN_ENABLED": "false"})
    yield server
    stop_server(server)


def test_overload_is_answered_503_with_retry_after_by_the_proxy_and_probes_still_answer(proxied_server):
    url = proxied_server.url
    assert requests.post(f"{url}/predict", json={"instances": [ROW]}, timeout=30).status_code == 200
    holder = connect(url)
    holder.sendall(request_head(len(LONG_BODY)) + LONG_BODY[:-1])
    try:
        time.sleep(0.5)  # the proxy has passed the held request to the worker: its one connection is taken
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            waiting = pool.submit(requests.post, f"{url}/predict", json={"instances": [ROW]}, timeout=10)
            time.sleep(0.1)  # it sits in the proxy's one-place queue
            beyond = requests.post(f"{url}/predict", json={"instances": [ROW]}, timeout=10)
            refused_after = time.monotonic() - started - 0.1
            queued = waiting.result()
            waited = time.monotonic() - started
        assert beyond.status_code == 503 and beyond.headers["Retry-After"] == "2"
        assert refused_after < 1.0, f"a request beyond the full queue is refused at once, not after {refused_after:.2f}s"
        assert queued.status_code == 503, queued.text
        assert queued.headers["Retry-After"] == "2"
        assert queued.json()["error_code"] == "TEMPORARILY_UNAVAILABLE" and "overloaded" in queued.json()["error"]
        assert 1.4 <= waited < 8, f"a queued request waits out the 1.5 s queue budget, not {waited:.2f}s"
        assert requests.get(f"{url}/livez", timeout=5).status_code == 200
        assert requests.get(f"{url}/metrics", timeout=5).status_code == 200
        holder.sendall(LONG_BODY[-1:])
        answer = holder.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    finally:
        holder.close()
    assert requests.post(f"{url}/predict", json={"instances": [ROW]}, timeout=30).status_code == 200
    # The two requests the proxy refused never reached the worker, yet its metrics count them as it counts its own
    # sheds, so the rollout analysis and the alerts see a shedding pod the same with or without the proxy.
    deadline = time.monotonic() + 4 * REFUSALS_PERIOD_S
    while (unavailable := served_errors(url, "unavailable")) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert unavailable == 2
    time.sleep(REFUSALS_PERIOD_S + 1)
    assert served_errors(url, "unavailable") == 2  # counted once


def served_errors(url: str, error_type: str) -> float:
    """The server's model_prediction_errors_total of ``error_type``, summed over its label sets."""
    text = requests.get(f"{url}/metrics", timeout=5).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "model_prediction_errors_total" and sample.labels.get("error_type") == error_type)


class Exporter(BaseHTTPRequestHandler):
    """Stands in for HAProxy's exporter: answers whatever ``text`` holds, or 503 while it is None."""

    text: str | None = None

    def do_GET(self):
        self.send_response(200 if self.text is not None else 503)
        self.end_headers()
        self.wfile.write((self.text or "").encode())

    def log_message(self, *args):
        pass


def exporter_text(intercepted: float, backend_5xx: float, server_5xx: float) -> str:
    return "\n".join([
        "# TYPE haproxy_frontend_intercepted_requests_total counter",
        f'haproxy_frontend_intercepted_requests_total{{proxy="{FRONTEND}"}} {intercepted}',
        'haproxy_frontend_intercepted_requests_total{proxy="stats"} 7',  # the exporter's own answers
        "# TYPE haproxy_backend_http_responses_total counter",
        f'haproxy_backend_http_responses_total{{proxy="{LIMITED_BACKEND}",code="5xx"}} {backend_5xx}',
        'haproxy_backend_http_responses_total{proxy="control",code="5xx"} 5',
        "# TYPE haproxy_server_http_responses_total counter",
        f'haproxy_server_http_responses_total{{proxy="{LIMITED_BACKEND}",server="workers",code="5xx"}} {server_5xx}',
        "",
    ])


def test_the_refusal_counter_counts_each_increase_once_from_its_first_read_and_across_a_proxy_restart():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Exporter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    counted: list[float] = []
    counter = RefusalCounter(f"http://127.0.0.1:{server.server_port}/metrics", counted.append)
    try:
        Exporter.text = exporter_text(intercepted=10, backend_5xx=4, server_5xx=1)
        counter.poll()  # the baseline: refused before this worker started, maybe counted by its predecessor
        Exporter.text = exporter_text(intercepted=12, backend_5xx=6, server_5xx=2)  # 2 refused, 1 timed out queued
        counter.poll()
        counter.poll()  # nothing new
        Exporter.text = None  # restarting
        counter.poll()
        Exporter.text = exporter_text(intercepted=1, backend_5xx=0, server_5xx=0)  # a new proxy: all of it is new
        counter.poll()
    finally:
        server.shutdown()
    assert counted == [3, 1]


def test_a_server_that_cannot_start_stops_its_proxy_and_exits_non_zero(registry, tmp_path):
    with pytest.raises(RuntimeError, match="exited with 2"):
        start_server(registry, tmp_path / "bad.log", "--front-proxy", "--model-uri", "models:/no-such-model/1")


def test_a_client_sending_a_byte_a_second_holds_no_worker_and_gets_408(proxied_server):
    """The proxy keeps a slow body to itself (the one worker slot stays free) and cuts it off after the body budget."""
    slow = connect(proxied_server.url)
    try:
        slow.sendall(request_head(100) + b"{")
        started = time.monotonic()
        assert requests.post(f"{proxied_server.url}/predict", json={"instances": [ROW]}, timeout=10).status_code == 200
        for _ in range(3):
            time.sleep(1)
            slow.sendall(b" ")
        answer = slow.recv(65536)
        waited = time.monotonic() - started
    finally:
        slow.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"request body not received within 4s" in answer
    assert waited < 10, f"cut off after {waited:.1f}s, the budget is 4 s"

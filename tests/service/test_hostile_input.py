"""Client mistakes, stalled clients and overload against a real server: 4xx with a message, never a 5xx.

Every prediction route (REST, the MLflow scoring protocol, OIP REST) gets the same table of broken requests; then a
server with one slot and no queue shows the admission limits end to end: a client sending its body a byte at a time
holds the slot, the next request is shed with 503 + Retry-After (counted as ``unavailable``), the slow client is cut
off with 408, and the server serves again.
"""

from __future__ import annotations

import socket
import time

import pytest
import requests

from .conftest import start_server, stop_server
from .test_server import EXAMPLE, metric_value

pytestmark = pytest.mark.integration

ROUTES = ["/predict", "/predict_batch", "/invocations", "/v2/models/{model}/infer", "/explain",
          "/v2/models/{model}/explain"]
ROW_BODY = b'{"instances": [{"tenure": 1}]}'
# (name, Content-Type, body, expected status, words the error must contain)
MISTAKES = [
    ("multipart-without-boundary", "multipart/form-data", b'{"instances": []}', 415, "multipart/form-data"),
    ("multipart-with-boundary", "multipart/form-data; boundary=x", b"--x\r\n\r\n--x--\r\n", 415, "application/json"),
    ("form-urlencoded", "application/x-www-form-urlencoded", b"instances=1", 415, "application/json"),
    ("text-plain", "text/plain", ROW_BODY, 415, "text/plain"),
    ("malformed-content-type", "json", ROW_BODY, 415, "malformed Content-Type"),
    ("not-json", "application/json", b'{"instances": [', 400, ""),
    ("not-utf8", "application/json", b"\xff\xfe\x00{", 400, ""),
    ("top-level-array", "application/json", b"[1, 2, 3]", 400, ""),
    ("deeply-nested", "application/json", b'{"instances": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, ""),
]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("content_type", "body", "status", "words"),
                         [case[1:] for case in MISTAKES], ids=[case[0] for case in MISTAKES])
def test_a_client_mistake_gets_a_4xx_with_a_message_on_every_route(champion_server, route, content_type, body,
                                                                   status, words):
    url = champion_server.url + route.format(model="customer-churn-classifier")
    response = requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=30)

    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    if status == 415 and not (route == "/invocations" and content_type == "text/plain"):
        assert response.status_code == 415 and words in response.json()["error"], response.text
    assert response.json().get("error"), response.text


def test_the_reported_multipart_request_gets_415_naming_what_is_accepted(champion_server):
    # curl -X POST -H 'Content-Type: multipart/form-data' -d '{"instances": []}' http://127.0.0.1:3000/predict
    response = requests.post(f"{champion_server.url}/predict", data=b'{"instances": []}',
                             headers={"Content-Type": "multipart/form-data"}, timeout=10)

    assert response.status_code == 415
    assert response.json()["error"] == "unsupported Content-Type 'multipart/form-data'; send application/json"
    assert requests.post(f"{champion_server.url}/predict", json={"instances": [EXAMPLE]}, timeout=10).ok


def start_slow_body(url: str) -> socket.socket:
    """Open a POST /predict that promises 64 bytes and sends one."""
    host, port = url.removeprefix("http://").split(":")
    client = socket.create_connection((host, int(port)), timeout=30)
    client.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n{")
    return client


@pytest.fixture(scope="module")
def one_slot_server(registry, tmp_path_factory):
    """A server that handles one prediction at a time, queues none, and gives a body 3 seconds."""
    log = tmp_path_factory.mktemp("logs") / "one-slot.log"
    limits = {"MLSERVE_MAX_CONCURRENCY": "1", "MLSERVE_MAX_QUEUE": "0", "MLSERVE_BODY_TIMEOUT_SECONDS": "3"}
    server = start_server(registry, log, "--variant", "champion", env=limits)
    yield server
    stop_server(server)


def test_overload_is_shed_with_503_and_retry_after_and_a_stalled_body_is_cut_off(one_slot_server):
    url = one_slot_server.url
    labels = {"variant": "champion"}
    unavailable_before = metric_value(url, "model_prediction_errors_total", error_type="unavailable", **labels)
    slow = start_slow_body(url)
    try:
        deadline = time.monotonic() + 20
        while True:  # the slow client holds the only slot as soon as its headers are read
            shed = requests.post(f"{url}/predict", json={"instances": [EXAMPLE]}, timeout=10)
            if shed.status_code == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert shed.status_code == 503, shed.text
        assert shed.headers["Retry-After"] == "1" and "overloaded" in shed.json()["error"]
        assert requests.get(f"{url}/readyz", timeout=10).status_code == 200, "probes bypass admission"

        slow.settimeout(30)
        received = b""
        while chunk := slow.recv(4096):  # the server closes the connection after its answer
            received += chunk
        answer = received.decode(errors="replace")
        assert answer.startswith("HTTP/1.1 408"), answer
        assert "not received within 3s" in answer
    finally:
        slow.close()

    assert requests.post(f"{url}/predict", json={"instances": [EXAMPLE]}, timeout=10).status_code == 200
    unavailable_after = metric_value(url, "model_prediction_errors_total", error_type="unavailable", **labels)
    assert unavailable_after - unavailable_before >= 1

"""Fakes for rollout unit tests: a router that remembers weights, a scripted measurement source, a model server's
`/explain` answering as told, and a simulated clock so a whole rollout runs in milliseconds (imported by name;
tests/ has no packages)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from rollout.analysis import Measurement, Phase


class FakeRouter:
    """Records every weight it was given."""

    def __init__(self, weight: int = 0):
        self.weight = weight
        self.history: list[int] = []

    def get_weight(self) -> int:
        return self.weight

    def set_weight(self, percent: int) -> None:
        self.weight = percent
        self.history.append(percent)


class SimClock:
    """Simulated time: `wait` advances it, and stops the run after `stop_after` waits if given."""

    def __init__(self, stop_after: int | None = None):
        self.now = 1_700_000_000.0
        self.waits = 0
        self.stop_after = stop_after

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.waits += 1
        if self.stop_after is not None and self.waits > self.stop_after:
            return True
        self.now += seconds
        return False


def scripted(phases: str):
    """A measure function answering with phases from a string: P passed, F failed, I inconclusive, E error."""
    codes = {"P": Phase.PASSED, "F": Phase.FAILED, "I": Phase.INCONCLUSIVE, "E": Phase.ERROR}
    remaining = list(phases)
    windows: list[float] = []

    def measure_fn(provider, plan, window_seconds, look=None):
        windows.append(window_seconds)
        phase = codes[remaining.pop(0)]
        return Measurement(phase, f"scripted {phase.value}")

    measure_fn.windows = windows
    return measure_fn


class FakeExplainer(BaseHTTPRequestHandler):
    """A model server's /explain: ``answers`` is the list of (status, body, headers) it gives, the last one repeated;
    ``seen`` collects the rows it was asked about."""

    answers: list[tuple[int, dict, dict]] = []
    seen: list = []

    def do_POST(self):
        rows = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["instances"]
        type(self).seen.append(rows)
        status, body, headers = self.answers[0] if len(self.answers) == 1 else self.answers.pop(0)
        if status == 200:
            body = {"explanations": [{"row": index, "prediction": 0.5, "base_value": 0.3,
                                      "attributions": {"tenure": 0.1 * (index + 1), "plan": -0.1}}
                                     for index in range(len(rows))]}
        payload = json.dumps(body).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def serve_explainer(*answers: tuple[int, dict, dict]) -> ThreadingHTTPServer:
    """A FakeExplainer on a free loopback port, serving from a daemon thread; the caller shuts it down."""
    handler = type("Handler", (FakeExplainer,), {"answers": list(answers), "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server

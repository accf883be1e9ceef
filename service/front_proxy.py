"""HAProxy in front of the workers (``python -m service serve --front-proxy``): overload is refused in C, before Python.

A worker's own admission (``service.admission``) sheds only what its event loop gets to see. Driven open-loop at twice
its capacity, a CPU-bound worker spends its loop on accepting connections and reading requests, and the excess waits
in the kernel's socket backlog, where no Python code sees it: in ``make bench``'s 2x point the shed requests waited
1.6 s (p99) for their 503 and the accepted ones 1.8 s. HAProxy holds every client connection instead, lets at most
``max_concurrency`` requests per worker through to the workers over a few kept-alive connections, queues at most
``max_queue`` per worker for at most ``queue_timeout`` seconds (the same ``serving.*`` limits, so one setting means
the same in both places), and answers the rest itself with 503 + ``Retry-After`` in the server's JSON error shape.
Its cost is about a tenth of one core at 2,400 requests/s (measured in the trial recorded in the README).

Requests the proxy refuses never reach a worker. HAProxy's Prometheus exporter, on ``stats_port`` (loopback: in a
pod the server's container shares it), counts them, and the first worker reads it every few seconds
(``RefusalCounter``) and adds them to ``model_predictions_total`` and ``model_prediction_errors_total{error_type=
"unavailable"}``, as if a worker had shed them: dashboards, alerts and the rollout analysis see a shedding pod the
same with or without the proxy. gRPC does not pass through the proxy: its workers apply the same limits in-process.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import shutil
import subprocess
import threading
import typing as t
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from service.admission import MEDIA_TYPES_BY_PATH, AdmissionLimits
from service.errors import mlflow_error_body

HAPROXY = "haproxy"
MINIMUM_VERSION = (2, 2)  # `http-error status ... hdr` (answers with our JSON body and Retry-After)
# Seconds HAProxy waits for a worker's answer; the workers' own request timeout answers first.
SERVER_TIMEOUT_S = 300
# The proxy's frontend and the backend that holds prediction requests (their names are the exporter's labels).
FRONTEND, LIMITED_BACKEND = "mlserve", "workers"
REFUSALS_PERIOD_S = 5.0
logger = logging.getLogger(__name__)


class FrontProxyError(RuntimeError):
    """HAProxy cannot run here; the message says what is missing and what to do."""


@dataclass(frozen=True)
class FrontProxy:
    """What the proxy listens on and where it sends requests: ``public`` is the server's address as clients know
    it, ``inner_port`` the workers' loopback port, ``stats_port`` the proxy's Prometheus exporter."""

    host: str
    port: int
    inner_port: int
    stats_port: int
    workers: int
    limits: AdmissionLimits

    @property
    def max_connections(self) -> int:
        """Requests in progress in the workers at once: ``max_concurrency`` per worker."""
        return self.limits.max_concurrency * self.workers

    @property
    def max_queued(self) -> int:
        return self.limits.max_queue * self.workers

    def config(self, fd_limit: int | None = None) -> str:
        """The HAProxy configuration (``haproxy -f``)."""
        # One answer for every route, so it carries MLflow's fields (what /invocations answers) beside "error".
        body = json.dumps(mlflow_error_body(
            f"server overloaded: {self.max_connections} requests in progress and the queue full or its "
            f"{self.limits.queue_timeout:g}s budget spent (serving.maxConcurrency, maxQueue, queueTimeoutSeconds); "
            f"retry after {self.limits.retry_after}s", 503))
        # Each client connection costs HAProxy two descriptors (client and server side) at most.
        limit = fd_limit if fd_limit is not None else resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        global_maxconn = max(256, min(20000, (limit - 64) // 2))
        slow = json.dumps(mlflow_error_body(
            f"request body not received within {self.limits.body_timeout:g}s (MLSERVE_BODY_TIMEOUT_SECONDS)", 408))
        retry_after = f"hdr retry-after {self.limits.retry_after}"
        # HAProxy's `maxqueue` does not refuse (a request over it waits in the backend's queue instead), so a full
        # queue is refused by rule; no queue at all is a 1 ms queue budget (a rule `queue ge 0` would refuse all).
        refuse_when_full = (
            [f"  http-request return status 503 content-type application/json string '{body}' {retry_after} "
             f"if prediction {{ queue(workers) ge {self.max_queued} }}"] if self.max_queued else [])
        queue_ms = max(1, round(self.limits.queue_timeout * 1000)) if self.max_queued else 1
        return "\n".join([
            "global",
            f"  maxconn {global_maxconn}",
            "  nbthread 1",  # a proxy that shares a pod's cores with the workers: one thread is plenty
            "defaults",
            "  mode http",
            "  option http-keep-alive",
            "  http-reuse always",  # a handful of kept-alive connections to the workers, not one per client
            # A request goes to a worker once its body is here (up to a 16 kB buffer): a client sending a byte a
            # second holds no worker slot, and is answered 408 when the body budget runs out.
            "  option http-buffer-request",
            f"  timeout http-request {self.limits.body_timeout:g}s",
            "  timeout connect 2s",
            f"  timeout client {math.ceil(self.limits.body_timeout) + 5}s",
            f"  timeout server {SERVER_TIMEOUT_S}s",
            f"  timeout queue {queue_ms}ms",
            f"frontend {FRONTEND}",
            f"  bind {self.host}:{self.port}",
            # Only the routes the workers' admission guards are limited: probes, /metrics and the docs always get
            # through, so a liveness probe never fails because the model is busy.
            *(f"  acl prediction path_reg {pattern.pattern}" for pattern, _ in MEDIA_TYPES_BY_PATH),
            *refuse_when_full,
            f"  use_backend {LIMITED_BACKEND} if prediction",
            "  default_backend control",
            f"  http-error status 408 content-type application/json string '{slow}' hdr connection close",
            "frontend stats",
            f"  bind 127.0.0.1:{self.stats_port}",
            "  http-request use-service prometheus-exporter if { path /metrics }",
            f"backend {LIMITED_BACKEND}",
            # HAProxy's own 503, when no worker slot frees within the queue budget or no worker listens yet
            # (start-up; a readiness probe sees 503 until the workers are ready), gets the same body.
            f"  http-error status 503 content-type application/json string '{body}' {retry_after}",
            f"  server workers 127.0.0.1:{self.inner_port} maxconn {self.max_connections}",
            "backend control",
            f"  server workers 127.0.0.1:{self.inner_port}",
            "",
        ])

    def start(self, directory: Path) -> subprocess.Popen:
        """Write the configuration into ``directory`` and start HAProxy in the foreground."""
        binary = find_haproxy()
        path = directory / "haproxy.cfg"
        path.write_text(self.config())
        check = subprocess.run([binary, "-c", "-q", "-f", str(path)], capture_output=True, text=True)
        if check.returncode != 0:
            raise FrontProxyError(f"HAProxy refused {path}: {(check.stderr or check.stdout).strip()}")
        return subprocess.Popen([binary, "-db", "-f", str(path)], stdin=subprocess.DEVNULL)


def haproxy_version(binary: str) -> tuple[int, int]:
    first = subprocess.run([binary, "-v"], capture_output=True, text=True).stdout.split()
    major, minor = first[2].split(".")[:2] if len(first) > 2 else ("0", "0")
    return int(major), int(minor)


def find_haproxy() -> str:
    """The HAProxy binary on PATH, at least ``MINIMUM_VERSION``."""
    # Debian installs it in /usr/sbin, which is not on every user's PATH.
    binary = shutil.which(HAPROXY) or shutil.which(HAPROXY, path="/usr/sbin:/usr/local/sbin")
    wanted = ".".join(map(str, MINIMUM_VERSION))
    if binary is None:
        raise FrontProxyError(f"--front-proxy needs HAProxy {wanted} or later on PATH (Debian: apt-get install "
                              "haproxy); none found. Serve without --front-proxy to rely on the workers' admission.")
    version = haproxy_version(binary)
    if version < MINIMUM_VERSION:
        raise FrontProxyError(f"--front-proxy needs HAProxy {wanted} or later; {binary} is "
                              f"{'.'.join(map(str, version))}")
    return binary


def refused(exporter_text: str) -> float:
    """Prediction requests the proxy answered itself, from its exporter's counters: those refused by rule at the
    frontend (a full queue; `http-request return` counts as intercepted), plus the limited backend's 5xx that no
    worker sent (the queue budget spent, or no worker listening yet)."""
    intercepted = backend = server = 0.0
    for family in text_string_to_metric_families(exporter_text):
        for sample in family.samples:
            proxy, code = sample.labels.get("proxy"), sample.labels.get("code")
            if sample.name == "haproxy_frontend_intercepted_requests_total" and proxy == FRONTEND:
                intercepted += sample.value
            elif proxy == LIMITED_BACKEND and code == "5xx":
                if sample.name == "haproxy_backend_http_responses_total":
                    backend += sample.value
                elif sample.name == "haproxy_server_http_responses_total":
                    server += sample.value
    return intercepted + max(0.0, backend - server)


class RefusalCounter:
    """Reads the proxy's refusals every ``period`` seconds in a thread and passes each increase to ``count``.
    The first read is the baseline (a restarted worker does not count again what its predecessor counted); a
    count that went down means the proxy restarted, and all of it is new."""

    def __init__(self, stats_url: str, count: t.Callable[[float], None], period: float = REFUSALS_PERIOD_S) -> None:
        self.stats_url, self.count, self.period = stats_url, count, period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="front-proxy-refusals", daemon=True)
        self._last: float | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.period + 5)

    def poll(self) -> None:
        """One read: count what the proxy refused since the last one."""
        try:
            with urllib.request.urlopen(self.stats_url, timeout=self.period) as answer:
                now = refused(answer.read().decode())
        except (OSError, ValueError) as err:  # the proxy not up yet, restarting, or gone
            logger.debug("front proxy exporter unreadable at %s: %s", self.stats_url, err)
            return
        if self._last is not None and now != self._last:
            self.count(now - self._last if now > self._last else now)
        self._last = now

    def _run(self) -> None:
        while True:
            self.poll()
            if self._stop.wait(self.period):
                self.poll()  # what was refused since the last read, before the worker goes
                return

"""HAProxy in front of the workers (``python -m service serve --front-proxy``): overload is refused in C, before Python.

A worker's own admission (``service.admission``) sheds only what its event loop gets to see. Driven open-loop at twice
its capacity, a CPU-bound worker spends its loop on accepting connections and reading requests, and the excess waits
in the kernel's socket backlog, where no Python code sees it: in ``make bench``'s 2x point the shed requests waited
1.6 s (p99) for their 503 and the accepted ones 1.8 s. HAProxy holds every client connection instead, lets at most
``max_concurrency`` requests per worker through to the workers over a few kept-alive connections, queues at most
``max_queue`` per worker for at most ``queue_timeout`` seconds (the same ``serving.*`` limits, so one setting means
the same in both places), and answers the rest itself with 503 + ``Retry-After`` in the server's JSON error shape.
Its cost is about a tenth of one core at 2,400 requests/s (measured in the trial recorded in the README).

Requests the proxy answers never reach a worker, so the workers' ``model_*`` metrics do not count them; HAProxy's
own Prometheus exporter does, on ``stats_port`` (``haproxy_backend_http_responses_total{code="5xx"}`` and the
queue gauges). gRPC does not pass through the proxy: its workers apply the same limits in-process.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from service.admission import MEDIA_TYPES_BY_PATH, AdmissionLimits
from service.errors import mlflow_error_body

HAPROXY = "haproxy"
MINIMUM_VERSION = (2, 2)  # `http-error status ... hdr` (answers with our JSON body and Retry-After)
# Seconds HAProxy waits for a worker's answer; the workers' own request timeout answers first.
SERVER_TIMEOUT_S = 300


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
            "frontend mlserve",
            f"  bind {self.host}:{self.port}",
            # Only the routes the workers' admission guards are limited: probes, /metrics and the docs always get
            # through, so a liveness probe never fails because the model is busy.
            *(f"  acl prediction path_reg {pattern.pattern}" for pattern, _ in MEDIA_TYPES_BY_PATH),
            *refuse_when_full,
            "  use_backend workers if prediction",
            "  default_backend control",
            f"  http-error status 408 content-type application/json string '{slow}' hdr connection close",
            "frontend stats",
            f"  bind 127.0.0.1:{self.stats_port}",
            "  http-request use-service prometheus-exporter if { path /metrics }",
            "backend workers",
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

"""The local environment: real model servers, HAProxy and Prometheus on loopback, plus bounded load.

`LocalEnvironment` starts `python -m service serve` per variant, an HAProxy that splits one frontend
between a champion and a challenger server by weight (admin socket for `HAProxyRouter`), and a
Prometheus that scrapes every model server each second. It owns every process it starts and stops them
all on `close()` (also on Ctrl-C, through the context manager), descendants included: `bentoml serve`
forks its workers into their own process groups. The demo and the integration tests both use it.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

from rollout.errors import LocalEnvironmentError
from rollout.lock import REPO_ROOT
from service.names import CHALLENGER, CHAMPION, MLSERVE_HOME_ENV, TELEMETRY_OFF, free_port, registry_uri
from service.prediction_ids import KEY_ENV


@dataclass
class Started:
    """A process this environment started, with where its output goes."""

    name: str
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


@dataclass(frozen=True)
class LocalModelServer:
    """One `python -m service serve` process."""

    name: str
    variant: str
    model_uri: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class TrafficSplit:
    """One HAProxy: a frontend URL, and the admin socket and server names `HAProxyRouter` needs."""

    url: str
    socket_path: Path
    backend: str = "models"
    champion_server: str = "champion"
    challenger_server: str = "challenger"


@dataclass(frozen=True)
class LocalCanary:
    """A champion and its challengers served locally, one HAProxy split per challenger, and the Prometheus
    scraping them all (`LocalEnvironment.start_canary`)."""

    servers: dict[str, LocalModelServer]
    splits: dict[str, TrafficSplit]
    prometheus_url: str


class LocalEnvironment:
    """Starts and owns the local processes; use as a context manager so they always stop."""

    def __init__(self, workdir: Path, tracking_uri: str, *, log=None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = tracking_uri
        self.log = log or (lambda message: None)
        # One prediction-id signing key for every server of this environment, as the stack's Secret is for
        # every pod: feedback verifies whichever server it reaches.
        self.signing_key = secrets.token_urlsafe(48)
        self._started: list[Started] = []
        self._prometheus: Started | None = None
        self.prometheus_url: str | None = None
        self._scrape_targets: dict[str, int] = {}

    def __enter__(self) -> "LocalEnvironment":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ---------------------------------------------------------------- processes

    def _spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> Started:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "ab") as log_file:
            # A session of its own: Ctrl-C in the terminal reaches only us, and we stop children in order.
            process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT, env={**os.environ, **TELEMETRY_OFF, **(env or {})}, start_new_session=True,
            )
        started = Started(name, process, log_path)
        self._started.append(started)
        return started

    def _wait_until(self, started: Started, ready, timeout_seconds: float, what: str) -> None:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if started.process.poll() is not None:
                raise LocalEnvironmentError(
                    f"{started.name} exited with {started.process.returncode} before {what}; "
                    f"last lines of {started.log_path}:\n{started.log_tail()}"
                )
            if ready():
                return
            time.sleep(0.25)
        raise LocalEnvironmentError(
            f"{started.name} not {what} after {timeout_seconds:.0f}s; last lines of {started.log_path}:\n"
            f"{started.log_tail()}"
        )

    def close(self) -> None:
        """Stop every process this environment started, newest first."""
        while self._started:
            stop_process_tree(self._started.pop().process)

    # ---------------------------------------------------------------- model servers

    def start_model_servers(self, servers: list[tuple[str, str, str]], timeout_seconds: float = 180) -> list[LocalModelServer]:
        """Start (name, variant, model URI) servers in parallel and wait until each answers /readyz."""
        launched = []
        for name, variant, model_uri in servers:
            port = free_port()
            started = self._spawn(
                f"model-{name}",
                [sys.executable, "-m", "service", "serve", "--port", str(port), "--variant", variant,
                 "--model-uri", model_uri],
                # The server keeps its BentoML home (metrics files) under MLSERVE_HOME/servers/<port>: here, so
                # it goes away with the environment.
                env={"MLFLOW_TRACKING_URI": self.tracking_uri, MLSERVE_HOME_ENV: str(self.workdir),
                     KEY_ENV: self.signing_key},
            )
            launched.append((LocalModelServer(name, variant, model_uri, port), started))
        for server, started in launched:
            self._wait_until(started, lambda url=server.url: _answers(f"{url}/readyz"), timeout_seconds, "ready")
            self.log(f"model server {server.name} ({server.variant}, {server.model_uri}) ready at {server.url}")
        return [server for server, _ in launched]

    def start_canary(self, model_name: str, champion_version: str, challenger_versions: dict[str, str], *,
                     rule_groups: list[dict] | None = None) -> LocalCanary:
        """The local canary set-up of the demo, the benchmark and the integration tests.

        Serves version `champion_version` of `model_name` as the champion and each of `challenger_versions`
        (server name -> version) as a challenger, starts one HAProxy split per challenger (named after it, all
        traffic on the champion at first) and a Prometheus scraping every server (and evaluating `rule_groups`).
        """
        servers = self.start_model_servers([
            (CHAMPION, CHAMPION, registry_uri(model_name, champion_version)),
            *((name, CHALLENGER, registry_uri(model_name, version)) for name, version in challenger_versions.items()),
        ])
        by_name = {server.name: server for server in servers}
        splits = {name: self.start_haproxy(name, by_name[CHAMPION], by_name[name]) for name in challenger_versions}
        return LocalCanary(by_name, splits, self.start_prometheus(by_name, rule_groups=rule_groups))

    # ---------------------------------------------------------------- HAProxy

    def start_haproxy(self, name: str, champion: LocalModelServer, challenger: LocalModelServer) -> TrafficSplit:
        """An HAProxy splitting one frontend between two servers; all traffic to the champion at first."""
        haproxy = find_tool("haproxy")
        port = free_port()
        socket_path = self.workdir / f"{name}.sock"
        socket_path.unlink(missing_ok=True)
        config = self.workdir / f"{name}.cfg"
        config.write_text(
            "global\n"
            f"    stats socket {socket_path} mode 600 level admin\n"
            "    maxconn 512\n"
            "defaults\n"
            "    mode http\n"
            "    timeout connect 2s\n"
            "    timeout client 30s\n"
            "    timeout server 30s\n"
            f"frontend {name}_in\n"
            f"    bind 127.0.0.1:{port}\n"
            "    default_backend models\n"
            "backend models\n"
            "    balance roundrobin\n"
            "    option httpchk GET /readyz\n"
            f"    server champion 127.0.0.1:{champion.port} weight 100 check inter 1s\n"
            f"    server challenger 127.0.0.1:{challenger.port} weight 0 check inter 1s\n"
        )
        started = self._spawn(name, [haproxy, "-f", str(config), "-db"])
        self._wait_until(started, lambda: socket_path.exists() and _tcp_open(port), 20, "listening")
        self.log(f"haproxy {name} on http://127.0.0.1:{port} ({champion.name} / {challenger.name})")
        return TrafficSplit(f"http://127.0.0.1:{port}", socket_path)

    # ---------------------------------------------------------------- Prometheus

    def start_prometheus(self, targets: dict[str, LocalModelServer] | None = None, port: int | None = None,
                         rule_groups: list[dict] | None = None) -> str:
        """Prometheus scraping each model server every second (job = server name); returns its URL.

        `rule_groups` (Prometheus rule groups) are evaluated every second too. Called again after
        `stop_prometheus`, it restarts on the same port and storage.
        """
        if targets is not None:
            self._scrape_targets = {name: server.port for name, server in targets.items()}
        prometheus = find_tool("prometheus")
        port = port or (int(self.prometheus_url.rsplit(":", 1)[1]) if self.prometheus_url else free_port())
        config = self.workdir / "prometheus.yml"
        jobs = "".join(
            f"  - job_name: {name}\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
            for name, target_port in self._scrape_targets.items()
        )
        rules = ""
        if rule_groups:
            import yaml

            (self.workdir / "rules.yml").write_text(yaml.safe_dump({"groups": rule_groups}, sort_keys=False))
            rules = f"rule_files:\n  - {self.workdir / 'rules.yml'}\n"
        config.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
                          f"{rules}scrape_configs:\n{jobs}")
        url = f"http://127.0.0.1:{port}"
        self._prometheus = self._spawn(
            "prometheus",
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=2h", "--log.level=warn"],
        )
        self._wait_until(self._prometheus, lambda: _answers(f"{url}/-/ready"), 60, "ready")
        self.prometheus_url = url
        self.log(f"prometheus on {url} scraping {', '.join(self._scrape_targets)}")
        return url

    def stop_prometheus(self) -> None:
        """Stop Prometheus (to show that an unreachable metrics backend holds a rollout)."""
        if self._prometheus is not None:
            stop_process_tree(self._prometheus.process)
            self._started.remove(self._prometheus)
            self._prometheus = None


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class LoadStats:
    """What the load generator saw: responses by (variant, status)."""

    by_variant_status: Counter = field(default_factory=Counter)
    transport_errors: int = 0
    # Ground truth sent to /feedback: rows by the variant the server recorded them for, and rows refused.
    feedback_recorded: Counter = field(default_factory=Counter)
    feedback_refused: int = 0

    def failed(self, variant: str) -> int:
        """Requests `variant` answered with a 5xx."""
        return sum(count for (name, status), count in self.by_variant_status.items() if name == variant and status >= 500)

    def served(self, variant: str) -> int:
        return sum(count for (name, _), count in self.by_variant_status.items() if name == variant)


class LoadGenerator:
    """Bounded prediction traffic: `rate_per_second` single-row requests, at most `max_requests` and
    `max_seconds`, from a few threads; each request is one of `instances`, picked at random.

    With `truths` (one per instance), each answered row's true label goes back to `POST /feedback` with the
    row's `prediction_id`, `feedback_delay_seconds` later, as a system that learns the outcome later would.
    With `transform(row, seconds_since_start)`, each row is sent as it returns (the demo's shifted traffic).
    """

    def __init__(self, url: str, instances: list[dict], *, rate_per_second: float, max_requests: int,
                 max_seconds: float, threads: int = 4, seed: int = 0, truths: list | None = None,
                 feedback_delay_seconds: float = 0.0, transform=None):
        if truths is not None and len(truths) != len(instances):
            raise ValueError(f"{len(truths)} truths for {len(instances)} instances; give one per instance")
        self.base_url = url.rstrip("/")
        self.url = self.base_url + "/predict"
        self.instances = instances
        self.truths = truths
        self.feedback_delay_seconds = feedback_delay_seconds
        self.transform = transform
        self._pending_feedback: list[tuple[float, str, object]] = []
        self.rate_per_second = rate_per_second
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.threads = threads
        self.stats = LoadStats()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sent = 0
        self._workers: list[threading.Thread] = []

    def start(self) -> "LoadGenerator":
        self._started = time.monotonic()
        for index in range(self.threads):
            worker = threading.Thread(target=self._run, name=f"load-{index}", daemon=True)
            worker.start()
            self._workers.append(worker)
        if self.truths is not None:
            sender = threading.Thread(target=self._send_feedback, name="load-feedback", daemon=True)
            sender.start()
            self._workers.append(sender)
        return self

    def _next_slot(self) -> float | None:
        """When this thread may send its next request (shared pacing), or None when the budget is spent."""
        with self._lock:
            if self._sent >= self.max_requests or self._stop.is_set():
                return None
            slot = self._started + self._sent / self.rate_per_second
            if slot - self._started > self.max_seconds:
                return None
            self._sent += 1
            return slot

    def _run(self) -> None:
        session = requests.Session()
        while (slot := self._next_slot()) is not None:
            delay = slot - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            with self._lock:
                index = self._random.randrange(len(self.instances))
            row = self.instances[index]
            if self.transform is not None:
                row = self.transform(row, time.monotonic() - self._started)
            try:
                response = session.post(self.url, json={"instances": [row]}, timeout=10)
                key = (response.headers.get("x-model-variant", "unknown"), response.status_code)
                with self._lock:
                    self.stats.by_variant_status[key] += 1
                if self.truths is not None and response.status_code == 200:
                    self._queue_feedback(response.json().get("prediction_ids") or [], self.truths[index])
            except (requests.RequestException, ValueError):
                with self._lock:
                    self.stats.transport_errors += 1

    def _queue_feedback(self, prediction_ids: list, truth) -> None:
        due = time.monotonic() + self.feedback_delay_seconds
        with self._lock:
            self._pending_feedback.extend((due, prediction_id, truth) for prediction_id in prediction_ids)

    def _send_feedback(self) -> None:
        """Every half second, send the truths that are due, in one request; until stopped."""
        session = requests.Session()
        while not self._stop.wait(0.5):
            now = time.monotonic()
            with self._lock:
                due = [item for item in self._pending_feedback if item[0] <= now]
                self._pending_feedback = [item for item in self._pending_feedback if item[0] > now]
            if not due:
                continue
            rows = [{"prediction_id": prediction_id, "truth": truth} for _, prediction_id, truth in due]
            try:
                response = session.post(self.base_url + "/feedback", json=rows, timeout=10)
                results = response.json().get("results", [])
            except (requests.RequestException, ValueError):
                with self._lock:
                    self.stats.feedback_refused += len(rows)
                continue
            with self._lock:
                for result in results:
                    if result.get("status") == 200:
                        self.stats.feedback_recorded[result["variant"]] += 1
                    else:
                        self.stats.feedback_refused += 1

    def stop(self) -> LoadStats:
        """Stop sending and wait for in-flight requests."""
        self._stop.set()
        for worker in self._workers:
            worker.join(15)
        return self.stats


def stop_process_tree(process: subprocess.Popen, grace_seconds: float = 10.0) -> None:
    """Stop a process started in a session of its own, its group, and every descendant it had.

    BentoML's arbiter starts its workers in sessions of their own, so the group alone does not reach them:
    they are remembered by pid before the signal and stopped by pid if they outlive their parent.
    """
    if process.poll() is not None:
        return
    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace_seconds)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
    for child in descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(descendants, timeout=5)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def find_tool(name: str) -> str:
    """Path of a Debian tool: on PATH, or where Debian puts it (haproxy lives in /usr/sbin, often off PATH)."""
    found = shutil.which(name) or next(
        (str(path) for path in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if path.is_file()), None
    )
    if found is None:
        raise LocalEnvironmentError(f"{name} not found on PATH or in /usr/sbin, /usr/bin; `make setup` installs it")
    return found


def tools_installed(*names: str) -> bool:
    """Whether every named Debian tool can be found (for skipping tests that need them)."""
    try:
        return all(find_tool(name) for name in names)
    except LocalEnvironmentError:
        return False

"""Serving benchmark: our BentoML service against mlflow, MLServer, KServe and a bare server, side by side on loopback.

``make bench`` (``python -m bench.serving``) registers the demo churn model in a private registry
(``build/bench/home``), then starts each server in turn on 127.0.0.1 and times how long it takes to be ready
(the cold start), warms each up, and drives every endpoint with Debian's ``wrk`` (one thread, a Lua script for
the 1-row JSON POST body) at concurrency 1, then 8, then 64, one round per concurrency so that the servers
compared at one concurrency are measured close together in time on a shared machine. Servers:

- ``mlserve``: ``python -m service serve --front-proxy --grpc-port G`` with one worker per core (HTTP through the
  HAProxy in front, ``service/front_proxy.py``; gRPC straight to the workers), on every protocol it serves:
  ``/predict``, ``/invocations`` (``dataframe_records``), OIP REST infer and gRPC ``ModelInfer``; the gRPC point is
  loaded by ``ghz`` (Go, built by ``make bench`` with ``go install``; skipped with the reason when Go is missing) with
  the same 1-row request, one connection per concurrent caller as ``wrk`` opens, and reported in the same columns;
- ``mlflow models serve``: the same registered model through the pyfunc flavour, one worker per core;
- ``MLServer``: Seldon's MLServer 1.7 with its scikit-learn runtime (its own virtualenv, ``build/venv-mlserver``,
  pins in ``bench/requirements-mlserver.txt``), the model exported with joblib, one parallel worker per core;
- ``KServe``: KServe 0.21's Python model server with the sklearnserver-style ``Model`` subclass
  (``bench/kserve_server.py``; its own virtualenv ``build/venv-kserve``, pins in ``bench/requirements-kserve.txt``),
  one worker per core;
- ``reference``: ``bench.reference_server``, one uvicorn process calling ``predict_proba`` per request.

Then our ``/predict`` alone: driven open-loop with ``vegeta`` (built like ghz) at twice its c=64 throughput for
``BENCH_OVERLOAD_DURATION`` seconds (default 120; the soak's 2x overload point), counting what was accepted, what was
shed with 503 (how fast, and with ``Retry-After`` or not) and anything else, and sampling its RSS; and for
``BENCH_RSS_DURATION`` seconds (default 120) at concurrency 8, the RSS growth after warm-up. Both runs begin once
``/explain`` answers (the explainer processes load at idle priority; their one-time load is not a leak). Results go to
``bench/results/``: ``serving.json``, ``serving.md`` (table, the targets met or not, the load average) and
``serving.png``. A server that refuses the benchmark's request or answers errors under load fails the run (exit 1,
named in the report): no ratio is computed against it.

Environment: ``BENCH_DURATION`` (seconds per run, default 10), ``BENCH_REPEATS`` (runs per point, median kept,
default 3), ``BENCH_WARMUP`` (default 3), ``BENCH_RSS_DURATION`` (default 120), ``BENCH_OVERLOAD_DURATION`` (default
120), ``BENCH_SERVERS`` (comma-separated subset of server keys). ``--quick`` is a short smoke run (one 2 s run per
point, 20 s memory run, 10 s overload) that writes ``serving-quick.*``. Every load run is bounded by its duration;
every server is stopped (its process group) in a ``finally``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
import typing as t
from pathlib import Path

import grpc
import psutil
import requests
from google.protobuf import descriptor_pb2, json_format
from tritonclient.grpc import model_config_pb2
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from rollout.local import stop_process_tree
from service.names import DEMO_MODEL_NAME as MODEL_NAME
from service.names import TELEMETRY_OFF, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD = REPO_ROOT / "build" / "bench"
RESULTS = REPO_ROOT / "bench" / "results"
MLSERVER_VENV = REPO_ROOT / "build" / "venv-mlserver"
MLSERVER_REQUIREMENTS = REPO_ROOT / "bench" / "requirements-mlserver.txt"
KSERVE_VENV = REPO_ROOT / "build" / "venv-kserve"
KSERVE_REQUIREMENTS = REPO_ROOT / "bench" / "requirements-kserve.txt"
MODEL_URI = f"models:/{MODEL_NAME}@champion"
CONCURRENCIES = (1, 8, 64)
READY_TIMEOUT_SECONDS = 180
GHZ = REPO_ROOT / "build" / "bin" / "ghz"  # `make bench` builds it (GHZ_VERSION in the Makefile)
VEGETA = REPO_ROOT / "build" / "bin" / "vegeta"  # open-loop load for the overload point (VEGETA_VERSION in the Makefile)
MODEL_INFER = "inference.GRPCInferenceService.ModelInfer"
ROW = {
    "tenure": 12.0,
    "monthly_charges": 70.35,
    "total_charges": 844.2,
    "contract_type": "Month-to-month",
    "payment_method": "Electronic check",
}

# The targets (issue #27), as ratios within one run: each protocol of ours at c=64 against each anchor.
OUR_PROTOCOLS = ("mlserve_predict", "mlserve_invocations", "mlserve_oip", "mlserve_grpc")
TARGET_RATIOS = (("mlflow", 4.0), ("mlserver", 2.0), ("kserve", 2.0), ("reference", 2.0))
TARGET_P99_OF_MLFLOW = 1 / 3  # /predict's p99 at c=64 against mlflow's
TARGET_SHED_MS = 100.0  # every request beyond capacity answered 503 + Retry-After within this
TARGET_OVERLOAD_P99_FACTOR = 2.0  # accepted requests' p99 under 2x overload against the c=64 p99 without it
TARGET_RSS_GROWTH_PERCENT = 5.0

WRK_SCRIPT = r"""
local body_file = io.open(os.getenv("BENCH_BODY_FILE"), "rb")
wrk.method = "POST"
wrk.body = body_file:read("*a")
body_file:close()
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, '
    .. '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


# ---------------------------------------------------------------- what is measured


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One thing to load: a server's URL path and the 1-row JSON body it takes."""

    key: str
    label: str
    path: str
    body: dict[str, t.Any]
    # Set for a gRPC endpoint: its address (HOST:PORT); ``body`` is then a ModelInferRequest in protobuf JSON.
    grpc_address: str | None = None


@dataclasses.dataclass
class ServerSpec:
    """How to start one server and where it says it is ready."""

    key: str
    label: str
    command: t.Callable[[int], list[str]]
    ready_path: str
    endpoints: list[Endpoint]
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    prepare: t.Callable[[], str | None] | None = None  # returns a reason to skip, or None


@dataclasses.dataclass
class Point:
    """One wrk run against one endpoint at one concurrency."""

    endpoint: str
    label: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    non_2xx: int
    socket_errors: int
    requests: int
    cold_start_s: float | None
    rss_mb: float | None


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += process.memory_info().rss
    return total


# ---------------------------------------------------------------- servers


@dataclasses.dataclass(frozen=True)
class Startup:
    """A server's cold start: seconds from its command to the ready answer, and to its first child process (the
    first worker of a server that starts workers; None for one that does not), which splits the time between the
    parent's own start-up and the worker's."""

    ready_s: float
    first_child_s: float | None


@contextlib.contextmanager
def running(spec: ServerSpec, log_dir: Path) -> t.Iterator[tuple[str, subprocess.Popen, Startup]]:
    """Start ``spec`` on a free port in its own process group; yield (base URL, process, its start-up)."""
    port = free_port()
    log_path = log_dir / f"{spec.key}.log"
    # The interpreter's bin folder first: `mlflow models serve` starts `uvicorn` by name.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, **TELEMETRY_OFF, "OMP_NUM_THREADS": "1", "PATH": path, **spec.env}
    with open(log_path, "wb") as log_file:
        started, started_wall = time.monotonic(), time.time()
        process = subprocess.Popen(
            spec.command(port), cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        ready_s = wait_ready(url + spec.ready_path, process, started, log_path)
        yield url, process, Startup(ready_s, first_child_s(process, started_wall))
    finally:
        stop_process_tree(process, grace_seconds=20)


def first_child_s(process: subprocess.Popen, started_wall: float) -> float | None:
    """Seconds from ``started_wall`` to the creation of the earliest child still running under ``process``: its first
    worker. Behind a front proxy (``--front-proxy``) ``process`` supervises HAProxy and the server, so the first
    worker is the earliest child of that server."""
    try:
        top = psutil.Process(process.pid)
        direct = top.children()
        proxied = [child for child in direct if child.name() != "haproxy"]
        server = proxied[0] if len(proxied) == 1 and len(proxied) < len(direct) else top
        children = server.children(recursive=True)
        return round(min(child.create_time() for child in children) - started_wall, 2) if children else None
    except psutil.NoSuchProcess:
        return None


def wait_ready(ready_url: str, process: subprocess.Popen, started: float, log_path: Path) -> float:
    session = requests.Session()
    while time.monotonic() - started < READY_TIMEOUT_SECONDS:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before ready; see {log_path}")
        with contextlib.suppress(requests.RequestException):
            if session.get(ready_url, timeout=1).status_code == 200:
                return time.monotonic() - started
        time.sleep(0.02)
    raise RuntimeError(f"not ready after {READY_TIMEOUT_SECONDS}s; see {log_path}")


# ---------------------------------------------------------------- load


def run_wrk(url: str, body: dict, concurrency: int, duration_s: float, workdir: Path) -> dict[str, int]:
    """One bounded ``wrk`` run; returns the counters its Lua ``done`` hook prints."""
    body_file = workdir / "body.json"
    body_file.write_text(json.dumps(body))
    script = workdir / "post.lua"
    script.write_text(WRK_SCRIPT)
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration_s))}s", "--timeout", "10s",
               "-s", str(script), url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 60,
                            env={**os.environ, "BENCH_BODY_FILE": str(body_file)})
    for line in result.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line.removeprefix("BENCH_JSON "))
    raise RuntimeError(f"wrk printed no summary (exit {result.returncode}): {result.stdout}{result.stderr}")


def protoset(path: Path) -> Path:
    """The compiled OIP v2 descriptors (tritonclient's) as a FileDescriptorSet file, which is what ghz reads."""
    files = descriptor_pb2.FileDescriptorSet()
    for module in (model_config_pb2, pb):
        module.DESCRIPTOR.CopyToProto(files.file.add())
    path.write_bytes(files.SerializeToString())
    return path


def run_ghz(address: str, body: dict, concurrency: int, duration_s: float, workdir: Path) -> dict[str, int]:
    """One bounded ``ghz`` run of ModelInfer; returns the counters ``run_wrk`` returns.

    One connection per concurrent caller, as wrk opens: the server's workers share the port with SO_REUSEPORT,
    so the kernel spreads connections, not calls, over them.
    """
    body_file = workdir / "grpc-body.json"
    body_file.write_text(json.dumps(body))
    command = [str(GHZ), "--insecure", "--protoset", str(protoset(workdir / "oip.protoset")), "--call", MODEL_INFER,
               "--data-file", str(body_file), "-c", str(concurrency), "--connections", str(concurrency),
               "-z", f"{max(1, round(duration_s))}s",
               # Calls still in flight when the time is up are left out, as wrk leaves them out.
               "--duration-stop", "ignore", "--timeout", "10s", "--format", "json", address]
    result = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 60)
    try:
        return ghz_counters(json.loads(result.stdout))
    except (ValueError, KeyError) as err:
        raise RuntimeError(f"ghz printed no report (exit {result.returncode}): {result.stdout[-500:]}"
                           f"{result.stderr[-500:]}") from err


def ghz_counters(report: dict[str, t.Any]) -> dict[str, int]:
    """ghz's JSON report (nanoseconds) as wrk's counters (microseconds); every non-OK status is an error."""
    latencies = {round(entry["percentage"]): entry["latency"] for entry in report.get("latencyDistribution") or []}
    statuses = report.get("statusCodeDistribution") or {}
    return {
        "requests": report["count"], "duration_us": report["total"] // 1000,
        "p50_us": latencies.get(50, 0) // 1000, "p99_us": latencies.get(99, 0) // 1000,
        "max_us": report.get("slowest", 0) // 1000,
        "connect": 0, "read": 0, "write": 0, "timeout": statuses.get("DeadlineExceeded", 0),
        "status": sum(count for code, count in statuses.items() if code not in ("OK", "DeadlineExceeded")),
    }


def run_load(endpoint: Endpoint, url: str, concurrency: int, duration_s: float, workdir: Path) -> dict[str, int]:
    """One bounded load run of ``endpoint`` (wrk for HTTP, ghz for gRPC)."""
    if endpoint.grpc_address:
        return run_ghz(endpoint.grpc_address, endpoint.body, concurrency, duration_s, workdir)
    return run_wrk(url + endpoint.path, endpoint.body, concurrency, duration_s, workdir)


def check_endpoint(endpoint: Endpoint, url: str) -> None:
    """Fail early, with the server's answer, when an endpoint does not accept the benchmark's body."""
    if endpoint.grpc_address:
        with grpc.insecure_channel(endpoint.grpc_address) as channel:
            request = json_format.ParseDict(endpoint.body, pb.ModelInferRequest())
            try:
                pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
            except grpc.RpcError as err:
                raise RuntimeError(f"{endpoint.grpc_address} answered {err.code().name}: {err.details()}") from err
        return
    response = requests.post(url + endpoint.path, json=endpoint.body, timeout=30)
    if response.status_code != 200:
        raise RuntimeError(f"{url + endpoint.path} answered {response.status_code}: {response.text[:300]}")


def measure_point(endpoint: Endpoint, url: str, process: subprocess.Popen, cold_start: float, concurrency: int,
                  duration_s: float, workdir: Path) -> Point:
    raw = run_load(endpoint, url, concurrency, duration_s, workdir)
    socket_errors = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    point = Point(
        endpoint=endpoint.key, label=endpoint.label, concurrency=concurrency,
        rps=raw["requests"] / (raw["duration_us"] / 1e6), p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000, errors=raw["status"] + socket_errors, non_2xx=raw["status"],
        socket_errors=socket_errors, requests=raw["requests"], cold_start_s=round(cold_start, 2),
        rss_mb=tree_rss_bytes(process.pid) / 2**20,
    )
    print(f"    {endpoint.label:<28} c={concurrency:<3} {point.rps:8.0f} rps  p50 {point.p50_ms:7.2f} ms"
          f"  p99 {point.p99_ms:8.2f} ms  errors {point.errors}  rss {point.rss_mb:.0f} MiB", flush=True)
    return point


def measure_all(specs: list[ServerSpec], duration_s: float, warmup_s: float, repeats: int, workdir: Path,
                skipped: dict[str, str], startups: dict[str, Startup], refused: dict[str, str]) -> list[Point]:
    """Start the servers in turn (each cold start timed alone), then load them round by round.

    Each round runs one concurrency against every endpoint back to back, ``repeats`` times, and keeps each
    endpoint's median run: on a shared, noisy machine the servers compared at one concurrency are measured
    close together in time, and one unlucky window does not decide a ratio. Idle servers cost next to
    nothing while another is loaded.
    """
    targets: list[tuple[Endpoint, str, subprocess.Popen, float]] = []
    with contextlib.ExitStack() as stack:
        for spec in specs:
            reason = spec.prepare() if spec.prepare else None
            if reason:
                print(f"  {spec.label}: skipped, {reason}", flush=True)
                skipped[spec.label] = reason
                continue
            try:
                url, process, startup = stack.enter_context(running(spec, workdir))
                startups[spec.label] = startup
                cold_start = startup.ready_s
                child = "" if startup.first_child_s is None else f" (first worker started at {startup.first_child_s:.2f}s)"
                print(f"  {spec.label}: ready in {cold_start:.2f}s{child}", flush=True)
                for endpoint in spec.endpoints:
                    if endpoint.grpc_address and not GHZ.exists():
                        reason = f"ghz is not built ({GHZ.relative_to(REPO_ROOT)}; `make bench` builds it with Go)"
                        print(f"  {endpoint.label}: skipped, {reason}", flush=True)
                        skipped[endpoint.label] = reason
                        continue
                    try:
                        check_endpoint(endpoint, url)
                    except RuntimeError as err:  # a server that is up but answers the benchmark's request wrongly
                        print(f"  {endpoint.label}: REFUSED the benchmark request, {err}", flush=True)
                        refused[endpoint.label] = str(err)
                        continue
                    targets.append((endpoint, url, process, cold_start))
            except (RuntimeError, subprocess.SubprocessError, requests.RequestException) as err:
                print(f"  {spec.label}: failed, {err}", flush=True)
                skipped[spec.label] = str(err).replace(str(REPO_ROOT) + "/", "")
                with contextlib.suppress(OSError):
                    print((workdir / f"{spec.key}.log").read_text(errors="replace")[-2000:], file=sys.stderr)
        for endpoint, url, _, _ in targets:
            run_load(endpoint, url, 8, warmup_s, workdir)
        points = []
        for concurrency in CONCURRENCIES:
            runs: dict[str, list[Point]] = {}
            for _ in range(repeats):
                for endpoint, url, process, cold_start in targets:
                    runs.setdefault(endpoint.key, []).append(
                        measure_point(endpoint, url, process, cold_start, concurrency, duration_s, workdir)
                    )
            points += [median_run(endpoint_runs) for endpoint_runs in runs.values()]
    order = {endpoint.key: index for index, (endpoint, *_) in enumerate(targets)}
    return sorted(points, key=lambda point: (order[point.endpoint], point.concurrency))


def median_run(runs: list[Point]) -> Point:
    """The run with the median throughput (its own latencies with it); errors summed over all runs."""
    chosen = sorted(runs, key=lambda point: point.rps)[(len(runs) - 1) // 2]
    return dataclasses.replace(
        chosen, errors=sum(p.errors for p in runs), non_2xx=sum(p.non_2xx for p in runs),
        socket_errors=sum(p.socket_errors for p in runs), requests=sum(p.requests for p in runs),
    )


def wait_explainers_loaded(url: str, timeout_s: float = 180.0, in_a_row: int = 4) -> bool:
    """Wait until ``/explain`` answers ``in_a_row`` times running (every worker's explainers have loaded the model
    and shap), so that their one-time load, which runs at idle priority and so stretches over a loaded run, is not
    counted as growth; False if that did not happen within ``timeout_s``."""
    deadline, answered = time.monotonic() + timeout_s, 0
    while answered < in_a_row and time.monotonic() < deadline:
        try:
            ok = requests.post(f"{url}/explain", json={"instances": [ROW]}, timeout=60).status_code == 200
        except requests.RequestException:
            ok = False
        answered = answered + 1 if ok else 0
        if not ok:
            time.sleep(1.0)
    return answered >= in_a_row


@contextlib.contextmanager
def sampling_rss(process: subprocess.Popen) -> t.Iterator[list[tuple[float, int]]]:
    """(seconds since start, bytes) of ``process``'s whole tree, sampled every second while the block runs."""
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        started = time.monotonic()
        while not stop.wait(1.0):
            samples.append((time.monotonic() - started, tree_rss_bytes(process.pid)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield samples
    finally:
        stop.set()
        sampler.join(timeout=5)


def rss_growth(samples: list[tuple[float, int]], warmup_s: float) -> tuple[float, float] | None:
    """(baseline, final) bytes: medians of the first and the last few samples after ``warmup_s``; None with too few."""
    after_warmup = [rss for at, rss in samples if at >= warmup_s]
    if len(after_warmup) < 4:
        return None
    window = max(1, min(5, len(after_warmup) // 4))
    return statistics.median(after_warmup[:window]), statistics.median(after_warmup[-window:])


def measure_rss_flatness(spec: ServerSpec, duration_s: float, workdir: Path) -> dict[str, t.Any]:
    """Load our service for ``duration_s`` at concurrency 8; RSS growth from the end of warm-up to the end."""
    endpoint = spec.endpoints[0]
    warmup_s = max(5.0, duration_s * 0.2)
    with running(spec, workdir) as (url, process, _):
        explainers_loaded = wait_explainers_loaded(url)
        with sampling_rss(process) as samples:
            raw = run_wrk(url + endpoint.path, endpoint.body, 8, duration_s, workdir)
    measured = rss_growth(samples, warmup_s)
    if measured is None:
        raise RuntimeError(f"{len(samples)} RSS samples in a {duration_s:g} s run: too short to measure growth")
    baseline, final = measured
    return {
        "endpoint": endpoint.label,
        "duration_s": duration_s,
        "warmup_s": warmup_s,
        "explainers_loaded": explainers_loaded,
        "requests": raw["requests"],
        "errors": raw["status"] + raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
        "baseline_mb": baseline / 2**20,
        "final_mb": final / 2**20,
        "peak_mb": max(rss for _, rss in samples) / 2**20,
        "growth_percent": 100 * (final - baseline) / baseline,
        "samples": [(round(at, 1), round(rss / 2**20, 1)) for at, rss in samples],
    }


def run_vegeta(url: str, body: dict, rate: float, duration_s: float, workdir: Path) -> t.Iterator[dict[str, t.Any]]:
    """An open-loop run (requests start on schedule, answered or not: what overload is) with ``vegeta``; yields
    each result as ``vegeta encode`` writes it (``code``, ``latency`` in ns, ``headers``, ``error``)."""
    body_file = workdir / "overload-body.json"
    body_file.write_text(json.dumps(body))
    targets = workdir / "overload.targets"
    targets.write_text(f"POST {url}\nContent-Type: application/json\n@{body_file}\n")
    results = workdir / "overload.bin"
    subprocess.run([str(VEGETA), "attack", f"-rate={max(1, round(rate))}/s", f"-duration={max(1, round(duration_s))}s",
                    "-timeout=10s", "-max-workers=4096", f"-targets={targets}", f"-output={results}"],
                   check=True, timeout=duration_s + 60, capture_output=True)
    encoded = subprocess.Popen([str(VEGETA), "encode", "--to", "json", str(results)], stdout=subprocess.PIPE,
                               text=True)
    try:
        for line in encoded.stdout:
            yield json.loads(line)
    finally:
        encoded.wait(timeout=60)


def overload_summary(results: t.Iterable[dict[str, t.Any]]) -> dict[str, t.Any]:
    """What a server answered at 2x its capacity: accepted (2xx) and shed (503) counts and latencies, 503s without
    ``Retry-After``, and anything else (other statuses, timeouts, connection errors)."""
    accepted: list[float] = []
    shed: list[float] = []
    without_retry_after = other = 0
    for result in results:
        latency_ms = result["latency"] / 1e6
        if 200 <= result["code"] < 300:
            accepted.append(latency_ms)
        elif result["code"] == 503:
            shed.append(latency_ms)
            headers = {name.lower() for name in (result.get("headers") or {})}
            without_retry_after += "retry-after" not in headers
        else:
            other += 1
    accepted.sort()
    shed.sort()
    return {
        "requests": len(accepted) + len(shed) + other, "accepted": len(accepted), "shed": len(shed), "other": other,
        "shed_without_retry_after": without_retry_after,
        "accepted_p50_ms": round(percentile(accepted, 50), 2), "accepted_p99_ms": round(percentile(accepted, 99), 2),
        "shed_p50_ms": round(percentile(shed, 50), 2), "shed_p99_ms": round(percentile(shed, 99), 2),
        "shed_max_ms": round(shed[-1], 2) if shed else None,
        "shed_over_target": sum(ms > TARGET_SHED_MS for ms in shed),
    }


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q / 100))]


def measure_overload(spec: ServerSpec, rate: float, duration_s: float, workdir: Path) -> dict[str, t.Any]:
    """Our service's first endpoint driven open-loop at ``rate`` (twice its c=64 throughput) for ``duration_s``,
    sampling its RSS; what it answered (``overload_summary``) and its RSS growth after the first fifth."""
    endpoint = spec.endpoints[0]
    with running(spec, workdir) as (url, process, _):
        run_wrk(url + endpoint.path, endpoint.body, 8, 3, workdir)  # warm, as the rounds were
        explainers_loaded = wait_explainers_loaded(url)
        with sampling_rss(process) as samples:
            summary = overload_summary(run_vegeta(url + endpoint.path, endpoint.body, rate, duration_s, workdir))
    measured = rss_growth(samples, duration_s / 5)
    growth = None if measured is None else 100 * (measured[1] - measured[0]) / measured[0]
    return {"endpoint": endpoint.label, "rate_rps": round(rate, 1), "duration_s": duration_s,
            "explainers_loaded": explainers_loaded, **summary,
            "rss_growth_percent": growth, "peak_mb": round(max((rss for _, rss in samples), default=0) / 2**20, 1)}


# ---------------------------------------------------------------- the servers under test


def prepare_registry(home: Path) -> str:
    """A private registry with the demo models; returns its tracking URI."""
    os.environ.update(TELEMETRY_OFF)
    home.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
    from service.train import ensure_demo_models

    print(f"registry {tracking_uri}: {ensure_demo_models(tracking_uri)}", flush=True)
    return tracking_uri


def time_model_alone(tracking_uri: str, calls: int = 2000) -> dict[str, float]:
    """The model's own cost, the floor under every server's latency: ``predict_proba`` of the 1-row DataFrame of
    ``ROW``, in this process, ``calls`` times after a warm-up; p50 and p99 in milliseconds."""
    import mlflow.sklearn
    import pandas as pd

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    model = mlflow.sklearn.load_model(MODEL_URI)
    frame = pd.DataFrame([ROW])
    for _ in range(200):
        model.predict_proba(frame)
    durations = []
    for _ in range(calls):
        began = time.perf_counter()
        model.predict_proba(frame)
        durations.append((time.perf_counter() - began) * 1000)
    cuts = statistics.quantiles(durations, n=100)
    return {"calls": calls, "p50_ms": round(cuts[49], 3), "p99_ms": round(cuts[98], 3)}


def install_venv(venv: Path, requirements: Path, what: str) -> str | None:
    """A virtualenv of its own with ``requirements`` (exact pins) installed; a reason if that is impossible."""
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if not stamp.exists() or stamp.read_text() != requirements.read_text():
        print(f"installing {what} into {venv} (pins: {requirements.name})", flush=True)
        try:
            if not python.exists():
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(requirements)],
                           check=True, timeout=900)
        except (subprocess.SubprocessError, OSError) as err:
            return f"cannot install {what}: {err}"
        stamp.write_text(requirements.read_text())
    return None


def export_joblib(tracking_uri: str, model_dir: Path) -> None:
    """The champion's scikit-learn pipeline as ``model_dir/model.joblib``, what the anchors' runtimes load."""
    import joblib
    import mlflow
    import mlflow.sklearn

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    model_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(mlflow.sklearn.load_model(MODEL_URI), model_dir / "model.joblib")


def prepare_kserve(tracking_uri: str, model_dir: Path) -> str | None:
    """Own virtualenv with pinned KServe, and the champion exported with joblib; a reason if impossible."""
    if reason := install_venv(KSERVE_VENV, KSERVE_REQUIREMENTS, "KServe"):
        return reason
    export_joblib(tracking_uri, model_dir)
    return None


def prepare_mlserver(tracking_uri: str, model_dir: Path) -> str | None:
    """Own virtualenv with pinned MLServer, and the champion exported with joblib; a reason if impossible."""
    if reason := install_venv(MLSERVER_VENV, MLSERVER_REQUIREMENTS, "MLServer"):
        return reason
    export_joblib(tracking_uri, model_dir)
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": "churn",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "1"},
    }))
    return None


def mlserver_command(root: Path, port: int, workers: int) -> list[str]:
    """``mlserver start`` on ``root`` (settings.json plus one folder per model), listening on ``port``."""
    (root / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
        "parallel_workers": workers, "debug": False,
        # MLServer's multiprocess metrics default to ./.metrics in its working directory (our checkout).
        "metrics_dir": str(root / ".metrics"),
    }))
    return [str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(root)]


def mlserver_body() -> dict[str, t.Any]:
    """An OIP v2 request for one row, decoded by MLServer's pandas codec, asking for predict_proba."""
    return {
        "parameters": {"content_type": "pd"},
        "inputs": [
            {"name": name, "shape": [1], "datatype": "BYTES" if isinstance(value, str) else "FP64", "data": [value]}
            for name, value in ROW.items()
        ],
        "outputs": [{"name": "predict_proba"}],
    }


def oip_infer_body() -> dict[str, t.Any]:
    """The benchmark's row as an OIP v2 REST infer body: one 1-row tensor per column."""
    return {"inputs": [
        {"name": name, "shape": [1], "datatype": "BYTES" if isinstance(value, str) else "FP64", "data": [value]}
        for name, value in ROW.items()
    ]}


def model_infer_body() -> dict[str, t.Any]:
    """The benchmark's row as a ModelInferRequest (protobuf JSON): one typed tensor per column."""
    return {
        "model_name": MODEL_NAME,
        "inputs": [
            {"name": name, "datatype": "BYTES" if isinstance(value, str) else "FP64", "shape": ["1"],
             "contents": {"bytes_contents": [base64.b64encode(value.encode()).decode()]} if isinstance(value, str)
             else {"fp64_contents": [value]}}
            for name, value in ROW.items()
        ],
    }


def server_specs(tracking_uri: str, workers: int) -> list[ServerSpec]:
    registry_env = {"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"}
    mlserver_root = BUILD / "mlserver"
    kserve_root = BUILD / "kserve"
    rows = {"instances": [ROW]}
    grpc_port = free_port()
    return [
        ServerSpec(
            "mlserve", "mlserve (BentoML)",
            lambda port: [sys.executable, "-m", "service", "serve", "--port", str(port), "--workers", str(workers),
                          "--grpc-port", str(grpc_port), "--front-proxy"],
            "/readyz",
            [Endpoint("mlserve_predict", "mlserve /predict", "/predict", rows),
             Endpoint("mlserve_invocations", "mlserve /invocations", "/invocations", {"dataframe_records": [ROW]}),
             Endpoint("mlserve_oip", "mlserve OIP REST infer", f"/v2/models/{MODEL_NAME}/infer", oip_infer_body()),
             Endpoint("mlserve_grpc", "mlserve gRPC ModelInfer", MODEL_INFER, model_infer_body(),
                      grpc_address=f"127.0.0.1:{grpc_port}")],
            env=registry_env,
        ),
        ServerSpec(
            "mlflow", "mlflow models serve",
            lambda port: [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", MODEL_URI,
                          "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", str(workers)],
            "/ping",
            [Endpoint("mlflow", "mlflow models serve", "/invocations", {"dataframe_records": [ROW]})],
            env=registry_env,
        ),
        ServerSpec(
            "mlserver", "MLServer (sklearn runtime)",
            lambda port: mlserver_command(mlserver_root, port, workers),
            "/v2/health/ready",
            [Endpoint("mlserver", "MLServer (sklearn)", "/v2/models/churn/infer", mlserver_body())],
            prepare=lambda: prepare_mlserver(tracking_uri, mlserver_root / "churn"),
        ),
        ServerSpec(
            "kserve", "KServe (sklearn Model)",
            lambda port: [str(KSERVE_VENV / "bin" / "python"), str(REPO_ROOT / "bench" / "kserve_server.py"),
                          "--model_dir", str(kserve_root), "--model_name", "churn", "--http_port", str(port),
                          "--grpc_port", str(free_port()), "--workers", str(workers)],
            "/v1/models/churn",
            [Endpoint("kserve", "KServe (sklearn Model)", "/v1/models/churn:predict", rows)],
            prepare=lambda: prepare_kserve(tracking_uri, kserve_root),
        ),
        ServerSpec(
            "reference", "reference (uvicorn+Starlette)",
            lambda port: [sys.executable, "-m", "bench.reference_server", "--port", str(port),
                          "--model-uri", MODEL_URI],
            "/ping",
            [Endpoint("reference", "reference (bare, 1 proc)", "/predict", rows)],
            env=registry_env,
        ),
    ]


# ---------------------------------------------------------------- report


def evaluate_targets(points: list[Point], rss: dict[str, t.Any] | None, overload: dict[str, t.Any] | None = None,
                     startups: dict[str, Startup] | None = None) -> list[dict[str, t.Any]]:
    """The targets, each with the measured value and whether it is met (None: not measured in this run)."""
    at = {(p.endpoint, p.concurrency): p for p in points}
    targets = []

    def add(name: str, value: float | None, goal: str, met: bool | None) -> None:
        targets.append({"target": name, "measured": value, "goal": goal, "met": met})

    for ours in OUR_PROTOCOLS:
        if (ours, 64) not in at:
            continue
        mine = at[(ours, 64)]
        for other, ratio in TARGET_RATIOS:
            if (other, 64) in at:
                anchor = at[(other, 64)]
                if anchor.errors or mine.errors:
                    add(f"c=64 throughput, {mine.label} / {anchor.label}", None, f">= {ratio:g}x (not computed: "
                        "errors under load)", None)
                    continue
                measured = mine.rps / anchor.rps
                add(f"c=64 throughput, {mine.label} / {anchor.label}", round(measured, 2), f">= {ratio:g}x",
                    measured >= ratio)
    if ("mlserve_predict", 64) in at and ("mlflow", 64) in at:
        ours_p99, mlflow_p99 = at[("mlserve_predict", 64)].p99_ms, at[("mlflow", 64)].p99_ms
        add(f"p99 at c=64, mlserve /predict / mlflow's ({ours_p99:.1f} / {mlflow_p99:.1f} ms)",
            round(ours_p99 / mlflow_p99, 2), f"<= {TARGET_P99_OF_MLFLOW:.2f}", ours_p99 <= TARGET_P99_OF_MLFLOW * mlflow_p99)
    errors = sum(p.errors for p in points)
    add("errors, every server (all points)", errors, "0", errors == 0)
    if overload:
        clean = overload["other"] == 0 and overload["shed_without_retry_after"] == 0
        shed_ms = overload["shed_p99_ms"]
        add(f"2x overload: beyond capacity answered 503 + Retry-After, shed p99 (ms; {overload['shed']} shed, "
            f"{overload['shed_without_retry_after']} without Retry-After, {overload['other']} other failures)",
            shed_ms, f"<= {TARGET_SHED_MS:g}", clean and (overload["shed"] == 0 or shed_ms <= TARGET_SHED_MS))
        if overload.get("baseline_p99_ms"):
            factor = overload["accepted_p99_ms"] / overload["baseline_p99_ms"]
            add(f"2x overload: accepted p99 / c=64 p99 without overload ({overload['accepted_p99_ms']:.1f} / "
                f"{overload['baseline_p99_ms']:.1f} ms)", round(factor, 2), f"<= {TARGET_OVERLOAD_P99_FACTOR:g}",
                factor <= TARGET_OVERLOAD_P99_FACTOR)
        if overload.get("rss_growth_percent") is not None:
            growth = overload["rss_growth_percent"]
            add("2x overload: RSS growth (%)", round(growth, 2), f"< {TARGET_RSS_GROWTH_PERCENT:g}",
                growth < TARGET_RSS_GROWTH_PERCENT)
    if rss:
        add(f"RSS growth after warm-up over {rss['duration_s']:g}s at c=8 (%)", round(rss["growth_percent"], 2),
            f"< {TARGET_RSS_GROWTH_PERCENT:g}", rss["growth_percent"] < TARGET_RSS_GROWTH_PERCENT)
    if startups:
        ours = {label: startup for label, startup in startups.items() if label.startswith("mlserve")}
        others = {label: startup for label, startup in startups.items() if label not in ours}
        if ours and others:
            mine = min(startup.ready_s for startup in ours.values())
            fastest, their = min(((startup.ready_s, label) for label, startup in others.items()))
            add(f"cold start to ready, mlserve (s) against the fastest other ({their}, {fastest:.2f} s)",
                round(mine, 2), f"< {fastest:.2f}", mine < fastest)
    return targets


def failures(points: list[Point], refused: dict[str, str]) -> list[str]:
    """Why this run cannot be trusted: any server answering errors under load, or refusing the benchmark's request
    before it. No ratio is computed against a failing server (its rows are marked)."""
    problems = [f"{label} refused the benchmark request: {reason}" for label, reason in refused.items()]
    problems += [f"{p.label} at c={p.concurrency}: {p.errors} errors ({p.non_2xx} non-2xx, {p.socket_errors} socket)"
                 for p in points if p.errors]
    return problems


def explainer_note(run: dict[str, t.Any]) -> str:
    """How the RSS of a memory or overload run is to be read: from after the explainers loaded, or not."""
    if run.get("explainers_loaded", True):
        return " (measured once /explain answered, so after the explainer processes had loaded)"
    return " (the explainer processes had not loaded within 180 s: their loading is counted as growth)"


def markdown_report(meta: dict[str, t.Any], points: list[Point], targets: list[dict[str, t.Any]],
                    rss: dict[str, t.Any] | None, skipped: dict[str, str], startups: dict[str, Startup] | None = None,
                    model_alone: dict[str, float] | None = None, overload: dict[str, t.Any] | None = None,
                    problems: list[str] | None = None) -> str:
    lines = [
        "# Serving benchmark",
        "",
        f"{meta['date']} on {meta['machine']}; wrk, 1 thread, 1-row JSON POST (gRPC: ghz, the same row as a "
        f"ModelInferRequest, one connection per caller), {meta['duration_s']:g} s per run "
        f"after a {meta['warmup_s']:g} s warm-up; per concurrency, {meta.get('repeats', 1)} rounds over all servers, "
        "each row the median-throughput run of its point (errors summed over all runs); mlserve, mlflow, "
        f"MLServer and KServe with {meta['workers']} workers, the reference server with one process. "
        + (f"Load average when the run began: {meta['load_before']}, when it ended: {meta['load_after']} "
           "(other work on the machine shares its cores). " if meta.get("load_before") else "")
        + "Reproduce: `make bench`.",
        "",
        "| server | c | rps | p50 ms | p99 ms | errors | cold start s | RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        lines.append(f"| {p.label} | {p.concurrency} | {p.rps:.0f} | {p.p50_ms:.2f} | {p.p99_ms:.2f} | {p.errors} | "
                     f"{p.cold_start_s:.2f} | {p.rss_mb:.0f} |")
    for key, reason in skipped.items():
        lines.append(f"| {key} | | skipped: {reason} | | | | | |")
    lines += ["", "errors = non-2xx answers + socket errors (connect, read, write, timeout). RSS: the server's whole "
              "process tree (psutil) right after that point's run.", ""]
    if overload:
        lines += [
            f"2x overload: {overload['endpoint']} driven open-loop (vegeta) at {overload['rate_rps']:.0f} requests/s, "
            f"twice its c=64 throughput, for {overload['duration_s']:g} s: {overload['requests']} requests, "
            f"{overload['accepted']} accepted (p50 {overload['accepted_p50_ms']} ms, p99 {overload['accepted_p99_ms']} "
            f"ms), {overload['shed']} shed with 503 (p50 {overload['shed_p50_ms']} ms, p99 {overload['shed_p99_ms']} "
            f"ms, max {overload['shed_max_ms']} ms; {overload['shed_over_target']} slower than {TARGET_SHED_MS:g} ms; "
            f"{overload['shed_without_retry_after']} without Retry-After), {overload['other']} other failures; "
            f"RSS growth {overload['rss_growth_percent'] if overload['rss_growth_percent'] is None else round(overload['rss_growth_percent'], 2)}%"
            f", peak {overload['peak_mb']} MiB{explainer_note(overload)}.",
            "",
        ]
    if rss:
        lines += [
            f"Memory under load: {rss['endpoint']} at c=8 for {rss['duration_s']:g} s "
            f"({rss['requests']} requests, {rss['errors']} errors): {rss['baseline_mb']:.0f} MiB after a "
            f"{rss['warmup_s']:g} s warm-up, {rss['final_mb']:.0f} MiB at the end "
            f"({rss['growth_percent']:+.2f}%), peak {rss['peak_mb']:.0f} MiB{explainer_note(rss)}.",
            "",
        ]
    if model_alone:
        lines += [
            f"The model alone: `predict_proba` of the same row as a 1-row DataFrame, in-process, "
            f"{model_alone['calls']} calls: p50 {model_alone['p50_ms']:.2f} ms, p99 {model_alone['p99_ms']:.2f} ms. "
            "No server answers faster than that.",
            "",
        ]
    if startups:
        lines += ["Cold start, split at the server's first child process (its first worker): the time before it is the "
                  "parent's own start-up, the rest the worker's.", "",
                  "| server | ready s | first worker started s | worker to ready s |", "|---|---:|---:|---:|"]
        for label, startup in startups.items():
            if startup.first_child_s is None:
                lines.append(f"| {label} | {startup.ready_s:.2f} | (no workers) | |")
            else:
                lines.append(f"| {label} | {startup.ready_s:.2f} | {startup.first_child_s:.2f} | "
                             f"{startup.ready_s - startup.first_child_s:.2f} |")
        lines.append("")
    if problems:
        lines += ["## This run FAILED", "", *[f"- {problem}" for problem in problems], ""]
    lines += ["## Targets", "", "| target | measured | goal | met |", "|---|---:|---:|---|"]
    for target in targets:
        met = {True: "yes", False: "**no**", None: "n/a"}[target["met"]]
        lines.append(f"| {target['target']} | {target['measured']} | {target['goal']} | {met} |")
    lines.append("")
    return "\n".join(lines)


def chart(points: list[Point], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(p.label for p in points))
    figure, (rps_axes, p99_axes) = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / len(CONCURRENCIES)
    for index, concurrency in enumerate(CONCURRENCIES):
        by_label = {p.label: p for p in points if p.concurrency == concurrency}
        xs = [position + index * width for position in range(len(labels))]
        rps_axes.bar(xs, [by_label[label].rps if label in by_label else 0 for label in labels], width,
                     label=f"c={concurrency}")
        p99_axes.bar(xs, [by_label[label].p99_ms if label in by_label else 0 for label in labels], width,
                     label=f"c={concurrency}")
    for axes, title in ((rps_axes, "throughput (requests/s)"), (p99_axes, "p99 latency (ms, log)")):
        axes.set_xticks([position + width for position in range(len(labels))])
        axes.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
        axes.set_title(title)
        axes.legend()
    p99_axes.set_yscale("log")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run; writes serving-quick.*")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench: Debian's wrk is not installed (make setup installs it)", file=sys.stderr)
        return 2
    duration = float(os.environ.get("BENCH_DURATION") or (2 if args.quick else 10))
    warmup = float(os.environ.get("BENCH_WARMUP") or (1 if args.quick else 3))
    rss_duration = float(os.environ.get("BENCH_RSS_DURATION") or (20 if args.quick else 120))
    overload_duration = float(os.environ.get("BENCH_OVERLOAD_DURATION") or (10 if args.quick else 120))
    repeats = int(os.environ.get("BENCH_REPEATS") or (1 if args.quick else 3))
    workers = os.cpu_count() or 1
    chosen = [key for key in (os.environ.get("BENCH_SERVERS") or "").split(",") if key]

    BUILD.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    tracking_uri = prepare_registry(BUILD / "home")
    specs = [spec for spec in server_specs(tracking_uri, workers) if not chosen or spec.key in chosen]
    skipped: dict[str, str] = {}
    workdir = BUILD / "run"  # server logs and wrk scripts; kept for a look after the run
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    model_alone = time_model_alone(tracking_uri)
    print(f"  the model alone, in-process: p50 {model_alone['p50_ms']:.2f} ms, p99 {model_alone['p99_ms']:.2f} ms",
          flush=True)
    startups: dict[str, Startup] = {}
    refused: dict[str, str] = {}
    load_before = " ".join(f"{value:.1f}" for value in os.getloadavg())
    points = measure_all(specs, duration, warmup, repeats, workdir, skipped, startups, refused)
    rss = overload = None
    ours = next((spec for spec in specs if spec.key == "mlserve"), None)
    capacity = next((p.rps for p in points if (p.endpoint, p.concurrency) == ("mlserve_predict", 64)), None)
    if ours and capacity and overload_duration > 0:
        if VEGETA.exists():
            print(f"  2x overload: {ours.endpoints[0].label} open-loop at {2 * capacity:.0f}/s for "
                  f"{overload_duration:g}s", flush=True)
            overload = measure_overload(ours, 2 * capacity, overload_duration, workdir)
            overload["baseline_p99_ms"] = next(p.p99_ms for p in points
                                               if (p.endpoint, p.concurrency) == ("mlserve_predict", 64))
            print(f"    accepted {overload['accepted']} (p99 {overload['accepted_p99_ms']} ms), shed "
                  f"{overload['shed']} (p99 {overload['shed_p99_ms']} ms), other {overload['other']}", flush=True)
        else:
            skipped["2x overload"] = f"vegeta is not built ({VEGETA.relative_to(REPO_ROOT)}; `make bench` builds it)"
    if ours and rss_duration > 0:
        print(f"  memory run: {ours.endpoints[0].label} at c=8 for {rss_duration:g}s", flush=True)
        rss = measure_rss_flatness(ours, rss_duration, workdir)
        print(f"    RSS {rss['baseline_mb']:.0f} -> {rss['final_mb']:.0f} MiB ({rss['growth_percent']:+.2f}%)")

    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
                   f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        "duration_s": duration, "warmup_s": warmup, "repeats": repeats, "workers": workers, "quick": args.quick,
        "load_before": load_before, "load_after": " ".join(f"{value:.1f}" for value in os.getloadavg()),
    }
    targets = evaluate_targets(points, rss, overload, startups)
    problems = failures(points, refused)
    stem = "serving-quick" if args.quick else "serving"
    (RESULTS / f"{stem}.json").write_text(json.dumps({
        "meta": meta, "points": [dataclasses.asdict(p) for p in points], "rss": rss, "overload": overload,
        "targets": targets, "skipped": skipped, "refused": refused, "failures": problems, "model_alone": model_alone,
        "startups": {label: dataclasses.asdict(startup) for label, startup in startups.items()},
    }, indent=2) + "\n")
    report = markdown_report(meta, points, targets, rss, skipped, startups=startups, model_alone=model_alone,
                             overload=overload, problems=problems)
    (RESULTS / f"{stem}.md").write_text(report)
    if points:
        chart(points, RESULTS / f"{stem}.png")
    print(report)
    if problems:
        print("bench: FAILED, servers answered errors; no ratio is computed against them:\n  " + "\n  ".join(problems),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

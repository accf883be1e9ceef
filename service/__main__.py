"""``python -m service serve``: serve a registered MLflow model with ``bentoml serve``.

The demo model (``customer-churn-classifier``) is registered first only when it is the model asked for and the
registry lacks it; a user's registry never receives models it did not ask for.

The registry is consulted once, by ``bentoml serve`` as it imports the service (``service.service``).
Flags: ``--port P`` (default 3000; 0 picks a free port, printed on stderr before the server starts),
``--host`` (default 127.0.0.1), ``--variant champion|challenger`` (default ``MODEL_VARIANT``, else champion), ``--model-uri URI``
(default ``MODEL_URI``, else ``models:/customer-churn-classifier@<variant>``), ``--workers N`` (default 1),
``--grpc-port G`` (default ``MLSERVE_GRPC_PORT``, else no gRPC; 0 picks a free port, printed like the HTTP one): every
worker serves the Open Inference Protocol v2 over gRPC on that port. The registry is
``MLFLOW_TRACKING_URI``, else SQLite in ``MLSERVE_HOME`` (default ``.mlserve/``). Each server gets its own
``BENTOML_HOME`` (``MLSERVE_HOME/servers/<port>``) so that servers on one machine keep separate metrics. The process is replaced by
``bentoml serve``, so its pid is the server's; with ``--front-proxy`` (or ``MLSERVE_FRONT_PROXY=true``) it stays
instead, runs the workers on a loopback port behind HAProxy on ``--host:--port`` (``service.front_proxy``), and
stops both when either stops. Exit status 2 (before serving) when MODEL_URI names no
registered version; non-zero from ``bentoml serve`` when a worker cannot load the model. The version resolved
here is the one every worker serves (``service.loading.RESOLVED_MODEL_ENV``).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# Only light modules: this process is replaced by `bentoml serve`, so whatever it imports is cold-start time lost.
from service.errors import ModelLoadError
from service.names import DEMO_MODEL_NAME, TELEMETRY_OFF, VARIANTS, free_port, mlserve_home
from service.settings import (
    FRONT_PROXY_STATS_PORT_ENV, REGISTER_DEMO_ENV, RESOLVED_MODEL_ENV, TRUE_WORDS, Settings, parse_model_uri,
    tracking_uri_from_env,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICE_TARGET = "service.service:ModelServer"
FRONT_PROXY_ENV = "MLSERVE_FRONT_PROXY"


def port_is_taken(host: str, port: int) -> bool:
    """Whether something listens on ``host:port``, even with SO_REUSEPORT (which our gRPC workers would join)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed connection's TIME_WAIT is no owner
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def serve_command(host: str, port: int) -> list[str]:
    """The ``bentoml serve`` command line for the service in this checkout."""
    return [sys.executable, "-m", "bentoml", "serve", SERVICE_TARGET,
            "--host", host, "--port", str(port), "--working-dir", str(REPO_ROOT)]


def serve_environment(
    model_uri: str, variant: str, workers: int, tracking_uri: str, bentoml_home: Path
) -> dict[str, str]:
    """The environment the server runs with: this one plus the model selection and telemetry off."""
    inherited = {name: value for name, value in os.environ.items() if name != RESOLVED_MODEL_ENV}
    return {
        # A new server resolves its model afresh: an alias may have moved since this environment pinned one.
        **inherited,
        **TELEMETRY_OFF,
        "MODEL_URI": model_uri,
        "MODEL_VARIANT": variant,
        "MLSERVE_WORKERS": str(workers),
        "MLFLOW_TRACKING_URI": tracking_uri,
        # BentoML's container mode: a worker that dies (e.g. the model cannot be loaded) is not respawned
        # and the server exits non-zero, instead of restarting the worker forever.
        "BENTOML_CONTAINERIZED": "true",
        # BentoML keeps its Prometheus multiprocess files under BENTOML_HOME and wipes them at start-up:
        # servers sharing one home (champion and challenger on one machine) would erase each other's metrics.
        "BENTOML_HOME": str(bentoml_home),
    }


def _grpc_port_default() -> int | None:
    raw = os.environ.get("MLSERVE_GRPC_PORT", "")
    return int(raw) if raw.isdigit() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description="mlserve model server")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a registered MLflow model with bentoml serve")
    serve.add_argument("--port", type=int, default=3000, help="port to listen on; 0 picks a free one")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--variant", choices=VARIANTS,
                       default=os.environ.get("MODEL_VARIANT") or "champion",
                       help="variant label (default MODEL_VARIANT, else champion)")
    serve.add_argument("--model-uri", default=os.environ.get("MODEL_URI") or None,
                       help=f"default MODEL_URI, else models:/{DEMO_MODEL_NAME}@VARIANT (the demo)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.add_argument("--grpc-port", type=int, default=_grpc_port_default(),
                       help="serve OIP v2 over gRPC on this port too (default MLSERVE_GRPC_PORT, else none); "
                            "0 picks a free one")
    serve.add_argument("--front-proxy", action=argparse.BooleanOptionalAction,
                       default=os.environ.get(FRONT_PROXY_ENV, "").lower() in TRUE_WORDS,
                       help="put HAProxy in front of the workers, so overload is refused before Python (default "
                            f"{FRONT_PROXY_ENV}, else off; see service/front_proxy.py)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.grpc_port is not None and not 0 <= args.grpc_port <= 65535:
        parser.error(f"--grpc-port {args.grpc_port} is not a port; give 0 to 65535 (0 picks a free one)")
    os.environ.update(TELEMETRY_OFF)
    grpc_port = None
    if args.grpc_port is not None:
        grpc_port = args.grpc_port or free_port(args.host)
        # Every worker binds the gRPC port with SO_REUSEPORT; another server holding it that way would silently
        # get a share of our calls, so a port in use is refused here, before anything starts.
        if port_is_taken(args.host, grpc_port):
            print(f"mlserve: gRPC port {args.host}:{grpc_port} is in use; choose another (--grpc-port 0 picks a free "
                  "one)", file=sys.stderr)
            return 2
        os.environ.update({"MLSERVE_GRPC_PORT": str(grpc_port), "MLSERVE_GRPC_HOST": args.host})


    tracking_uri = tracking_uri_from_env()
    model_uri = args.model_uri or f"models:/{DEMO_MODEL_NAME}@{args.variant}"
    os.environ.update({"MODEL_URI": model_uri, "MODEL_VARIANT": args.variant, "MLFLOW_TRACKING_URI": tracking_uri})
    try:
        Settings.from_env()
        parse_model_uri(model_uri)
    except (ModelLoadError, ValueError) as err:
        print(f"mlserve: {err}", file=sys.stderr)
        return 2
    # No registry look-up here: `bentoml serve` resolves the model once, as it imports the service (exit status 2
    # when MODEL_URI names nothing), and its workers inherit the pinned version. Importing MLflow in this process
    # too cost a second and a half of every cold start.
    os.environ[REGISTER_DEMO_ENV] = "true"
    port = args.port or free_port(args.host)
    grpc = f", gRPC (OIP v2) on {args.host}:{grpc_port}" if grpc_port is not None else ""
    print(f"mlserve: serving {model_uri} as {args.variant} on http://{args.host}:{port}{grpc}", file=sys.stderr,
          flush=True)
    os.chdir(REPO_ROOT)
    bentoml_home = mlserve_home() / "servers" / str(port)
    bentoml_home.mkdir(parents=True, exist_ok=True)
    environment = serve_environment(model_uri, args.variant, args.workers, tracking_uri, bentoml_home)
    if args.front_proxy:
        return serve_behind_proxy(args.host, port, args.workers, environment, bentoml_home)
    command = serve_command(args.host, port)
    os.execve(command[0], command, environment)


def serve_behind_proxy(host: str, port: int, workers: int, environment: dict[str, str], home: Path) -> int:
    """Run the workers on a loopback port with HAProxy on ``host:port`` in front; return when either stops (the
    other is stopped too), with the server's exit status, or the proxy's when it failed first."""
    from service.admission import AdmissionLimits
    from service.front_proxy import FrontProxy, FrontProxyError

    try:
        limits = AdmissionLimits.from_env(environment)
        proxy = FrontProxy(host, port, free_port(), free_port(), workers, limits)
        # The proxy decides what gets in; each worker takes whatever share of it comes its way (the proxy's
        # connections are not spread evenly over the workers), its own limits a safety net above the proxy's.
        environment = {**environment, AdmissionLimits.ENV["max_concurrency"]: str(proxy.max_connections),
                       FRONT_PROXY_STATS_PORT_ENV: str(proxy.stats_port)}
        haproxy = proxy.start(home)
    except (FrontProxyError, ValueError) as err:
        print(f"mlserve: {err}", file=sys.stderr)
        return 2
    print(f"mlserve: HAProxy on {host}:{port} in front of the workers on 127.0.0.1:{proxy.inner_port} "
          f"(its metrics: http://127.0.0.1:{proxy.stats_port}/metrics)", file=sys.stderr, flush=True)
    command = serve_command("127.0.0.1", proxy.inner_port)
    server = subprocess.Popen(command, env=environment)
    return supervise(server, haproxy)


def supervise(server: subprocess.Popen, proxy: subprocess.Popen, grace_s: float = 30.0) -> int:
    """Wait until the server or the proxy exits (or SIGTERM/SIGINT arrives, which is passed on), then stop the
    other; the server's exit status, or the proxy's when the proxy failed while the server was still running."""
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for process in (server, proxy):
            if process.poll() is None:
                process.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    while server.poll() is None and proxy.poll() is None:
        time.sleep(0.2)
    proxy_failed = server.poll() is None and not stopping
    for process in (proxy, server):
        if process.poll() is None:
            process.terminate()
    for process in (proxy, server):
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if proxy_failed:
        print(f"mlserve: HAProxy exited with status {proxy.returncode}; the server was stopped", file=sys.stderr)
        return proxy.returncode or 1
    return server.returncode


if __name__ == "__main__":
    sys.exit(main())

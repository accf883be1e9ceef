"""Fixtures for the model server tests: a private registry, and real `python -m service serve` processes.

The registry (SQLite under a temporary MLSERVE_HOME) is trained once per session. Servers are started once
per session on free loopback ports, waited for on /readyz with a bounded timeout, and stopped at the end by
signalling the process group each one was started in.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from service.__main__ import free_port
from service.names import DEMO_MODEL_NAME as MODEL_NAME
from service.names import TELEMETRY_OFF

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_SECONDS = 120


@dataclasses.dataclass(frozen=True)
class Registry:
    """The session's registry and the versions its aliases pointed at when the servers started."""

    home: Path
    tracking_uri: str
    champion: str
    healthy_challenger: str
    faulty_challenger: str

    def env(self) -> dict[str, str]:
        return {**os.environ, **TELEMETRY_OFF, "MLSERVE_HOME": str(self.home), "MLFLOW_TRACKING_URI": self.tracking_uri}


@dataclasses.dataclass
class Server:
    """A running model server."""

    url: str
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """Champion, a healthy challenger version and a faulty challenger version (the alias ends on the faulty one)."""
    from service.train import register_demo_models

    home = tmp_path_factory.mktemp("mlserve-home")
    tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
    healthy = register_demo_models(tracking_uri, faulty_challenger=False)
    faulty = register_demo_models(tracking_uri, faulty_challenger=True)
    return Registry(home, tracking_uri, healthy["champion"], healthy["challenger"], faulty["challenger"])


def start_server(registry: Registry, log_path: Path, *args: str, env: dict[str, str] | None = None) -> Server:
    """Start `python -m service serve` on a free port (``env`` added to the registry's) and wait for /readyz."""
    port = free_port()
    log_file = open(log_path, "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(port), *args],
        cwd=REPO_ROOT, env={**registry.env(), **(env or {})}, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log_file.close()
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before ready:\n{server.log_tail()}")
        try:
            if requests.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.5)
    stop_server(server)
    raise RuntimeError(f"server not ready after {READY_TIMEOUT_SECONDS}s:\n{server.log_tail()}")


def stop_server(server: Server) -> None:
    """Stop the server's whole process group (the server and the workers it started)."""
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=10)


@pytest.fixture(scope="session")
def champion_server(registry: Registry, tmp_path_factory: pytest.TempPathFactory):
    """The champion, served by alias the way production selects it."""
    server = start_server(registry, tmp_path_factory.mktemp("logs") / "champion.log", "--variant", "champion")
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def faulty_challenger_server(registry: Registry, tmp_path_factory: pytest.TempPathFactory):
    """The faulty challenger version, labelled as the challenger variant."""
    server = start_server(
        registry, tmp_path_factory.mktemp("logs") / "challenger.log",
        "--variant", "challenger", "--model-uri", f"models:/{MODEL_NAME}/{registry.faulty_challenger}",
    )
    yield server
    stop_server(server)

"""The serve CLI's pure pieces: the bentoml command line and the environment a server runs with."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from service.__main__ import REPO_ROOT, SERVICE_TARGET, free_port, serve_command, serve_environment
from service.settings import RESOLVED_MODEL_ENV


def test_serve_command_runs_the_checkout_service_on_the_given_address():
    command = serve_command("127.0.0.1", 3000)

    assert command[1:4] == ["-m", "bentoml", "serve"]
    assert SERVICE_TARGET == "service.service:ModelServer" and SERVICE_TARGET in command
    assert command[command.index("--host") + 1] == "127.0.0.1" and command[command.index("--port") + 1] == "3000"
    assert command[command.index("--working-dir") + 1] == str(REPO_ROOT)


def test_serve_environment_selects_the_model_and_isolates_the_server(tmp_path: Path, monkeypatch):
    monkeypatch.setenv(RESOLVED_MODEL_ENV, "sqlite:///x.db models:/m/3\n{}")
    env = serve_environment("models:/m/3", "challenger", 2, "sqlite:///x.db", tmp_path / "servers" / "3000")

    assert (env["MODEL_URI"], env["MODEL_VARIANT"], env["MLSERVE_WORKERS"]) == ("models:/m/3", "challenger", "2")
    assert env["MLFLOW_TRACKING_URI"] == "sqlite:///x.db"
    assert env["BENTOML_HOME"] == str(tmp_path / "servers" / "3000")
    assert RESOLVED_MODEL_ENV not in env, "a new server resolves its model afresh (an alias may have moved)"
    assert env["BENTOML_CONTAINERIZED"] == "true", "a worker that cannot load the model must stop the server"
    assert all(env[name] == "true" for name in ("BENTOML_DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"))


def test_free_port_is_a_usable_port_number():
    assert 1024 <= free_port() <= 65535


def test_the_cli_imports_nothing_heavy_before_handing_over_to_bentoml():
    """Everything `python -m service serve` imports is cold-start time lost: the process is replaced by bentoml."""
    probe = ("import sys, service.__main__; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'pandas', 'numpy', 'sklearn', 'mlflow', "
             "'bentoml', 'pydantic'}))")
    imported = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()

    assert imported == "[]"

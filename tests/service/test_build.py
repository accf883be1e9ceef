"""`bentoml build -f service/bentofile.yaml .` works from a clean checkout, without Docker and without a model in the store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.names import TELEMETRY_OFF

from .conftest import REPO_ROOT

pytestmark = pytest.mark.integration


def test_bentoml_build_and_export_give_a_docker_build_context(tmp_path):
    env = {**os.environ, **TELEMETRY_OFF, "BENTOML_HOME": str(tmp_path / "bentoml")}
    bentoml = [sys.executable, "-m", "bentoml"]

    built = subprocess.run([*bentoml, "build", "-f", "service/bentofile.yaml", ".", "--output", "tag"], cwd=REPO_ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    assert tag.startswith("model_server:")

    archive = tmp_path / "bento.tar"
    exported = subprocess.run([*bentoml, "export", tag, str(archive)], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
    assert exported.returncode == 0, exported.stderr
    context = tmp_path / "context"
    context.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(context)], check=True)

    dockerfile = (context / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM python:3.11" in dockerfile and "BENTOML_CONTAINERIZED=true" in dockerfile
    requirements = (context / "env" / "python" / "requirements.txt").read_text().split()
    pins = [line.split("#")[0].strip() for line in (REPO_ROOT / "service" / "requirements.txt").read_text().splitlines()]
    assert {pin for pin in pins if pin} | {"bentoml==1.4.39"} <= set(requirements), "the image installs service/requirements.txt"
    assert (context / "src" / "service" / "requirements.txt").is_file(), "the server reads its pins in the image too"
    sources = {path.name for path in (context / "src" / "service").glob("*.py")}
    assert sources == {path.name for path in (REPO_ROOT / "service").glob("*.py")}, "the whole service package"
    assert (context / "src" / "service" / "service.py").read_text() == (REPO_ROOT / "service" / "service.py").read_text()
    assert not (context / "src" / "tests").exists(), "nothing but the service package"
    assert not any(Path(context, "models").glob("*")), "the bento carries no model; it loads from MODEL_URI"

"""`python -m infra.render --stack prod` on a fresh clone: no remote registry is reachable, so the README's command
renders with `--local-registry`, which registers the demo models in an empty MLSERVE_HOME first; without the flag an
unreachable registry still exits 3 with the reason, and the reason names the flag."""

from __future__ import annotations

import os
import subprocess
import sys

from infra.image_context import REGISTRY_ENV

from .conftest import PROJECT_DIR


def render_as_a_fresh_clone(home, *args: str) -> subprocess.CompletedProcess:
    """The render CLI with an empty MLSERVE_HOME and no registry override (what a new user's shell has)."""
    env = {name: value for name, value in os.environ.items() if name not in (REGISTRY_ENV, "MLFLOW_TRACKING_URI")}
    env["MLSERVE_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "infra.render", "--stack", "prod", *args], cwd=PROJECT_DIR, env=env,
                          capture_output=True, text=True, timeout=600)


def test_prod_renders_from_the_local_demo_registry_on_a_fresh_clone(tmp_path):
    result = render_as_a_fresh_clone(tmp_path / "home", "--out", str(tmp_path / "prod"), "--local-registry")

    assert result.returncode == 0, result.stderr
    assert "registering the demo models" in result.stderr
    assert (tmp_path / "home" / "mlflow.db").exists()
    assert (tmp_path / "prod" / "seldondeployment-churn-model.yaml").exists()


def test_an_unreachable_registry_still_exits_3_and_names_the_flag(tmp_path):
    result = render_as_a_fresh_clone(tmp_path / "home", "--out", str(tmp_path / "prod"))

    assert result.returncode == 3, result.stderr
    assert "mlflow.internal.example.com" in result.stderr and "--local-registry" in result.stderr
    assert not (tmp_path / "home").exists(), "nothing is registered without the flag"

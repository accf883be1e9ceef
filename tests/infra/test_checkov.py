"""checkov's Kubernetes checks on both rendered stacks: zero failures (CKV_K8S_40 included: the model container
runs as uid 10001, the image's own user). checkov runs from its own virtualenv (`build/venv-checkov`, made by
`scripts/setup.sh` from scripts/requirements-checkov.txt), offline (`--skip-download`)."""

from __future__ import annotations

import json
import subprocess

import pytest

from infra.config import PROJECT_DIR
from tests.infra.conftest import run_render

CHECKOV = PROJECT_DIR / "build" / "venv-checkov" / "bin" / "checkov"

pytestmark = pytest.mark.skipif(not CHECKOV.exists(), reason=f"needs checkov at {CHECKOV} (make setup installs it)")


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_rendered_stack_passes_every_checkov_kubernetes_check(stack, tmp_path):
    rendered = run_render("--stack", stack, "--out", str(tmp_path / stack))
    assert rendered.returncode == 0, rendered.stderr
    scan = subprocess.run(
        [str(CHECKOV), "-d", str(tmp_path / stack), "--framework", "kubernetes", "--skip-download", "--output", "json",
         "--quiet"],
        capture_output=True, text=True, timeout=600,
    )
    report = json.loads(scan.stdout)
    summary = report["summary"]
    failed = [f"{check['check_id']} {check['resource']}" for check in report["results"]["failed_checks"]]
    assert summary["failed"] == 0 and not failed, failed
    assert summary["passed"] > 0

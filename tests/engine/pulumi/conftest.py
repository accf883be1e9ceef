"""The stack under the real Pulumi engine: the CLI and the Kubernetes provider that `make engine` builds, our
program run inline by the Automation API (`infra.automation`), a file backend, and a cluster of its own whose
pods become Ready (kube-scheduler and kwok on fake CPU and GPU nodes, `engine.cluster.node_pools`).

Each test module works on copies of `Pulumi.yaml` and the stack files in a temporary project folder, so a
`config set` here never touches the checkout, and `load_stack_config(stack, project_dir=...)` reads exactly the
config the engine ran with. Skipped, with the reason, only when the engine is not built: `make test` builds it.
"""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import dataclass
from functools import partial
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import parse_qs, urlparse

import pytest

from engine.build import GROUPS
from engine.cluster import ClusterState, node_pools, start, stop
from engine.kubeapi import KubeAPI
from infra.config import PROJECT_DIR, load_stack_config
from infra.render import render_resources
from tests.rollout.test_cli_stack import HealthyPrometheus

# Pods never pull it (kwok runs no container), but the reference must be valid for the stack's checks.
IMAGE = "localhost:5001/mlserve/churn-model@sha256:" + "0" * 64
# What a cluster without charts or a Docker daemon needs: no image build, no Helm releases.
ENGINE_SETTINGS = {
    "dev": {"image.reference": IMAGE, "monitoring.installStack": "false", "monitoring.installAdapter": "false"},
    "prod": {"image.reference": IMAGE, "platform.installSeldon": "false", "platform.installIstio": "false"},
}
PASSPHRASE = "mlserve-engine-tests"


class FailingChallengerPrometheus(HealthyPrometheus):
    """Both variants busy; the challenger answers 10% of its calls with a 5xx, the champion none. Keeps the
    queries it was asked in ``queries`` (a list per subclass made by `failing_rollout`)."""

    queries: list[str]

    def error_count(self, query: str) -> str:
        return "100" if "challenger" in query else "0"

    def do_GET(self):
        self.queries.append(parse_qs(urlparse(self.path).query).get("query", [""])[0])
        super().do_GET()


def failing_rollout(project: "Project", stack, name: str, monkeypatch, tmp_path: Path):
    """`python -m rollout start --stack NAME` from weight 0 (steps 10, 50, 100, a look a second) against a
    Prometheus whose challenger fails. Returns the CLI's exit code, its report, the stack updates it made (oldest
    first) and the PromQL queries it asked."""
    import infra.config
    from pulumi.automation import ConfigValue

    from rollout.cli import main

    handler = type("Recording", (FailingChallengerPrometheus,), {"queries": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # The CLI reads the project in the checkout; here it is this test's copy, with the engine's backend.
    monkeypatch.setattr(infra.config, "PROJECT_DIR", project.directory)
    monkeypatch.setattr(infra.config, "load_stack_config",
                        partial(infra.config.load_stack_config, project_dir=project.directory))
    monkeypatch.setenv("MLSERVE_HOME", str(tmp_path / "home"))
    # A rollout resumes at the stack's weight; this one starts from none.
    stack.set_config("traffic.challengerWeight", ConfigValue("0"), path=True)
    stack.up()
    before = len(stack.history())
    try:
        code = main(["start", "--stack", name, "--report", str(tmp_path / "report.json"),
                     "--set", f"rollout.prometheusUrl=http://127.0.0.1:{server.server_port}",
                     "--set", "rollout.intervalSeconds=1", "--set", "rollout.steps=[10, 50, 100]"])
    finally:
        server.shutdown()
    report = json.loads((tmp_path / "report.json").read_text())
    updates = list(reversed(stack.history()[: len(stack.history()) - before]))  # history is newest first
    return code, report, updates, handler.queries


def missing_engine() -> list[str]:
    return [f"{group.bin_dir() / name}" for group in GROUPS for name in group.missing()]


@dataclass
class Project:
    """A copy of the project's Pulumi files, a file backend and the cluster the provider deploys to."""

    directory: Path
    api: KubeAPI
    kubeconfig: str

    def stack(self, name: str, settings: dict[str, str] | None = None, base: str | None = None):
        """Create stack `name` (its file copied from the checkout's Pulumi.BASE.yaml when `base` is given, not from
        this project's copy, which other modules' tests edit) and set `settings` as `pulumi config set --path KEY
        VALUE` would."""
        from pulumi.automation import ConfigValue

        from infra.automation import select_stack

        if base is not None:
            shutil.copy(PROJECT_DIR / f"Pulumi.{base}.yaml", self.directory / f"Pulumi.{name}.yaml")
        stack = select_stack(name, self.directory, create=True)
        for key, value in (settings or {}).items():
            stack.set_config(key, ConfigValue(value), path=True)
        return stack

    def config(self, name: str):
        return load_stack_config(name, project_dir=self.directory)

    def manifests(self, name: str) -> list[dict[str, Any]]:
        """What `infra.render` writes for stack `name`'s config as it stands in this project."""
        return [r.manifest for r in render_resources(self.config(name)) if r.is_kubernetes_object]


@pytest.fixture(scope="package")
def engine_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterable[ClusterState]:
    if missing := missing_engine():
        pytest.skip(f"engine not built ({', '.join(missing)} missing): run `make engine`")
    state = start(tmp_path_factory.mktemp("engine-cluster"), node_pools())
    try:
        yield state
    finally:
        stop(Path(state.state_dir))


@pytest.fixture(scope="package")
def project(engine_cluster: ClusterState, tmp_path_factory: pytest.TempPathFactory) -> Iterable[Project]:
    directory = tmp_path_factory.mktemp("project")
    for name in ("Pulumi.yaml", "Pulumi.dev.yaml", "Pulumi.prod.yaml"):
        shutil.copy(PROJECT_DIR / name, directory / name)
    backend = tmp_path_factory.mktemp("backend")
    with pytest.MonkeyPatch.context() as patch:
        # The CLI (and the provider it starts) read these; the inline program runs in this process.
        patch.setenv("PULUMI_BACKEND_URL", f"file://{backend}")
        patch.setenv("PULUMI_CONFIG_PASSPHRASE", PASSPHRASE)
        patch.setenv("PULUMI_HOME", str(tmp_path_factory.mktemp("pulumi-home")))
        patch.setenv("PULUMI_SKIP_UPDATE_CHECK", "true")
        patch.setenv("KUBECONFIG", engine_cluster.kubeconfig)
        api = engine_cluster.api
        # With the Helm installs off, the stack expects the monitoring stack to be there already: its Grafana
        # dashboard ConfigMap goes into `monitoring.namespace`, which the stack does not create.
        for stack in ENGINE_SETTINGS:
            namespace = load_stack_config(stack, overrides=ENGINE_SETTINGS[stack]).monitoring.namespace
            api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        yield Project(directory, api, engine_cluster.kubeconfig)

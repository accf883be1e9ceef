"""The stack under the real Pulumi engine: the CLI and the Kubernetes provider that `make engine` builds, our
program run inline by the Automation API (`infra.automation`), a file backend, and a cluster of its own whose
pods become Ready (kube-scheduler and kwok on fake CPU and GPU nodes, `engine.cluster.node_pools`).

Each test module works on copies of `Pulumi.yaml` and the stack files in a temporary project folder, so a
`config set` here never touches the checkout, and `load_stack_config(stack, project_dir=...)` reads exactly the
config the engine ran with. Skipped, with the reason, only when the engine is not built: `make test` builds it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pytest

from engine.build import GROUPS
from engine.cluster import ClusterState, node_pools, start, stop
from engine.kubeapi import KubeAPI
from infra.config import PROJECT_DIR, load_stack_config
from infra.render import render_resources

# Pods never pull it (kwok runs no container), but the reference must be valid for the stack's checks.
IMAGE = "localhost:5001/mlserve/churn-model@sha256:" + "0" * 64
# What a cluster without charts or a Docker daemon needs: no image build, no Helm releases.
ENGINE_SETTINGS = {
    "dev": {"image.reference": IMAGE, "monitoring.installStack": "false", "monitoring.installAdapter": "false"},
    "prod": {"image.reference": IMAGE, "platform.installSeldon": "false", "platform.installIstio": "false"},
}
PASSPHRASE = "mlserve-engine-tests"


def missing_engine() -> list[str]:
    return [f"{group.bin_dir() / name}" for group in GROUPS for name in group.missing()]


@dataclass
class Project:
    """A copy of the project's Pulumi files, a file backend and the cluster the provider deploys to."""

    directory: Path
    api: KubeAPI
    kubeconfig: str

    def stack(self, name: str, settings: dict[str, str] | None = None, base: str | None = None):
        """Create stack `name` (its file copied from Pulumi.BASE.yaml when `base` is given) and set `settings`
        as `pulumi config set --path KEY VALUE` would."""
        from pulumi.automation import ConfigValue

        from infra.automation import select_stack

        if base is not None:
            shutil.copy(self.directory / f"Pulumi.{base}.yaml", self.directory / f"Pulumi.{name}.yaml")
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

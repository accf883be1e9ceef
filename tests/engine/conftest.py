"""One real control plane per test session (etcd, kube-apiserver, kube-controller-manager on loopback).

The stack's objects come from `infra.render` (the program `pulumi up` runs, under mocks) with the platform
Helm installs switched off by config, as a test cluster without charts would run it; they are applied the way
pulumi-kubernetes applies them (server-side apply). Skipped, with the reason, only when the engine binaries
are not built: `make test` builds them first, so in CI these tests run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable

import pytest

from engine.build import bin_dir, missing_binaries
from engine.cluster import ClusterState, start, stop
from engine.kubeapi import KubeAPI
from infra.config import load_stack_config
from infra.render import render_resources

# Charts are out of reach here: each stack's Helm releases are switched off by its own config keys.
HELM_OFF = {
    "dev": {"monitoring.installStack": False, "monitoring.installAdapter": False},
    "prod": {"platform.installSeldon": False, "platform.installIstio": False},
}
WAIT_S = 120.0
ACCESS_KINDS = ("ServiceAccount", "Secret")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterable[ClusterState]:
    if missing := missing_binaries():
        pytest.skip(f"engine binaries not built ({', '.join(missing)} missing in {bin_dir()}): run `make engine`")
    state = start(tmp_path_factory.mktemp("cluster"))
    try:
        yield state
    finally:
        stop(Path(state.state_dir))


@pytest.fixture(scope="session")
def api(cluster: ClusterState) -> KubeAPI:
    api = cluster.api
    # With the Helm installs off, the stack expects the monitoring stack it would otherwise install to be there
    # already: its Grafana dashboard ConfigMap goes into `monitoring.namespace`, which the stack does not create.
    for stack in HELM_OFF:
        name = load_stack_config(stack, overrides=HELM_OFF[stack]).monitoring.namespace
        api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return api


def stack_manifests(stack: str, **overrides: Any) -> list[dict[str, Any]]:
    """The Kubernetes objects of `stack` (Helm installs off), with `overrides` as `--set KEY.PATH=VALUE` would."""
    config = load_stack_config(stack, overrides={**HELM_OFF[stack], **overrides})
    return [resource.manifest for resource in render_resources(config) if resource.is_kubernetes_object]


def identity(manifest: dict[str, Any]) -> tuple[str, str, str | None, str]:
    metadata = manifest["metadata"]
    return manifest["apiVersion"], manifest["kind"], metadata.get("namespace"), metadata["name"]


def wait_for(what: str, check, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def deploy(api: KubeAPI, manifests: list[dict[str, Any]], previous: list[dict[str, Any]] = ()) -> dict[tuple, dict]:
    """What `pulumi up` does to the cluster: apply every object, namespaces first, and delete the objects of
    `previous` that are no longer rendered. Returns each object as the API server stored it."""
    namespaces = [m for m in manifests if m["kind"] == "Namespace"]
    stored = {identity(m): api.apply(m) for m in namespaces}
    for namespace in namespaces:
        # The controller manager gives each new namespace its `default` ServiceAccount a moment later; on a real
        # cluster that race is the same, but a ReplicaSet that loses it logs a FailedCreate we would then misread.
        name = namespace["metadata"]["name"]
        wait_for(f"ServiceAccount default in {name}", lambda: api.exists("v1", "ServiceAccount", "default", name))
    # The stack makes every workload depend on its access objects (ServiceAccount, Secret; infra/stack.py), so
    # `pulumi up` creates those first: a ReplicaSet whose pods name a ServiceAccount that is not there yet logs
    # FailedCreate ("serviceaccount ... not found").
    access = [m for m in manifests if m["kind"] in ACCESS_KINDS]
    stored.update({identity(m): api.apply(m) for m in access})
    stored.update({identity(m): api.apply(m) for m in manifests if m["kind"] not in ("Namespace", *ACCESS_KINDS)})
    current = {identity(m) for m in manifests}
    for manifest in previous:
        if identity(manifest) not in current:
            api_version, kind, namespace, name = identity(manifest)
            api.delete(api_version, kind, name, namespace)
    return stored


def contains(stored: Any, rendered: Any, path: str = "") -> list[str]:
    """Where `stored` lacks or changes a value `rendered` set (the server may add defaults, never alter ours)."""
    if isinstance(rendered, dict):
        if not isinstance(stored, dict):
            return [f"{path or '.'}: expected a mapping, the server holds {stored!r}"]
        problems = []
        for key, value in rendered.items():
            if key not in stored:
                problems.append(f"{path}.{key}: missing on the server")
            else:
                problems += contains(stored[key], value, f"{path}.{key}")
        return problems
    if isinstance(rendered, list):
        if not isinstance(stored, list) or len(stored) != len(rendered):
            return [f"{path}: expected {len(rendered)} items, the server holds {stored!r}"]
        return [p for i, (s, r) in enumerate(zip(stored, rendered)) for p in contains(s, r, f"{path}[{i}]")]
    return [] if stored == rendered else [f"{path}: rendered {rendered!r}, the server holds {stored!r}"]


def quantities_as_stored(manifest: dict[str, Any]) -> dict[str, Any]:
    """`manifest` with every container's resource quantities as the API server stores them: strings (a GPU limit
    rendered as the integer 1 reads back as "1"; pulumi-kubernetes diffs inputs, so this never shows in a diff)."""
    import copy

    manifest = copy.deepcopy(manifest)
    template = (manifest.get("spec") or {}).get("template") or {}
    for container in (template.get("spec") or {}).get("containers") or []:
        for kind in ("requests", "limits"):
            quantities = (container.get("resources") or {}).get(kind) or {}
            quantities.update({name: str(value) for name, value in quantities.items()})
    return manifest

"""Prod's GPU, autoscaling and challenger settings on the plain router, under the real engine and scheduler:
GPU pods land only on the GPU pool's nodes and both variants become Available; a new challenger version rolls
only the challenger's pods; a budget refuses an eviction beyond its variant's maxUnavailable, and draining a node
through the Eviction API keeps each variant within it."""

from __future__ import annotations

import time

import pytest
from pulumi.automation import ConfigValue

from engine.kubeapi import KubeAPIError
from tests.engine.conftest import wait_for
from tests.engine.pulumi.conftest import ENGINE_SETTINGS

pytestmark = pytest.mark.timeout(900)
NAMESPACE = "mlserve-gpu"


@pytest.fixture(scope="module")
def gpu(project):
    settings = {**ENGINE_SETTINGS["prod"], "traffic.router": "service", "traffic.challengerWeight": "0", "namespace": NAMESPACE}
    stack = project.stack("gpu", settings, base="prod")
    assert stack.up().summary.result == "succeeded"
    # The Deployments leave `replicas` to their HPA (set, they would fight it): each starts at one pod and the
    # HPA controller raises it to autoscaling.minReplicas, with no metrics needed for that.
    minimum = project.config("gpu").autoscaling.min_replicas
    wait_for(f"each variant scaled to {minimum} available pods", lambda: all(
        d["spec"]["replicas"] == minimum and d["status"].get("availableReplicas") == minimum
        for d in deployments(project).values()))
    yield stack
    stack.destroy()


def pods(project, variant: str | None = None) -> list[dict]:
    found = project.api.list("v1", "Pod", NAMESPACE)
    live = [p for p in found if not p["metadata"].get("deletionTimestamp")]
    return [p for p in live if variant is None or variant_of(p) == variant]


def variant_of(pod: dict) -> str:
    labels = pod["metadata"]["labels"]
    return next(value for key, value in labels.items() if key.endswith("/variant") or key == "variant")


def deployments(project) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in project.api.list("apps/v1", "Deployment", NAMESPACE)}


def test_gpu_pods_land_only_on_gpu_nodes_and_both_variants_become_available(project, gpu):
    config = project.config("gpu")
    assert config.gpu.enabled and config.model.has_challenger and config.autoscaling.enabled
    found = pods(project)
    assert {variant_of(p) for p in found} == {"champion", "challenger"}
    nodes = {n["metadata"]["name"]: n for n in project.api.list("v1", "Node")}
    for pod in found:
        node = nodes[pod["spec"]["nodeName"]]
        assert node["metadata"]["labels"]["mlserve.local/pool"] == "gpu", pod["metadata"]["name"]
        for label, value in config.gpu.node_selector_labels.items():
            assert node["metadata"]["labels"][label] == value
        assert int(pod["spec"]["containers"][0]["resources"]["limits"][config.gpu.resource]) == config.gpu.count
    for name, deployment in deployments(project).items():
        status = deployment["status"]
        assert status.get("availableReplicas") == deployment["spec"]["replicas"] >= config.autoscaling.min_replicas, name


def test_a_new_challenger_version_rolls_only_the_challenger(project, gpu):
    champion_before = {p["metadata"]["uid"] for p in pods(project, "champion")}
    challenger_before = {p["metadata"]["uid"] for p in pods(project, "challenger")}
    replica_sets_before = {rs["metadata"]["name"] for rs in project.api.list("apps/v1", "ReplicaSet", NAMESPACE)}
    gpu.set_config("model.challengerUri", ConfigValue("models:/customer-churn-classifier/7"), path=True)
    events = []
    gpu.preview(on_event=events.append)
    steps = [e.resource_pre_event.metadata for e in events if e.resource_pre_event is not None]
    changed = [(s.op.value, s.type, s.urn.rsplit("::", 1)[-1]) for s in steps if s.op.value not in ("same", "read")]
    assert len(changed) == 1 and changed[0][:2] == ("update", "kubernetes:apps/v1:Deployment") and "challenger" in changed[0][2], changed
    assert gpu.up().summary.result == "succeeded"
    assert {p["metadata"]["uid"] for p in pods(project, "champion")} == champion_before
    challenger_after = {p["metadata"]["uid"] for p in pods(project, "challenger")}
    assert challenger_after and not challenger_after & challenger_before
    new_sets = {rs["metadata"]["name"] for rs in project.api.list("apps/v1", "ReplicaSet", NAMESPACE)} - replica_sets_before
    assert len(new_sets) == 1 and "challenger" in new_sets.pop()


def budgets_current(project) -> list[dict] | None:
    """The budgets once the disruption controller has counted the pods as they are now: the eviction API
    decides from a budget's status, and a status counted during the previous test's rollout (old pods still
    healthy) allows more disruptions than the variant's pods can bear."""
    budgets = project.api.list("policy/v1", "PodDisruptionBudget", NAMESPACE)
    for budget in budgets:
        status, variant = budget.get("status") or {}, "champion" if "champion" in budget["metadata"]["name"] else "challenger"
        live = pods(project, variant)
        ready = [p for p in live if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or [])]
        if (status.get("observedGeneration") != budget["metadata"]["generation"] or status.get("expectedPods") != len(live)
                or len(ready) != len(live) or status.get("currentHealthy") != len(ready)
                or status.get("disruptionsAllowed") != min(budget["spec"]["maxUnavailable"], len(ready))):
            return None
    return budgets


def cordon(project, node: str, unschedulable: bool) -> None:
    project.api.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}, "spec": {"unschedulable": unschedulable}},
                      field_manager="drain")


def is_ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def test_a_budget_refuses_an_eviction_beyond_its_variants_max_unavailable(project, gpu):
    """With every node cordoned, an evicted pod's replacement cannot be scheduled, so it cannot become Ready
    (kwok readies a scheduled pod within milliseconds, faster than a second eviction can follow): the budget
    must allow exactly maxUnavailable evictions of a variant and refuse the next with 429."""
    budgets = wait_for("each budget counting the variant's pods as they are now", lambda: budgets_current(project))
    budget = next(b for b in budgets if "challenger" in b["metadata"]["name"])
    allowed = budget["spec"]["maxUnavailable"]
    victims = pods(project, "challenger")
    assert len(victims) > allowed, f"{len(victims)} challenger pods cannot show a budget of {allowed}"
    nodes = [n["metadata"]["name"] for n in project.api.list("v1", "Node")]
    for node in nodes:
        cordon(project, node, True)
    try:
        evicted = 0
        for pod in victims[:allowed]:
            project.api.evict(pod["metadata"]["name"], NAMESPACE)
            evicted += 1
        with pytest.raises(KubeAPIError) as refused:
            project.api.evict(victims[allowed]["metadata"]["name"], NAMESPACE)
        assert refused.value.status == 429, refused.value
        assert evicted == allowed
        assert len([p for p in pods(project, "challenger") if is_ready(p)]) == len(victims) - allowed
    finally:
        for node in nodes:
            cordon(project, node, False)
    wait_for("the challenger Available again", lambda: all(
        d["status"].get("availableReplicas") == d["spec"]["replicas"] for d in deployments(project).values()), timeout=300)


def test_draining_a_node_keeps_each_variant_within_its_budget(project, gpu):
    budgets = wait_for("each budget counting the variant's pods as they are now", lambda: budgets_current(project))
    assert len(budgets) == 2
    node = max({p["spec"]["nodeName"] for p in pods(project)}, key=lambda n: len([p for p in pods(project) if p["spec"]["nodeName"] == n]))
    cordon(project, node, True)
    minimum = {b["metadata"]["name"]: b["spec"] for b in budgets}
    replicas = {variant: len(pods(project, variant)) for variant in ("champion", "challenger")}
    deadline = time.monotonic() + 300
    try:
        while on_node := [p for p in pods(project) if p["spec"].get("nodeName") == node]:
            assert time.monotonic() < deadline, f"{len(on_node)} pods still on {node}"
            for pod in on_node:
                try:
                    project.api.evict(pod["metadata"]["name"], NAMESPACE)
                except KubeAPIError as err:
                    # 429: the budget allows no disruption now (try again once a replacement is Ready); 404: the
                    # pod went meanwhile. A pod matched by two budgets is refused for good with 500: never that.
                    assert err.status in (429, 404), f"{pod['metadata']['name']}: {err}"
            for variant, count in replicas.items():
                ready = [p for p in pods(project, variant) if is_ready(p)]
                budget = next(spec for name, spec in minimum.items() if variant in name)
                assert len(ready) >= count - budget["maxUnavailable"], f"{variant}: {len(ready)} of {count} ready"
            time.sleep(1)
    finally:
        cordon(project, node, False)
    wait_for("both variants Available again", lambda: all(
        d["status"].get("availableReplicas") == d["spec"]["replicas"] for d in deployments(project).values()), timeout=300)
    assert all(p["spec"]["nodeName"] != node for p in pods(project))

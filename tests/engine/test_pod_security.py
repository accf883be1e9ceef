"""Pod Security admission, for real: the namespace labels are enforced, and our pods pass them.

The controller manager turns each Deployment into a ReplicaSet and its pods (Pending: there is no kubelet);
the API server admits or refuses every pod against the namespace's `enforce` level. A pod the level forbids
is refused by the same admission, so a pass here is not a namespace without enforcement.
"""

from __future__ import annotations

import pytest

from engine.kubeapi import KubeAPIError
from tests.engine.conftest import deploy, stack_manifests, wait_for

# A pod that "baseline" (and so "restricted") forbids: privileged.
PRIVILEGED = {"privileged": True}
# A pod that "baseline" allows but "restricted" forbids: no securityContext at all.
UNHARDENED: dict = {}


def namespace_of(manifests) -> dict:
    return next(m for m in manifests if m["kind"] == "Namespace")


def probe_pod(namespace: str, security_context: dict) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "pod-security-probe", "namespace": namespace},
        "spec": {"containers": [{"name": "probe", "image": "registry.invalid/probe:1", "securityContext": security_context}]},
    }


# prod on the Gateway API router: no executor in its pods, so its namespace enforces `restricted`.
GATEWAY = {"namespace": "mlserve-gateway-psa", "traffic.router": "gateway", "traffic.gateway": "mlserve-gateway-psa/public"}


@pytest.mark.parametrize(("stack", "overrides"), [("dev", {}), ("prod", {}), ("prod", GATEWAY)],
                         ids=["dev", "prod", "prod-gateway"])
def test_namespace_enforces_its_level(api, stack, overrides):
    manifests = stack_manifests(stack, **overrides)
    deploy(api, manifests)
    namespace = namespace_of(manifests)
    name = namespace["metadata"]["name"]
    stored = api.get("v1", "Namespace", name)["metadata"]["labels"]
    level = namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
    assert stored["pod-security.kubernetes.io/enforce"] == level
    forbidden = UNHARDENED if level == "restricted" else PRIVILEGED
    with pytest.raises(KubeAPIError) as refused:
        api.create(probe_pod(name, forbidden))
    assert refused.value.status == 403
    assert f'violates PodSecurity "{level}:latest"' in refused.value.message


def test_controller_manager_creates_every_pod_without_failed_create(api):
    manifests = stack_manifests("dev")
    deploy(api, manifests)
    namespace = namespace_of(manifests)["metadata"]["name"]
    deployments = [m for m in manifests if m["kind"] == "Deployment"]
    assert deployments, "the dev stack renders no Deployment"
    for deployment in deployments:
        name, replicas = deployment["metadata"]["name"], deployment["spec"].get("replicas", 1)

        def created():
            stored = api.get("apps/v1", "Deployment", name, namespace)
            return stored.get("status", {}).get("replicas", 0) >= replicas and stored

        wait_for(f"Deployment {name} to have {replicas} pods created", created)
    pods = api.list("v1", "Pod", namespace)
    assert len(pods) == sum(d["spec"].get("replicas", 1) for d in deployments)
    failed = [e["message"] for e in api.list("v1", "Event", namespace) if e.get("reason") == "FailedCreate"]
    assert failed == []

"""The dev stack (router `service`) under the real engine: `pulumi up` creates what `infra.render` writes and
its Deployments become Available on kwok's nodes, a second preview changes nothing, invalid config stops the
preview with every problem and creates nothing, and `pulumi destroy` removes every object."""

from __future__ import annotations

import pytest
from pulumi import automation as auto

from engine.kubeapi import KubeAPIError
from tests.engine.conftest import contains, identity, wait_for
from tests.engine.pulumi.conftest import ENGINE_SETTINGS

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def dev(project):
    return project.stack("dev", ENGINE_SETTINGS["dev"])


@pytest.fixture(scope="module")
def rendered(project, dev):
    return project.manifests("dev")


def available(api, manifest) -> bool:
    api_version, kind, namespace, name = identity(manifest)
    status = api.get(api_version, kind, name, namespace).get("status") or {}
    return status.get("availableReplicas", 0) >= 1 and not status.get("unavailableReplicas")


def test_up_creates_what_render_writes_and_pods_become_ready(project, dev, rendered):
    result = dev.up()
    assert result.summary.result == "succeeded"
    problems = []
    for manifest in rendered:
        api_version, kind, namespace, name = identity(manifest)
        stored = project.api.get(api_version, kind, name, namespace)
        problems += [f"{kind}/{name}{where}" for where in contains(stored, manifest)]
    assert not problems, "\n".join(problems)
    # `up` returned, so the provider's await logic saw each Deployment's rollout complete; the pods are really there.
    deployments = [m for m in rendered if m["kind"] == "Deployment"]
    assert deployments and all(available(project.api, m) for m in deployments)
    namespace = project.config("dev").namespace
    pods = project.api.list("v1", "Pod", namespace)
    assert pods and all(p["status"]["phase"] == "Running" and p["spec"]["nodeName"].startswith("cpu-") for p in pods)
    assert result.outputs["namespace"].value == namespace


def test_a_second_preview_right_after_up_changes_nothing(dev):
    preview = dev.preview()
    assert set(preview.change_summary) == {"same"}, preview.change_summary


def test_invalid_config_stops_the_preview_with_every_problem_and_creates_nothing(project):
    broken = project.stack("broken", {"namespace": "mlserve-broken", "traffic.challengerWeight": "150",
                                      "serving.replicas": "0"}, base="dev")
    with pytest.raises(auto.CommandError) as preview:
        broken.preview()
    message = str(preview.value)
    assert "traffic.challengerWeight" in message and "(got 150)" in message
    assert "serving.replicas" in message and "(got 0)" in message
    with pytest.raises(auto.CommandError):
        broken.up()
    assert not project.api.exists("v1", "Namespace", "mlserve-broken")
    deployment = broken.export_stack().deployment or {}
    assert [r for r in deployment.get("resources") or [] if not r["type"].startswith("pulumi:")] == []


def test_destroy_removes_every_object_the_namespace_included(project, dev, rendered):
    result = dev.destroy()
    assert result.summary.result == "succeeded"

    def gone(manifest) -> bool:
        api_version, kind, namespace, name = identity(manifest)
        try:
            return not project.api.exists(api_version, kind, name, namespace)
        except KubeAPIError as err:  # a namespaced kind in a namespace that is already gone
            return err.status == 404

    left = [f"{m['kind']}/{m['metadata']['name']}" for m in rendered if not gone(m)]
    assert not left, left
    wait_for("no pods left", lambda: not project.api.list("v1", "Pod", project.config("dev").namespace))

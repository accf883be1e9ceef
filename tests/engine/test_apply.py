"""The dev and prod stacks against a real kube-apiserver: every object accepted, stored as rendered.

The API server runs its own validation (the Seldon CRD's schema, strict field validation), defaulting and
admission on each object; reading every object back shows that nothing we set was refused, dropped or
rewritten, and that the server reports the version the provider keys its behaviour on.
"""

from __future__ import annotations

import pytest

from engine.build import pinned_versions
from engine.kubeapi import KubeAPIError
from tests.engine.conftest import contains, deploy, identity, stack_manifests


def test_api_server_reports_its_release_version(api):
    # pulumi-kubernetes reads /version; a build without the component-base ldflags reports v0.0.0.
    version = api.server_version()
    assert version["gitVersion"] == pinned_versions().kubernetes
    assert (version["major"], version["minor"]) == tuple(pinned_versions().kubernetes[1:].split(".")[:2])


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_every_object_is_accepted_and_reads_back_as_rendered(api, stack):
    manifests = stack_manifests(stack)
    deploy(api, manifests)
    problems = []
    for manifest in manifests:
        api_version, kind, namespace, name = identity(manifest)
        stored = api.get(api_version, kind, name, namespace)
        problems += [f"{kind}/{name}{where}" for where in contains(stored, manifest)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "kind, mistake, refusal",
    [
        ("SeldonDeployment", lambda m: m["spec"]["predictors"][0].update(trafic=10), ".spec.predictors[0].trafic: field not declared in schema"),
        ("SeldonDeployment", lambda m: m["spec"]["predictors"][0].update(traffic="ten"), ".spec.predictors[0].traffic: expected numeric"),
        ("PrometheusRule", lambda m: m["spec"].update(group=[]), ".spec.group: field not declared in schema"),
    ],
)
def test_the_server_refuses_what_its_schemas_forbid(api, kind, mistake, refusal):
    # The acceptance above means something only if the server checks these objects at all. On an update,
    # server-side apply refuses such a patch while building the typed object, with HTTP 500 and these words.
    manifests = stack_manifests("prod")
    deploy(api, manifests)
    manifest = next(m for m in manifests if m["kind"] == kind)
    mistake(manifest)
    with pytest.raises(KubeAPIError) as refused:
        api.apply(manifest, dry_run=True)
    assert refusal in refused.value.message

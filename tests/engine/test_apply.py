"""The dev and prod stacks against a real kube-apiserver: every object accepted, stored as rendered.

The API server runs its own validation (the Seldon CRD's schema, strict field validation), defaulting and
admission on each object; reading every object back shows that nothing we set was refused, dropped or
rewritten, and that the server reports the version the provider keys its behaviour on.
"""

from __future__ import annotations

import pytest

from engine.build import pinned_versions
from engine.kubeapi import KubeAPIError
from tests.engine.conftest import contains, deploy, identity, quantities_as_stored, stack_manifests


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


# The prod stack on the Gateway API router, creating its Gateway, with sticky sessions (the experimental
# channel's HTTPRoute field): the cluster carries the v1.6.3 experimental CRDs (engine.cluster).
GATEWAY = {
    "namespace": "mlserve-gateway-apply",
    "traffic.router": "gateway",
    "traffic.gateway": "mlserve-gateway-apply/public",
    "traffic.createGateway": True,
    "traffic.gatewayClassName": "eg",
    "traffic.sticky": True,
    "traffic.stickyTimeout": "168h",
}


def split_rule(manifest):
    return next(rule for rule in manifest["spec"]["rules"] if rule["name"] == "split")


@pytest.mark.parametrize("overrides", [GATEWAY, {**GATEWAY, "traffic.sticky": False, "traffic.stickyTimeout": "",
                                                 "traffic.challengerWeight": 0, "traffic.shadow": True,
                                                 "traffic.shadowPercent": 20}], ids=["sticky", "shadow"])
def test_the_gateway_stack_is_accepted_and_reads_back_as_rendered(api, overrides):
    manifests = stack_manifests("prod", **overrides)
    assert {"Gateway", "HTTPRoute", "GRPCRoute"} <= {m["kind"] for m in manifests}
    deploy(api, manifests)
    problems = []
    for manifest in manifests:
        api_version, kind, namespace, name = identity(manifest)
        stored = api.get(api_version, kind, name, namespace)
        problems += [f"{kind}/{name}{where}" for where in contains(stored, quantities_as_stored(manifest))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "kind, mistake, refusal",
    [
        ("HTTPRoute", lambda m: split_rule(m)["backendRefs"][0].update(weigth=5), "field not declared in schema"),
        # A CEL rule of the CRD (x-kubernetes-validations), which a JSON-schema check alone cannot see.
        ("HTTPRoute", lambda m: split_rule(m)["sessionPersistence"].pop("absoluteTimeout"),
         "AbsoluteTimeout must be specified when cookie lifetimeType is Permanent"),
        ("GRPCRoute", lambda m: split_rule(m)["backendRefs"][1].update(weight=-1), "should be greater than or equal to 0"),
        # Listeners are a map keyed by name in the CRD (x-kubernetes-list-map-keys): one name twice is refused.
        ("Gateway", lambda m: m["spec"]["listeners"][1].update(name=m["spec"]["listeners"][0]["name"]),
         'duplicate entries for key [name="http"]'),
    ],
)
def test_the_server_refuses_what_the_gateway_api_schemas_forbid(api, kind, mistake, refusal):
    manifests = stack_manifests("prod", **GATEWAY)
    deploy(api, manifests)
    manifest = next(m for m in manifests if m["kind"] == kind)
    mistake(manifest)
    with pytest.raises(KubeAPIError) as refused:
        api.apply(manifest, dry_run=True)
    assert refusal in refused.value.message

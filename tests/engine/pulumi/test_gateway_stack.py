"""The prod stack on the Gateway API router under the real engine (`traffic.router: gateway`, the stack creating
its Gateway): `up` creates what `infra.render` writes, every model pod admitted under Pod Security `restricted`
and Ready on kwok's GPU nodes; `config set --path traffic.challengerWeight 25` previews as a change of the two
routes' split weights and nothing else, then applies as 75/25; a rollout step (`StackConfigRouter.set_weight`,
what `python -m rollout start` calls) is one stack update that moves the routes' weights; and `python -m rollout
start` with a failing challenger steps the routes through stack updates, judging each look on the model pods' own
series (no executor on this router), and leaves both routes at weight 0.

No gateway controller runs here (Envoy is not packaged for this machine; README, "What a cluster needs for the
gateway path"), so the routes are stored and checked by the API server against the real v1.6.3 CRDs, CEL rules
included, but nothing reports them Accepted. pulumi-kubernetes does not wait for that: it has no await logic for
gateway.networking.k8s.io (provider/pkg/await/awaiters.go) and treats such an object as ready once stored unless
it carries `pulumi.com/waitFor` (provider/pkg/metadata/overrides.go, ReadyCondition), which is why `up` returns.
"""

from __future__ import annotations

import pytest
from pulumi.automation import ConfigValue

from rollout.router import StackConfigRouter
from service.names import EXECUTOR_REQUESTS_METRIC
from tests.engine.conftest import contains, identity, quantities_as_stored
from tests.engine.pulumi.conftest import ENGINE_SETTINGS, failing_rollout

pytestmark = pytest.mark.timeout(900)
ROUTE_TYPES = ("kubernetes:gateway.networking.k8s.io/v1:HTTPRoute", "kubernetes:gateway.networking.k8s.io/v1:GRPCRoute")
NAMESPACE = "mlserve-gateway"
SETTINGS = {
    **ENGINE_SETTINGS["prod"],
    "namespace": NAMESPACE,
    "traffic.router": "gateway",
    "traffic.gateway": f"{NAMESPACE}/public",
    "traffic.createGateway": "true",
    "traffic.gatewayClassName": "eg",
}


@pytest.fixture(scope="module")
def gateway(project):
    stack = project.stack("gateway", SETTINGS, base="prod")
    yield stack
    stack.destroy()


def route_weights(project) -> dict[str, dict[str, int]]:
    """Each stored route's split weights by variant."""
    weights = {}
    for manifest in project.manifests("gateway"):
        if manifest["kind"] not in ("HTTPRoute", "GRPCRoute"):
            continue
        api_version, kind, namespace, name = identity(manifest)
        stored = project.api.get(api_version, kind, name, namespace)
        (split,) = [rule for rule in stored["spec"]["rules"] if rule["name"] == "split"]
        weights[kind] = {ref["name"].rsplit("-", 1)[-1]: ref["weight"] for ref in split["backendRefs"]}
    return weights


def test_up_creates_what_render_writes_with_restricted_pods(project, gateway):
    rendered = project.manifests("gateway")
    assert {m["kind"] for m in rendered} >= {"Gateway", "HTTPRoute", "GRPCRoute", "Deployment", "Service"}
    assert gateway.up().summary.result == "succeeded"
    problems = []
    for manifest in rendered:
        api_version, kind, namespace, name = identity(manifest)
        stored = project.api.get(api_version, kind, name, namespace)
        problems += [f"{kind}/{name}{where}" for where in contains(stored, quantities_as_stored(manifest))]
    assert not problems, "\n".join(problems)
    assert route_weights(project) == {"HTTPRoute": {"champion": 90, "challenger": 10},
                                      "GRPCRoute": {"champion": 90, "challenger": 10}}
    namespace = project.api.get("v1", "Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    # `up` waited for each Deployment's rollout: the pods passed `restricted` admission and run on GPU nodes.
    pods = project.api.list("v1", "Pod", NAMESPACE)
    variants = {p["metadata"]["labels"]["mlserve.io/variant"] for p in pods}
    assert variants == {"champion", "challenger"}
    assert all(p["status"]["phase"] == "Running" and p["spec"]["nodeName"].startswith("gpu-") for p in pods)


def test_a_weight_edit_previews_as_the_routes_weights_then_applies(project, gateway):
    gateway.set_config("traffic.challengerWeight", ConfigValue("25"), path=True)
    events = []
    gateway.preview(diff=True, on_event=events.append)
    steps = [e.resource_pre_event.metadata for e in events if e.resource_pre_event is not None]
    changed = [step for step in steps if step.op.value not in ("same", "read")]
    assert sorted((step.op.value, step.type) for step in changed) == sorted(("update", t) for t in ROUTE_TYPES), \
        [(s.op, s.urn) for s in changed]
    for step in changed:
        assert sorted(step.detailed_diff) == ["spec.rules[2].backendRefs[0].weight", "spec.rules[2].backendRefs[1].weight"]
    assert gateway.up().summary.result == "succeeded"
    assert route_weights(project) == {"HTTPRoute": {"champion": 75, "challenger": 25},
                                      "GRPCRoute": {"champion": 75, "challenger": 25}}


def test_a_rollout_step_is_one_stack_update_that_moves_the_routes(project, gateway):
    before = len(gateway.history())
    StackConfigRouter("gateway", project.directory).set_weight(50)
    updates = gateway.history()[: len(gateway.history()) - before]
    assert [(u.message, u.result) for u in updates] == [("rollout: traffic.challengerWeight=50", "succeeded")]
    assert gateway.get_config("traffic.challengerWeight", path=True).value == "50"
    assert route_weights(project) == {"HTTPRoute": {"champion": 50, "challenger": 50},
                                      "GRPCRoute": {"champion": 50, "challenger": 50}}


def test_rollout_start_steps_the_routes_on_the_pods_own_series_and_a_rollback_leaves_weight_zero(
        project, gateway, monkeypatch, tmp_path):
    _, report, updates, queries = failing_rollout(project, gateway, "gateway", monkeypatch, tmp_path)
    assert report["verdict"] == "rolled_back", report
    messages = [update.message for update in updates]
    assert messages[0] == "rollout: traffic.challengerWeight=10"
    assert messages[-1] == "rollout: traffic.challengerWeight=0"
    assert all(update.result == "succeeded" for update in updates)
    assert gateway.get_config("traffic.challengerWeight", path=True).value == "0"
    assert route_weights(project) == {"HTTPRoute": {"champion": 100, "challenger": 0},
                                      "GRPCRoute": {"champion": 100, "challenger": 0}}
    # No executor on this router: every look reads the model pods' own series.
    assert queries and not any(EXECUTOR_REQUESTS_METRIC in query for query in queries)

"""Champion/challenger on the Gateway API (`traffic.router: gateway`): routes valid against the real CRDs (v1.6.3,
copied from the Go module), weights from one config value, header pinning, mirroring, sticky sessions, and
the plain path's pods and Services behind them."""

from __future__ import annotations

import hashlib
import re

import kubernetes_validate
import pytest
import yaml

from infra.errors import ConfigError
from infra.gateway_specs import SESSION_COOKIE, VARIANT_HEADER
from infra.workload import GRPC_PORT_NAME, PORT_NAME
from tests.infra.conftest import GATEWAY_PROD, KUBERNETES_VERSION, manifests, run_render, stack_config
from tests.infra.crd import GATEWAY_API_CHANNELS, GATEWAY_API_CRDS, crd_index, validate_against_crd
from tests.infra.test_seldon import differing_paths

ROUTE_KINDS = ("HTTPRoute", "GRPCRoute")


def gateway_render(render, **overrides):
    return render("prod", **{**GATEWAY_PROD, **overrides})


def route(resources, kind: str = "HTTPRoute") -> dict:
    (found,) = manifests(resources, kind)
    return found


def rules(resources, kind: str = "HTTPRoute") -> dict[str, dict]:
    return {rule["name"]: rule for rule in route(resources, kind)["spec"]["rules"]}


def split_weights(resources, kind: str = "HTTPRoute") -> dict[str, int]:
    return {ref["name"].rsplit("-", 1)[-1]: ref["weight"] for ref in rules(resources, kind)["split"]["backendRefs"]}


# ------------------------------------------------------------------------------------ the CRD fixtures


def test_the_crd_fixtures_are_the_modules_files_unedited():
    # scripts/gateway_api_crds.sh copies them from the Go module and records each file's sha256.
    sums = (GATEWAY_API_CRDS / "SHA256SUMS").read_text().splitlines()
    assert sums[0].startswith("# sigs.k8s.io/gateway-api v1.6.3 h1:")
    recorded = dict(reversed(line.split("  ", 1)) for line in sums[1:])
    files = sorted(str(p.relative_to(GATEWAY_API_CRDS)) for p in GATEWAY_API_CRDS.glob("*/*.yaml"))
    assert sorted(recorded) == files and len(files) == 8
    for name in files:
        assert hashlib.sha256((GATEWAY_API_CRDS / name).read_bytes()).hexdigest() == recorded[name], name
    for channel in GATEWAY_API_CHANNELS:
        for crd in crd_index(GATEWAY_API_CRDS / channel).values():
            annotations = crd["metadata"]["annotations"]
            assert annotations["gateway.networking.k8s.io/bundle-version"] == "v1.6.3"
            assert annotations["gateway.networking.k8s.io/channel"] == channel


def rule_fields(channel: str, kind: str) -> set[str]:
    crd = crd_index(GATEWAY_API_CRDS / channel)[("gateway.networking.k8s.io", kind)]
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return set(v1["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["rules"]["items"]["properties"])


@pytest.mark.parametrize("kind", ROUTE_KINDS)
def test_session_persistence_is_experimental_and_mirror_percent_standard_at_v1_6_3(kind):
    # Why sticky needs the experimental channel while everything else the routes use is standard.
    assert "sessionPersistence" not in rule_fields("standard", kind)
    assert "sessionPersistence" in rule_fields("experimental", kind)
    crd = crd_index(GATEWAY_API_CRDS / "standard")[("gateway.networking.k8s.io", kind)]
    text = yaml.safe_dump(crd)
    assert "percent" in text and "requestMirror" in text and "name" in rule_fields("standard", kind)


# ------------------------------------------------------------------------------------ the routes


SPLITS = [
    ({}, {"champion": 90, "challenger": 10}),
    ({"traffic.challengerWeight": 25}, {"champion": 75, "challenger": 25}),
    ({"traffic.challengerWeight": 0}, {"champion": 100, "challenger": 0}),
    ({"traffic.challengerWeight": 100}, {"champion": 0, "challenger": 100}),
    ({"traffic.challengerWeight": 0, "model.challengerUri": ""}, {"champion": 100}),
]


@pytest.mark.parametrize(("overrides", "expected"), SPLITS, ids=[str(expected) for _, expected in SPLITS])
@pytest.mark.parametrize("kind", ROUTE_KINDS)
def test_routes_split_traffic_by_challenger_weight(render, overrides, expected, kind):
    resources = gateway_render(render, **overrides)
    for channel in GATEWAY_API_CHANNELS:
        validate_against_crd(route(resources, kind), channel)
    assert split_weights(resources, kind) == expected
    assert sum(expected.values()) == 100


@pytest.mark.parametrize("kind", ROUTE_KINDS)
def test_a_variant_header_pins_the_request_to_that_variant(render, kind):
    by_name = rules(gateway_render(render), kind)
    assert list(by_name) == ["pin-champion", "pin-challenger", "split"]
    config = stack_config("prod", **GATEWAY_PROD)
    port = config.serving.port if kind == "HTTPRoute" else config.serving.grpc_port
    for variant in ("champion", "challenger"):
        rule = by_name[f"pin-{variant}"]
        assert rule["matches"] == [{"headers": [{"type": "Exact", "name": VARIANT_HEADER, "value": variant}]}]
        # One backend, whatever the split's weights: a pinned request never reaches the other variant.
        assert rule["backendRefs"] == [{"kind": "Service", "name": f"churn-model-{variant}", "port": port}]
    # The split matches what no pinning rule does: the Gateway API ranks a rule with more header matches first.
    assert "matches" not in by_name["split"]


def test_a_champion_only_stack_pins_only_the_champion(render):
    by_name = rules(gateway_render(render, **{"traffic.challengerWeight": 0, "model.challengerUri": ""}))
    assert list(by_name) == ["pin-champion", "split"]


@pytest.mark.parametrize("kind", ROUTE_KINDS)
def test_routes_attach_to_their_own_listener_of_the_named_gateway(render, kind):
    (parent,) = route(gateway_render(render), kind)["spec"]["parentRefs"]
    listener = "http" if kind == "HTTPRoute" else "grpc"
    assert parent == {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "gateway-system",
                      "name": "public", "sectionName": listener}


@pytest.mark.parametrize(("percent", "expected"), [(100, None), (25, 25)])
@pytest.mark.parametrize("kind", ROUTE_KINDS)
def test_shadow_mirrors_requests_to_the_challenger_which_answers_nobody(render, kind, percent, expected):
    resources = gateway_render(render, **{"traffic.challengerWeight": 0, "traffic.shadow": True,
                                          "traffic.shadowPercent": percent})
    for channel in GATEWAY_API_CHANNELS:
        validate_against_crd(route(resources, kind), channel)
    split = rules(resources, kind)["split"]
    assert split_weights(resources, kind) == {"champion": 100}
    (mirror,) = split["filters"]
    assert mirror["type"] == "RequestMirror"
    assert mirror["requestMirror"]["backendRef"]["name"] == "churn-model-challenger"
    # Left out at 100: mirroring a share is a feature of its own (HTTPRouteRequestPercentageMirror).
    assert mirror["requestMirror"].get("percent") == expected


def test_sticky_sessions_keep_a_client_on_its_variant_by_cookie(render):
    resources = gateway_render(render, **{"traffic.sticky": True})
    http = route(resources)
    validate_against_crd(http, "experimental")
    # The standard channel has no sessionPersistence: a cluster on it cannot take a sticky route.
    with pytest.raises(AssertionError, match="sessionPersistence"):
        validate_against_crd(http, "standard")
    assert rules(resources)["split"]["sessionPersistence"] == {"type": "Cookie", "sessionName": SESSION_COOKIE}
    # gRPC clients keep no cookies: the GRPCRoute stays standard, and such clients pin with the header.
    validate_against_crd(route(resources, "GRPCRoute"), "standard")
    assert "sessionPersistence" not in rules(resources, "GRPCRoute")["split"]


def test_a_sticky_timeout_makes_the_cookie_outlive_the_browser_session(render):
    resources = gateway_render(render, **{"traffic.sticky": True, "traffic.stickyTimeout": "168h"})
    validate_against_crd(route(resources), "experimental")
    assert rules(resources)["split"]["sessionPersistence"] == {
        "type": "Cookie", "sessionName": SESSION_COOKIE, "absoluteTimeout": "168h",
        "cookieConfig": {"lifetimeType": "Permanent"},
    }


@pytest.mark.parametrize(("weight", "expected"), [(0, {"champion": 100}), (100, {"challenger": 100}), (10, {"champion": 90, "challenger": 10})])
def test_with_sticky_sessions_a_variant_at_weight_0_is_no_backend_of_the_split(render, weight, expected):
    # GEP-1619 "Traffic Splitting": a persistent session outranks the weights, even 0, so a rolled-back
    # challenger left in the split would keep every session it had.
    resources = gateway_render(render, **{"traffic.sticky": True, "traffic.challengerWeight": weight})
    assert split_weights(resources) == expected


def test_a_weight_change_diffs_only_the_two_weight_fields_of_each_route(tmp_path):
    sets = [f"{key}={str(value).lower()}" for key, value in GATEWAY_PROD.items()]

    def render_cli(out, *extra):
        result = run_render("--stack", "prod", "--out", str(out), *[a for s in (*sets, *extra) for a in ("--set", s)])
        assert result.returncode == 0, result.stderr

    render_cli(tmp_path / "A")
    render_cli(tmp_path / "B", "traffic.challengerWeight=25")
    files = sorted(p.relative_to(tmp_path / "A") for p in (tmp_path / "A").rglob("*.*"))
    assert files == sorted(p.relative_to(tmp_path / "B") for p in (tmp_path / "B").rglob("*.*"))
    changed = [str(f) for f in files if (tmp_path / "A" / f).read_text() != (tmp_path / "B" / f).read_text()]
    assert changed == ["grpcroute-churn-model.yaml", "httproute-churn-model.yaml"]
    for name in changed:
        a = yaml.safe_load((tmp_path / "A" / name).read_text())
        b = yaml.safe_load((tmp_path / "B" / name).read_text())
        assert differing_paths(a, b) == [
            ("spec", "rules", 2, "backendRefs", 0, "weight"),
            ("spec", "rules", 2, "backendRefs", 1, "weight"),
        ]
        assert [ref["weight"] for ref in b["spec"]["rules"][2]["backendRefs"]] == [75, 25]


# ------------------------------------------------------------------------------------ the Gateway


@pytest.mark.parametrize(("gateway", "namespaces"), [
    ("gateway-system/public", {"from": "Selector", "selector": {"matchLabels": {"kubernetes.io/metadata.name": "mlserve"}}}),
    ("mlserve/public", {"from": "Same"}),
])
def test_a_created_gateway_has_a_listener_for_each_route(render, gateway, namespaces):
    resources = gateway_render(render, **{"traffic.gateway": gateway, "traffic.createGateway": True,
                                          "traffic.gatewayClassName": "eg"})
    (created,) = manifests(resources, "Gateway")
    for channel in GATEWAY_API_CHANNELS:
        validate_against_crd(created, channel)
    assert (created["metadata"]["namespace"], created["metadata"]["name"]) == tuple(gateway.split("/"))
    assert created["spec"]["gatewayClassName"] == "eg"
    config = stack_config("prod", **GATEWAY_PROD)
    listeners = {listener["name"]: listener for listener in created["spec"]["listeners"]}
    assert {name: (l["protocol"], l["port"]) for name, l in listeners.items()} == {
        "http": ("HTTP", config.load_balancer.port), "grpc": ("HTTP", config.serving.grpc_port)}
    for kind, listener in (("HTTPRoute", "http"), ("GRPCRoute", "grpc")):
        allowed = listeners[listener]["allowedRoutes"]
        assert allowed["kinds"] == [{"group": "gateway.networking.k8s.io", "kind": kind}]
        assert allowed["namespaces"] == namespaces
        assert route(resources, kind)["spec"]["parentRefs"][0]["sectionName"] == listener


def test_no_gateway_is_created_unless_asked(render):
    assert not manifests(gateway_render(render), "Gateway")


# ------------------------------------------------------------------------------------ what runs behind them


def test_each_variant_runs_as_a_plain_deployment_behind_a_clusterip_service(render):
    resources = gateway_render(render)
    assert not manifests(resources, "SeldonDeployment")
    deployments = {d["metadata"]["name"]: d for d in manifests(resources, "Deployment")}
    services = {s["metadata"]["name"]: s for s in manifests(resources, "Service")}
    assert set(deployments) == {"churn-model-champion", "churn-model-challenger"}
    # No LoadBalancer of our own: the Gateway is the way in.
    assert {name: s["spec"]["type"] for name, s in services.items()} == {name: "ClusterIP" for name in deployments}
    for name, service in services.items():
        pod_labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
        config = stack_config("prod", **GATEWAY_PROD)
        assert ports == {PORT_NAME: config.serving.port, GRPC_PORT_NAME: config.serving.grpc_port}
    for kind in ROUTE_KINDS:
        for rule in route(resources, kind)["spec"]["rules"]:
            for ref in rule["backendRefs"]:
                assert ref["name"] in services and ref["port"] in {p["port"] for p in services[ref["name"]]["spec"]["ports"]}
    for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"):
        assert {m["metadata"]["name"] for m in manifests(resources, kind)} == set(deployments), kind


def test_the_namespace_enforces_restricted_pod_security(render):
    (namespace,) = manifests(gateway_render(render), "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_every_core_manifest_validates_strictly(render):
    for manifest in manifests(gateway_render(render)):
        if manifest["apiVersion"].startswith(("gateway.networking.k8s.io", "monitoring.coreos.com")):
            continue
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_the_dashboard_and_rules_read_the_model_pods_own_metrics(render):
    resources = gateway_render(render)
    (monitor,) = manifests(resources, "PodMonitor")
    assert len(monitor["spec"]["podMetricsEndpoints"]) == 1  # no executor to scrape
    dashboards = [m for m in manifests(resources, "ConfigMap") if "grafana_dashboard" in m["metadata"].get("labels", {})]
    text = yaml.safe_dump([*dashboards, *manifests(resources, "PrometheusRule")])
    assert not re.search(r"executor|seldon|deployment_name=", text, re.IGNORECASE)


# ------------------------------------------------------------------------------------ config


INVALID = [
    ("no-gateway", {"traffic.gateway": ""}, "traffic.gateway", "NAMESPACE/NAME"),
    ("gateway-not-a-reference", {"traffic.gateway": "public"}, "traffic.gateway", "NAMESPACE/NAME"),
    ("create-without-class", {"traffic.createGateway": True}, "traffic.gatewayClassName", "GatewayClass"),
    ("one-listener-for-both", {"traffic.grpcListener": "http"}, "traffic.grpcListener", "its own"),
    ("bad-sticky-timeout", {"traffic.sticky": True, "traffic.stickyTimeout": "1 week"}, "traffic.stickyTimeout", "duration"),
    ("timeout-without-sticky", {"traffic.stickyTimeout": "24h"}, "traffic.stickyTimeout", "traffic.sticky"),
    ("shadow-percent-zero", {"traffic.shadowPercent": 0}, "traffic.shadowPercent", "between 1 and 100"),
    ("sticky-on-seldon", {"traffic.router": "seldon", "traffic.sticky": True}, "traffic.sticky", "gateway"),
    ("shadow-percent-on-seldon", {"traffic.router": "seldon", "traffic.shadowPercent": 50}, "traffic.shadowPercent",
     "Seldon mirrors every request"),
]


@pytest.mark.parametrize(("overrides", "key", "words"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_gateway_config_is_refused_naming_the_key(overrides, key, words):
    with pytest.raises(ConfigError) as refused:
        stack_config("prod", **{**GATEWAY_PROD, **overrides})
    assert any(problem.startswith(f"{key}:") and words in problem for problem in refused.value.problems), refused.value.problems


def test_a_weighted_split_and_a_shadow_are_accepted_on_the_gateway_router():
    assert stack_config("prod", **GATEWAY_PROD).traffic.challenger_weight == 10
    shadow = stack_config("prod", **{**GATEWAY_PROD, "traffic.challengerWeight": 0, "traffic.shadow": True})
    assert shadow.traffic.shadow

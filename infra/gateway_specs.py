"""Pure builders of champion/challenger traffic on the Kubernetes Gateway API (`traffic.router: gateway`): an
`HTTPRoute` and a `GRPCRoute` in front of each variant's ClusterIP Service, and optionally the `Gateway` they
attach to. Plain data, exactly as applied; `infra.gateway.GatewayTraffic` wires them into resources.

Each route has up to three rules (names are part of the standard channel since Gateway API v1.4):

- `pin-champion` / `pin-challenger`: a request whose `x-mlserve-variant` header names a variant goes to that
  variant alone, whatever the weights (QA, replay, debugging). The Gateway API gives a rule with more header
  matches precedence over one with fewer for the same path (apis/v1/httproute_types.go, HTTPRouteRule.Matches;
  apis/v1/grpcroute_types.go, GRPCRouteRule.Matches), so a pinned request never falls through to the split;
- `split`: every other request, by weight: `traffic.challengerWeight` and 100 minus it. The weights are the
  only fields that follow the weight, so a weight edit previews as a change of two `weight` fields;
- on `split`, with `traffic.shadow`, a `RequestMirror` filter copies requests to the challenger, which answers
  nobody: every request, or `traffic.shadowPercent` of them (`percent`, standard since v1.3 as the
  HTTPRouteRequestPercentageMirror feature: left out at 100 so a gateway without that feature mirrors all);
- on the HTTPRoute's `split`, with `traffic.sticky`, `sessionPersistence` by cookie (experimental channel
  only at v1.6.3, GEP-1619). A persistent session outranks the weights, even a weight of 0 (GEP-1619,
  "Traffic Splitting"), so with sticky on a variant whose weight is 0 is left out of `split`: a rollback to 0
  then moves the challenger's sessions back to the champion instead of keeping them there. The GRPCRoute
  carries no session persistence: gRPC clients keep no cookies, and pin with the header instead.
"""

from __future__ import annotations

from typing import Mapping

from infra.config import TrafficConfig
from infra.workload import Manifest

GATEWAY_API_GROUP = "gateway.networking.k8s.io"
GATEWAY_API_VERSION = f"{GATEWAY_API_GROUP}/v1"
# The header that pins a request to one variant, and the cookie that keeps a client on its variant.
VARIANT_HEADER = "x-mlserve-variant"
SESSION_COOKIE = "mlserve-variant"
SPLIT_RULE = "split"


def pin_rule_name(variant: str) -> str:
    return f"pin-{variant}"


def parent_ref(traffic: TrafficConfig, listener: str) -> Manifest:
    """The Gateway listener a route attaches to."""
    return {
        "group": GATEWAY_API_GROUP,
        "kind": "Gateway",
        "namespace": traffic.gateway_namespace,
        "name": traffic.gateway_name,
        "sectionName": listener,
    }


def backend_ref(service: str, port: int, weight: int | None = None) -> Manifest:
    # The group of a core Service is "" (the CRD's default); an empty string is left out, as the server stores it.
    ref: Manifest = {"kind": "Service", "name": service, "port": port}
    if weight is not None:
        ref["weight"] = weight
    return ref


def split_backends(traffic: TrafficConfig, services: Mapping[str, str], port: int) -> list[Manifest]:
    """The weighted backends of the `split` rule: the champion, and the challenger unless it is a shadow."""
    weights = {"champion": traffic.champion_weight, "challenger": traffic.challenger_weight}
    if traffic.shadow or "challenger" not in services:
        weights = {"champion": 100}
    if traffic.sticky:
        # A session outranks a weight, even 0 (GEP-1619): a variant at 0 must not be a backend at all.
        weights = {variant: weight for variant, weight in weights.items() if weight > 0}
    return [backend_ref(services[variant], port, weight) for variant, weight in weights.items()]


def mirror_filter(traffic: TrafficConfig, services: Mapping[str, str], port: int) -> Manifest:
    """RequestMirror to the shadow challenger; `percent` only below 100 (an extended feature of its own)."""
    mirror: Manifest = {"backendRef": backend_ref(services["challenger"], port)}
    if traffic.shadow_percent < 100:
        mirror["percent"] = traffic.shadow_percent
    return {"type": "RequestMirror", "requestMirror": mirror}


def session_persistence(traffic: TrafficConfig) -> Manifest:
    """Cookie-based session persistence: a session cookie (Core), or with `stickyTimeout` a permanent one."""
    persistence: Manifest = {"type": "Cookie", "sessionName": SESSION_COOKIE}
    if traffic.sticky_timeout:
        # The CRD requires absoluteTimeout with a Permanent cookie, whose Max-Age/Expires it sets.
        persistence["absoluteTimeout"] = traffic.sticky_timeout
        persistence["cookieConfig"] = {"lifetimeType": "Permanent"}
    return persistence


def _rules(
    traffic: TrafficConfig, services: Mapping[str, str], port: int, header_match: Manifest, sticky: bool
) -> list[Manifest]:
    rules: list[Manifest] = [
        {
            "name": pin_rule_name(variant),
            "matches": [{"headers": [{**header_match, "value": variant}]}],
            "backendRefs": [backend_ref(service, port)],
        }
        for variant, service in services.items()
    ]
    split: Manifest = {"name": SPLIT_RULE, "backendRefs": split_backends(traffic, services, port)}
    if traffic.shadow and "challenger" in services:
        split["filters"] = [mirror_filter(traffic, services, port)]
    if sticky and traffic.sticky:
        split["sessionPersistence"] = session_persistence(traffic)
    rules.append(split)
    return rules


def http_route_spec(traffic: TrafficConfig, services: Mapping[str, str], port: int) -> Manifest:
    """The HTTPRoute: pinning rules, then the weighted (and mirrored, and sticky) split, on `traffic.httpListener`.
    `services` maps each variant the stack runs to its ClusterIP Service; `port` is their HTTP port."""
    header = {"type": "Exact", "name": VARIANT_HEADER}
    return {
        "parentRefs": [parent_ref(traffic, traffic.http_listener)],
        "rules": _rules(traffic, services, port, header, sticky=True),
    }


def grpc_route_spec(traffic: TrafficConfig, services: Mapping[str, str], grpc_port: int) -> Manifest:
    """The GRPCRoute of the OIP gRPC port: the same pinning and split (gRPC metadata is the header), no cookies."""
    header = {"type": "Exact", "name": VARIANT_HEADER}
    return {
        "parentRefs": [parent_ref(traffic, traffic.grpc_listener)],
        "rules": _rules(traffic, services, grpc_port, header, sticky=False),
    }


def gateway_spec(traffic: TrafficConfig, route_namespace: str, http_port: int, grpc_port: int) -> Manifest:
    """The Gateway the stack creates with `traffic.createGateway`: an HTTP listener for the HTTPRoute and one for
    the GRPCRoute (h2c, which Gateway API implementations of GRPCRoute over HTTP must accept), each admitting
    only its route kind from the model's namespace."""

    def allowed(kind: str) -> Manifest:
        if route_namespace == traffic.gateway_namespace:
            namespaces: Manifest = {"from": "Same"}
        else:
            namespaces = {
                "from": "Selector",
                "selector": {"matchLabels": {"kubernetes.io/metadata.name": route_namespace}},
            }
        return {"namespaces": namespaces, "kinds": [{"group": GATEWAY_API_GROUP, "kind": kind}]}

    return {
        "gatewayClassName": traffic.gateway_class_name,
        "listeners": [
            {"name": traffic.http_listener, "protocol": "HTTP", "port": http_port, "allowedRoutes": allowed("HTTPRoute")},
            {"name": traffic.grpc_listener, "protocol": "HTTP", "port": grpc_port, "allowedRoutes": allowed("GRPCRoute")},
        ],
    }

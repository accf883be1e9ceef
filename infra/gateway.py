"""Champion/challenger traffic on the Kubernetes Gateway API (`traffic.router: gateway`): the `GatewayTraffic`
component. Per variant the plain path's Deployment, HPA, PodDisruptionBudget and NetworkPolicy and a ClusterIP
Service (`infra.variant_resources`); in front of them an HTTPRoute and a GRPCRoute, and the Gateway itself when
`traffic.createGateway` asks for it (`infra.gateway_specs`, where the routes' shape is explained).

No controller of ours runs in the pods (no executor, no sidecar), so every pod of this path meets Pod Security
`restricted`. The provider does not wait on a route or a Gateway: pulumi-kubernetes has no await logic for
them (provider/pkg/await/awaiters.go, the `awaiters` table, has none for gateway.networking.k8s.io) and, without
a `pulumi.com/waitFor` annotation or PULUMI_K8S_AWAIT_ALL, treats them as ready once the API server stores them
(provider/pkg/metadata/overrides.go, ReadyCondition), so `pulumi up` succeeds on a cluster whose gateway
controller has not (yet) accepted them: check `kubectl get httproute -o yaml` for the Accepted condition.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.config import AutoscalingConfig, LoadBalancerConfig, PodConfig, TrafficConfig
from infra.gateway_specs import GATEWAY_API_VERSION, gateway_spec, grpc_route_spec, http_route_spec
from infra.services import metadata
from infra.variant_resources import create_variant_service, create_variant_workload
from infra.workload import resource_name, standard_labels


@dataclass(frozen=True)
class GatewayTrafficArgs:
    pod: PodConfig
    autoscaling: AutoscalingConfig
    load_balancer: LoadBalancerConfig
    traffic: TrafficConfig
    image: pulumi.Input[str]


class GatewayTraffic(pulumi.ComponentResource):
    """Per variant a Deployment, HPA, PDB, NetworkPolicy and ClusterIP Service; the HTTPRoute and GRPCRoute that
    split, pin and mirror traffic between them; the Gateway when the stack creates it."""

    def __init__(self, name: str, args: GatewayTrafficArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlserve:gateway:GatewayTraffic", name, None, opts)
        identity, serving, traffic = args.pod.identity, args.pod.serving, args.traffic
        variants = args.pod.model.variants
        # A route names its Services and its Gateway: create those first, so a gateway controller that is
        # watching never reports a backend or parent it cannot resolve.
        route_needs: list[pulumi.Resource] = []
        for variant in variants:
            create_variant_workload(name, variant, args.pod, args.autoscaling, args.load_balancer, args.image, parent=self)
            route_needs.append(create_variant_service(name, variant, args.pod, args.load_balancer, parent=self))
        if traffic.create_gateway:
            gateway = k8s.apiextensions.CustomResource(
                f"{name}-gateway",
                api_version=GATEWAY_API_VERSION,
                kind="Gateway",
                metadata={"name": traffic.gateway_name, "namespace": traffic.gateway_namespace,
                          "labels": standard_labels(identity)},
                spec=gateway_spec(traffic, identity.namespace, args.load_balancer.port, serving.grpc_port),
                opts=pulumi.ResourceOptions(parent=self),
            )
            route_needs.append(gateway)
        backends = {variant: resource_name(identity, variant) for variant in variants}
        routes = (
            ("HTTPRoute", http_route_spec(traffic, backends, serving.port)),
            ("GRPCRoute", grpc_route_spec(traffic, backends, serving.grpc_port)),
        )
        for kind, spec in routes:
            k8s.apiextensions.CustomResource(
                f"{name}-{kind.lower()}",
                api_version=GATEWAY_API_VERSION,
                kind=kind,
                metadata=metadata(identity, identity.app_name),
                spec=spec,
                opts=pulumi.ResourceOptions(parent=self, depends_on=route_needs),
            )
        self.register_outputs({})

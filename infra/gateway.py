"""Champion/challenger traffic on the Kubernetes Gateway API (`traffic.router: gateway`): the `GatewayTraffic`
component. Per variant the plain path's Deployment, HPA, PodDisruptionBudget and NetworkPolicy and a ClusterIP
Service (`infra.services`); in front of them an HTTPRoute and a GRPCRoute, and the Gateway itself when
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
from infra.services import deployment_spec, hpa_spec, metadata, network_policy_spec, pdb_spec, service_spec
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
        pod, identity, serving, load_balancer = args.pod, args.pod.identity, args.pod.serving, args.load_balancer
        traffic = args.traffic
        child = pulumi.ResourceOptions(parent=self)
        services: dict[str, k8s.core.v1.Service] = {}
        for variant in pod.model.variants:
            workload = resource_name(identity, variant)
            k8s.apps.v1.Deployment(
                f"{name}-{variant}",
                metadata=metadata(identity, workload, variant),
                spec=deployment_spec(pod, args.autoscaling, variant, args.image),
                opts=child,
            )
            if args.autoscaling.enabled:
                k8s.autoscaling.v2.HorizontalPodAutoscaler(
                    f"{name}-{variant}-hpa",
                    metadata=metadata(identity, workload, variant),
                    spec=hpa_spec(identity, args.autoscaling, variant),
                    opts=child,
                )
            k8s.policy.v1.PodDisruptionBudget(
                f"{name}-{variant}-pdb",
                metadata=metadata(identity, workload, variant),
                spec=pdb_spec(identity, serving, variant),
                opts=child,
            )
            k8s.networking.v1.NetworkPolicy(
                f"{name}-{variant}-netpol",
                metadata=metadata(identity, workload, variant),
                spec=network_policy_spec(identity, serving, load_balancer, variant),
                opts=child,
            )
            services[variant] = k8s.core.v1.Service(
                f"{name}-{variant}-svc",
                metadata=metadata(identity, workload, variant),
                spec=service_spec(identity, serving, load_balancer, variant, public=False),
                opts=child,
            )
        backends = {variant: resource_name(identity, variant) for variant in pod.model.variants}
        # A route names its Services and its Gateway: create those first, so a gateway controller that is
        # watching never reports a backend or parent it cannot resolve.
        route_needs: list[pulumi.Resource] = list(services.values())
        if traffic.create_gateway:
            gateway = k8s.apiextensions.CustomResource(
                f"{name}-gateway",
                api_version=GATEWAY_API_VERSION,
                kind="Gateway",
                metadata={"name": traffic.gateway_name, "namespace": traffic.gateway_namespace,
                          "labels": standard_labels(identity)},
                spec=gateway_spec(traffic, identity.namespace, load_balancer.port, serving.grpc_port),
                opts=child,
            )
            route_needs.append(gateway)
        after_services = pulumi.ResourceOptions(parent=self, depends_on=route_needs)
        k8s.apiextensions.CustomResource(
            f"{name}-httproute",
            api_version=GATEWAY_API_VERSION,
            kind="HTTPRoute",
            metadata=metadata(identity, identity.app_name),
            spec=http_route_spec(traffic, backends, serving.port),
            opts=after_services,
        )
        k8s.apiextensions.CustomResource(
            f"{name}-grpcroute",
            api_version=GATEWAY_API_VERSION,
            kind="GRPCRoute",
            metadata=metadata(identity, identity.app_name),
            spec=grpc_route_spec(traffic, backends, serving.grpc_port),
            opts=after_services,
        )
        self.register_outputs({})

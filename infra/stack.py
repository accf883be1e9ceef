"""The whole stack: config in, components built, outputs exported. `__main__.py` and `infra.render` both call it."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from infra import outputs
from infra.access import ModelAccess, ModelAccessArgs
from infra.config import Identity, ImageConfig, StackConfig, TrafficConfig
from infra.feedback import Feedback, FeedbackArgs
from infra.gateway import GatewayTraffic, GatewayTrafficArgs
from infra.image import BentoImage, BentoImageArgs
from infra.image_context import DockerContext
from infra.monitoring import Monitoring, MonitoringArgs
from infra.platform import Platform, PlatformArgs
from infra.seldon import SeldonTraffic, SeldonTrafficArgs
from infra.serving import ModelServing, ModelServingArgs
from infra.workload import standard_labels


def namespace_labels(identity: Identity, traffic: TrafficConfig) -> dict[str, str]:
    """Pod Security Admission: enforce 'restricted' where every container is ours (the plain and the gateway
    path). Seldon adds its executor container to each predictor pod, which is not restricted-compliant, so
    there we enforce 'baseline' and keep 'restricted' as a warning."""
    enforce = "baseline" if traffic.router == "seldon" else "restricted"
    return {
        **standard_labels(identity),
        "pod-security.kubernetes.io/enforce": enforce,
        "pod-security.kubernetes.io/enforce-version": "latest",
        "pod-security.kubernetes.io/warn": "restricted",
    }


def image_to_run(identity: Identity, image: ImageConfig, docker_context: DockerContext | None) -> pulumi.Input[str]:
    """`image.reference` when the stack is given one; else the digest of the image built from `docker_context`."""
    if image.reference:
        return image.reference
    if docker_context is None:
        raise ValueError("build_stack needs the image's build context unless image.reference is set")
    return BentoImage(identity.app_name, BentoImageArgs(config=image, context=docker_context)).digest_reference


def build_stack(config: StackConfig, docker_context: DockerContext | None) -> None:
    """Create every resource of the stack described by `config` and export its outputs. The image is built from
    `docker_context`, unless `image.reference` names one to run (then `docker_context` is None). Here the config
    is split: each component gets only the sections it reads."""
    identity, traffic = config.identity, config.traffic
    name = identity.app_name
    namespace = k8s.core.v1.Namespace(
        "namespace", metadata={"name": identity.namespace, "labels": namespace_labels(identity, traffic)}
    )
    image_reference = image_to_run(identity, config.image, docker_context)
    platform = Platform(
        "platform",
        PlatformArgs(identity=identity, platform=config.platform, load_balancer=config.load_balancer, traffic=traffic),
    )
    access = ModelAccess(
        name, ModelAccessArgs(identity=identity, access=config.access), opts=pulumi.ResourceOptions(depends_on=[namespace])
    )
    after_platform = pulumi.ResourceOptions(depends_on=[namespace, access, *platform.ready])
    if traffic.router == "seldon":
        SeldonTraffic(
            name,
            SeldonTrafficArgs(pod=config.pod, autoscaling=config.autoscaling, load_balancer=config.load_balancer,
                              seldon=config.seldon, traffic=traffic, image=image_reference),
            opts=after_platform,
        )
        endpoint = platform.endpoint or ""
    elif traffic.router == "gateway":
        # The way in is the Gateway's address, which its controller reports on the Gateway, not to this program.
        GatewayTraffic(
            name,
            GatewayTrafficArgs(pod=config.pod, autoscaling=config.autoscaling, load_balancer=config.load_balancer,
                               traffic=traffic, image=image_reference),
            opts=after_platform,
        )
        endpoint = ""
    else:
        serving = ModelServing(
            name,
            ModelServingArgs(pod=config.pod, autoscaling=config.autoscaling, load_balancer=config.load_balancer,
                             image=image_reference),
            opts=after_platform,
        )
        endpoint = serving.endpoint
    Monitoring(
        name,
        MonitoringArgs(identity=identity, model=config.model, monitoring=config.monitoring, alerts=config.alerts,
                       traffic=traffic),
        opts=pulumi.ResourceOptions(depends_on=[namespace]),
    )
    Feedback(
        name,
        FeedbackArgs(identity=identity, feedback=config.feedback, serving=config.serving),
        opts=pulumi.ResourceOptions(depends_on=[namespace]),
    )
    pulumi.export(outputs.NAMESPACE, identity.namespace)
    pulumi.export(outputs.IMAGE, image_reference)
    pulumi.export(outputs.ENDPOINT, endpoint)
    pulumi.export(outputs.CHALLENGER_WEIGHT, traffic.challenger_weight)
    pulumi.export(outputs.VARIANTS, list(config.model.variants))

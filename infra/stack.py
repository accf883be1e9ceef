"""The whole stack: config in, components built, outputs exported. `__main__.py` and `infra.render` both call it."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from infra import outputs
from infra.config import StackConfig
from infra.image import BentoImage, BentoImageArgs, DockerContext
from infra.serving import ModelServing, ModelServingArgs
from infra.workload import standard_labels


def build_stack(config: StackConfig, docker_context: DockerContext) -> None:
    """Create every resource of the stack described by `config` and export its outputs."""
    namespace = k8s.core.v1.Namespace(
        "namespace",
        metadata={
            "name": config.namespace,
            "labels": {
                **standard_labels(config),
                # Pod Security Admission enforces what the pod builders already do.
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            },
        },
    )
    image = BentoImage(config.app_name, BentoImageArgs(config=config.image, context=docker_context))
    serving = ModelServing(
        config.app_name,
        ModelServingArgs(config=config, image=image.digest_reference),
        opts=pulumi.ResourceOptions(depends_on=[namespace]),
    )
    pulumi.export(outputs.NAMESPACE, config.namespace)
    pulumi.export(outputs.IMAGE, image.digest_reference)
    pulumi.export(outputs.ENDPOINT, serving.endpoint)
    pulumi.export(outputs.CHALLENGER_WEIGHT, config.traffic.challenger_weight)
    pulumi.export(outputs.VARIANTS, list(config.variants))

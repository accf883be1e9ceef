"""The model-server image: `BentoImage` builds and pushes a build context made by `infra.image_context` with
`pulumi_docker.Image`; pods run its immutable `repo_digest`, never a tag."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from infra.config import ImageConfig
from infra.image_context import DockerContext


@dataclass(frozen=True)
class BentoImageArgs:
    config: ImageConfig
    context: DockerContext


class BentoImage(pulumi.ComponentResource):
    """The BentoML image, built from an exported bento; `digest_reference` is what pods run."""

    digest_reference: pulumi.Output[str]

    def __init__(self, name: str, args: BentoImageArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlserve:image:BentoImage", name, None, opts)
        config = args.config
        image = docker.Image(
            f"{name}-image",
            image_name=f"{config.repository}:{args.context.tag}",
            build=docker.DockerBuildArgs(
                context=str(args.context.directory),
                dockerfile=str(args.context.directory / args.context.dockerfile),
                platform=config.platform,
            ),
            skip_push=not config.push,
            opts=pulumi.ResourceOptions(parent=self),
        )
        # A pushed image's repo digest is REPOSITORY@sha256:...; pods never run a mutable tag.
        self.digest_reference = image.repo_digest
        self.register_outputs({"digest_reference": self.digest_reference})

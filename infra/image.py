"""The model-server image: `bentoml build` of the `service` package, exported as a Docker build context, built and
pushed by `pulumi_docker.Image`.

Downstream resources use the image's `repo_digest` (immutable), never a tag. BentoML 1.4 writes the
Dockerfile only when a bento is containerized, so `export_docker_context` asks BentoML for exactly
the context `bentoml containerize` would hand Docker and copies it out; Pulumi's Docker provider then
builds that, so no BentoML is needed at `docker build` time and no Docker daemon at `bentoml build` time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_docker as docker

from infra.config import PROJECT_DIR, ImageConfig
from infra.errors import ImageBuildError

DOCKERFILE = "env/docker/Dockerfile"


@dataclass(frozen=True)
class DockerContext:
    """A directory Docker can build, and the Dockerfile in it (relative path)."""

    directory: Path
    dockerfile: str = DOCKERFILE
    bento_tag: str | None = None


def bento_environment() -> dict[str, str]:
    """Environment for BentoML: telemetry off, and its home outside the build context (under MLSERVE_HOME)."""
    home = Path(os.environ.get("MLSERVE_HOME", PROJECT_DIR / ".mlserve"))
    return {
        **os.environ,
        "BENTOML_HOME": os.environ.get("BENTOML_HOME", str(home / "bentoml")),
        "BENTOML_DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
    }


def export_docker_context(service_dir: Path = PROJECT_DIR / "service", out_dir: Path = PROJECT_DIR / "build" / "image") -> DockerContext:
    """Run `bentoml build` with `service_dir`'s bentofile (context: its parent) and write the resulting Docker build context to `out_dir`."""
    # The build context is the repository root, so the bento holds the `service` package as in the checkout.
    # Without MODEL_URI, importing the service (which `bentoml build` does) needs no registry.
    env = {name: value for name, value in bento_environment().items() if name != "MODEL_URI"}
    build = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-f", str(service_dir / "bentofile.yaml"), str(service_dir.parent),
         "--output", "tag"],
        cwd=service_dir.parent, env=env, capture_output=True, text=True,
    )
    if build.returncode != 0:
        raise ImageBuildError(f"`bentoml build -f {service_dir}/bentofile.yaml` failed (exit {build.returncode}):\n"
                              f"{build.stderr[-4000:]}")
    tag = build.stdout.strip().splitlines()[-1].removeprefix("__tag__:").strip()
    export = subprocess.run(
        [sys.executable, "-c", _EXPORT_SCRIPT, tag, str(out_dir)], env=env, capture_output=True, text=True
    )
    if export.returncode != 0:
        raise ImageBuildError(f"exporting bento {tag} as a Docker build context failed:\n{export.stderr[-4000:]}")
    return DockerContext(directory=out_dir, bento_tag=tag)


# Runs in BentoML's own process (with BENTOML_HOME set): the context `bentoml containerize` would use.
_EXPORT_SCRIPT = """
import shutil, sys
import bentoml
from bentoml._internal.container import construct_containerfile
tag, out_dir = sys.argv[1], sys.argv[2]
with construct_containerfile(bentoml.get(tag)) as (context, _dockerfile):
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.copytree(context, out_dir)
"""


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
        tag = args.context.bento_tag.split(":", 1)[1] if args.context.bento_tag else "latest"
        image = docker.Image(
            f"{name}-image",
            image_name=f"{config.repository}:{tag}",
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

"""The model-server image's build context, content-addressed: `bentoml build` of `service/` exported as a Docker
build context (no Pulumi resources here; `infra.image.BentoImage` builds and pushes it, and pods run its immutable
`repo_digest`).

The image's tag is a hash of everything that goes into it (`ImageInputs`): the source files the bento
includes, the bentofile the build uses (the project's, plus the served models' recorded pip requirements
and the artifact-store clients of `image.artifactStoreClients`), the target platform and the BentoML
version. `bentoml build` would give each run a new random version and write `creation_time` into
`bento.yaml`; here the version is that hash and the time and file dates are fixed, so the exported
context is byte-identical for identical inputs. A run with nothing changed therefore plans no image and
no pod change, and `infra.render` shows the very tag `pulumi up` would push.

Contexts are kept under `build/image/TAG/` (relative to the project, so the Docker provider's inputs do
not depend on where the repository is checked out) and reused while their inputs stay the same.
BentoML 1.4 writes the Dockerfile only when a bento is containerized, so the export asks BentoML
(`construct_containerfile`) for exactly the context `bentoml containerize` would hand Docker.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path

import yaml

from infra.config import PROJECT_DIR, ImageConfig, ModelConfig
from infra.errors import ImageBuildError
from infra.requirements import check_requirements, model_packages, recorded_requirements
from infra.workload import BENTO_UID
from service.names import TELEMETRY_OFF

# The build context is the repository root, so the bento holds the `service` package as in the checkout;
# the bentofile lives in service/.
BUILD_DIR = PROJECT_DIR
BENTOFILE = Path("service") / "bentofile.yaml"
# Contexts, relative to the project directory (Pulumi runs the program there).
CONTEXT_ROOT = Path("build") / "image"
DOCKERFILE = "env/docker/Dockerfile"
TAG_LENGTH = 20
# What bento.yaml says and what every file's date is: a fixed instant, so identical inputs give identical bytes.
FIXED_CREATION_TIME = "2000-01-01T00:00:00+00:00"
FIXED_MTIME = 946684800
# The client packages each artifact store needs to download model files (image.artifactStoreClients).
ARTIFACT_STORE_PACKAGES: dict[str, tuple[str, ...]] = {
    "s3": ("boto3==1.44.5",),
    "gcs": ("google-cloud-storage==3.17.1",),
    "azure": ("azure-storage-blob==12.31.1", "azure-identity==1.27.0"),
}
# Where the machine running pulumi reads the models' requirements when it cannot use model.trackingUri (an
# in-cluster address, say): a property of that machine, not of the stack, like MLflow's own MLFLOW_TRACKING_URI.
REGISTRY_ENV = "MLSERVE_MODEL_REGISTRY_URI"
# Our own settings variables would leak into the bento (e.g. the worker count) and make the build depend on
# the shell it runs in; the build sees none of them.
_BUILD_ENV_PREFIX = "MLSERVE_"


@dataclass(frozen=True)
class DockerContext:
    """A directory Docker can build (relative to the project directory), its Dockerfile, and the image tag."""

    directory: Path
    tag: str
    dockerfile: str = DOCKERFILE


@dataclass(frozen=True)
class ImageInputs:
    """Everything that decides the image's bytes; `tag` is their hash."""

    sources: tuple[tuple[str, str], ...]
    bentofile: str
    platform: str
    model_requirements: tuple[tuple[str, tuple[str, ...]], ...]
    bentoml_version: str

    @property
    def tag(self) -> str:
        described = json.dumps(
            {"sources": self.sources, "bentofile": self.bentofile, "platform": self.platform, "bentoml": self.bentoml_version,
             "uid": BENTO_UID},
            sort_keys=True,
        )
        return hashlib.sha256(described.encode()).hexdigest()[:TAG_LENGTH]

    @property
    def extra_packages(self) -> tuple[str, ...]:
        return tuple((yaml.safe_load(self.bentofile).get("python") or {}).get("packages") or ())


def source_files(build_dir: Path, bentofile: dict) -> list[str]:
    """The files `bentoml build` copies from `build_dir` (its include/exclude rules and .bentoignore), sorted."""
    from bentoml._internal.bento.build_config import BentoPathSpec

    spec = BentoPathSpec(bentofile.get("include") or ["*"], bentofile.get("exclude") or [], str(build_dir))
    found = []
    for root, dirs, files in os.walk(build_dir):
        dirs[:] = sorted(d for d in dirs if d not in (".git", ".venv", "venv", "__pycache__", "node_modules", "build", ".mlserve"))
        for name in files:
            relative = os.path.relpath(os.path.join(root, name), build_dir)
            if spec.includes(relative):
                found.append(relative)
    return sorted(found)


def build_registry_uri(model: ModelConfig) -> str:
    """The registry the image build reads the models' requirements from: $MLSERVE_MODEL_REGISTRY_URI, else model.trackingUri."""
    return os.environ.get(REGISTRY_ENV) or model.tracking_uri


def image_inputs(model: ModelConfig, image: ImageConfig, build_dir: Path = BUILD_DIR) -> ImageInputs:
    """The inputs of the image that runs `model`: sources, the models' recorded requirements, the clients asked for."""
    bentofile = yaml.safe_load((build_dir / BENTOFILE).read_text())
    models = {
        uri: tuple(recorded_requirements(build_registry_uri(model), uri))
        for uri in dict.fromkeys(model.uri(variant) for variant in model.variants)
    }
    clients = [package for store in image.artifact_store_clients for package in ARTIFACT_STORE_PACKAGES[store]]
    extras = [*model_packages({uri: list(lines) for uri, lines in models.items()}), *clients]
    python = dict(bentofile.get("python") or {})
    python["packages"] = list(dict.fromkeys([*(python.get("packages") or []), *extras]))
    bentofile["python"] = python
    sources = tuple(
        (path, hashlib.sha256((build_dir / path).read_bytes()).hexdigest()) for path in source_files(build_dir, bentofile)
    )
    return ImageInputs(
        sources=sources,
        bentofile=yaml.safe_dump(bentofile, sort_keys=True),
        platform=image.platform,
        model_requirements=tuple(models.items()),
        bentoml_version=installed_version("bentoml"),
    )


def build_environment(bentoml_home: Path) -> dict[str, str]:
    """The build's environment: ours without MLSERVE_* settings, telemetry off, a private BentoML home."""
    # Without MODEL_URI, importing the service (which `bentoml build` does) needs no registry.
    env = {name: value for name, value in os.environ.items() if not name.startswith(_BUILD_ENV_PREFIX) and name != "MODEL_URI"}
    return {**env, **TELEMETRY_OFF, "BENTOML_HOME": str(bentoml_home)}


def set_image_user(dockerfile: Path, uid: int = BENTO_UID) -> None:
    """Give the image's `bentoml` user `uid` as its uid and gid: the defaults of the Dockerfile's BENTO_USER_UID and
    BENTO_USER_GID build arguments, which BentoML's templates set to 1034."""
    text = dockerfile.read_text()
    changed, count = re.subn(r"^ARG (BENTO_USER_[UG]ID)=\d+$", rf"ARG \1={uid}", text, flags=re.M)
    if count != 2:
        raise ImageBuildError(f"{dockerfile}: expected ARG BENTO_USER_UID and BENTO_USER_GID lines to set the image's "
                              f"user to {uid}; found {count}")
    dockerfile.write_text(changed)


def normalise(context: Path) -> None:
    """Fix what `bentoml build` varies run to run: bento.yaml's creation_time, and every file's date."""
    bento_yaml = context / "bento.yaml"
    text = bento_yaml.read_text()
    bento_yaml.write_text(re.sub(r"^creation_time: .*$", f"creation_time: '{FIXED_CREATION_TIME}'", text, count=1, flags=re.M))
    for path in sorted(context.rglob("*"), reverse=True):
        os.utime(path, (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
    os.utime(context, (FIXED_MTIME, FIXED_MTIME))


def export_docker_context(
    inputs: ImageInputs, build_dir: Path = BUILD_DIR, project_dir: Path = PROJECT_DIR, reuse: bool = True
) -> DockerContext:
    """The Docker build context of `inputs` under `project_dir/build/image/TAG`, built unless a complete one is there.

    Raises ImageBuildError when BentoML fails, and RequirementConflict when the server's pins and the
    models' requirements cannot hold together.
    """
    tag = inputs.tag
    relative = CONTEXT_ROOT / tag
    context = project_dir / relative
    done = context.parent / f"{tag}.done"
    if not (reuse and done.is_file() and context.is_dir()):
        done.unlink(missing_ok=True)
        _build_context(inputs, build_dir, context)
        done.write_text(tag + "\n")
    built = [line.strip() for line in (context / "env" / "python" / "requirements.txt").read_text().splitlines()]
    check_requirements(server_lines(built, inputs.extra_packages), {uri: list(lines) for uri, lines in inputs.model_requirements})
    return DockerContext(directory=relative, tag=tag)


def server_lines(built: list[str], extra_packages: tuple[str, ...]) -> list[str]:
    """The server's own lines of the bento's requirements.txt: BentoML writes the image's packages, then the
    bentofile's (our extras, as one block), then `bentoml` itself."""
    block = list(extra_packages)
    for start in range(len(built) - len(block), -1, -1):
        if built[start:start + len(block)] == block:
            return built[:start] + built[start + len(block):]
    raise ImageBuildError(f"the bento's requirements.txt does not list the extra packages {block} as written")


def _build_context(inputs: ImageInputs, build_dir: Path, context: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="mlserve-bento-") as scratch:
        bentofile = Path(scratch) / "bentofile.yaml"
        bentofile.write_text(inputs.bentofile)
        env = build_environment(Path(scratch) / "bentoml")
        build = subprocess.run(
            [sys.executable, "-m", "bentoml", "build", str(build_dir), "-f", str(bentofile), "--version", inputs.tag,
             "--output", "tag"],
            cwd=build_dir, env=env, capture_output=True, text=True,
        )
        if build.returncode != 0:
            raise ImageBuildError(f"`bentoml build {build_dir}` failed (exit {build.returncode}):\n{build.stderr[-4000:]}")
        bento_tag = build.stdout.strip().splitlines()[-1].removeprefix("__tag__:").strip()
        export = subprocess.run(
            [sys.executable, "-c", _EXPORT_SCRIPT, bento_tag, str(context)], env=env, capture_output=True, text=True
        )
        if export.returncode != 0:
            raise ImageBuildError(f"exporting bento {bento_tag} as a Docker build context failed:\n{export.stderr[-4000:]}")
    set_image_user(context / DOCKERFILE)
    normalise(context)


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


def prepare_image(model: ModelConfig, image: ImageConfig) -> DockerContext | None:
    """The content-addressed build context of the image that runs `model` (what `pulumi up` builds); None when
    `image.reference` names the image to run and nothing is built."""
    if image.reference:
        return None
    return export_docker_context(image_inputs(model, image))

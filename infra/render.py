"""`python -m infra.render --stack STACK --out DIR [--set KEY.PATH=VALUE ...]`: the stack as files, no cluster.

Runs the same `build_stack` as `pulumi up`, under Pulumi's mocks, with the defaults of Pulumi.yaml,
then Pulumi.STACK.yaml, then the `--set` overrides, and writes every Kubernetes object exactly as it
would be applied (apiVersion, kind, metadata, spec; integers as integers) to DIR/KIND-NAME.yaml. Pulumi
resources that are not Kubernetes objects (the Docker image, Helm releases) go to DIR/_pulumi/ as JSON.
The image gets the content-addressed tag `pulumi up` would push (`infra.image_context.prepare_image`: it reads
the served models' requirements from the registry and builds the context once per set of inputs).
Values known only after deployment are written as a marked placeholder, never a made-up real value.
Invalid config exits 2 with every problem listed; an image that cannot be prepared (registry unreachable,
requirement conflict) exits 3 with the reason. Diff two output folders to review a config change.
`--local-registry` reads the requirements from the local demo registry (SQLite under MLSERVE_HOME, default
`.mlserve/`) instead of `model.trackingUri`, registering the demo models there first when the stack serves the demo
model and they are missing: a fresh clone renders the committed stacks with no remote registry.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import yaml

from infra.config import StackConfig, load_stack_config, parse_override
from infra.errors import ConfigError, ImageBuildError
from infra.image_context import REGISTRY_ENV, DockerContext, prepare_image
from infra.stack import build_stack

UNKNOWN_DIGEST = "<digest known after pulumi up>"
PULUMI_DIR = "_pulumi"
_MANIFEST_KEYS_FIRST = ("apiVersion", "kind", "metadata")


@dataclass(frozen=True)
class RenderedResource:
    """One resource the program registered: its Pulumi type and name, and its inputs as applied."""

    type: str
    name: str
    inputs: dict[str, Any]

    @property
    def is_kubernetes_object(self) -> bool:
        return self.type.startswith("kubernetes:") and "apiVersion" in self.inputs and "kind" in self.inputs

    @property
    def manifest(self) -> dict[str, Any]:
        """The Kubernetes object: apiVersion, kind, metadata first, nested keys sorted so renders diff cleanly."""
        ordered = {name: self.inputs[name] for name in _MANIFEST_KEYS_FIRST if name in self.inputs}
        ordered.update({name: self.inputs[name] for name in sorted(self.inputs) if name not in ordered})
        return {name: sorted_keys(value) for name, value in ordered.items()}

    @property
    def kind(self) -> str:
        return self.inputs.get("kind") or self.type.rsplit(":", 1)[-1]

    @property
    def object_name(self) -> str:
        return (self.inputs.get("metadata") or {}).get("name") or self.name

    @property
    def file_name(self) -> str:
        if self.is_kubernetes_object:
            return f"{self.kind.lower()}-{self.object_name}.yaml"
        return f"{PULUMI_DIR}/{self.type.rsplit(':', 1)[-1].lower()}-{self.name}.json"


def integers_as_integers(value: Any) -> Any:
    """Pulumi's mocks hand every number over as a float; Kubernetes wants 3, not 3.0."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {name: integers_as_integers(item) for name, item in value.items()}
    if isinstance(value, list):
        return [integers_as_integers(item) for item in value]
    return value


def sorted_keys(value: Any) -> Any:
    """Mappings with their keys sorted, recursively; lists keep their order."""
    if isinstance(value, dict):
        return {name: sorted_keys(value[name]) for name in sorted(value)}
    if isinstance(value, list):
        return [sorted_keys(item) for item in value]
    return value


SECRET_PLACEHOLDER = "<secret>"
# How the engine hands a secret input to the mocks: {SIG_KEY: SECRET_SIG, "value": plaintext}
# (pulumi/runtime/rpc.py, `_special_sig_key` and `_special_secret_sig`).
SIG_KEY, SECRET_SIG = "4dabf18193072939515e22adb298388d", "1b47061264138c4ac30d75fd1eb44270"


def secrets_masked(value: Any, secret: bool = False) -> Any:
    """Every scalar inside a secret input replaced by a placeholder (the shape kept, so the object still
    validates): a rendered file never holds a secret in plain text."""
    if isinstance(value, dict):
        if value.get(SIG_KEY) == SECRET_SIG:
            return secrets_masked(value.get("value"), secret=True)
        return {key: secrets_masked(item, secret) for key, item in value.items()}
    if isinstance(value, list):
        return [secrets_masked(item, secret) for item in value]
    return SECRET_PLACEHOLDER if secret else value


class RecordingMocks(pulumi.runtime.Mocks):
    """Pulumi mocks that record every resource and answer outputs a preview would not know yet."""

    def __init__(self) -> None:
        self.resources: list[RenderedResource] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        inputs = secrets_masked(integers_as_integers(dict(args.inputs)))
        self.resources.append(RenderedResource(type=args.typ, name=args.name, inputs=inputs))
        outputs = dict(inputs)
        if args.typ == "docker:index/image:Image":
            outputs["repoDigest"] = f"{inputs['imageName'].rsplit(':', 1)[0]}@{UNKNOWN_DIGEST}"
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        return {}


_mocks: RecordingMocks | None = None
# The event loop the Pulumi runtime runs on in this process: its settings and futures belong to the loop current
# when the mocks were installed, and code in between (`asyncio.run` unsets the current loop when it ends) must not
# leave the next render on another loop ("await wasn't used with future").
_loop: asyncio.AbstractEventLoop | None = None


def install_mocks() -> RecordingMocks:
    """Install the recording mocks once per process (`set_mocks` is process-global), on the runtime's own loop."""
    global _mocks, _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
    asyncio.set_event_loop(_loop)
    if _mocks is None:
        _mocks = RecordingMocks()
        pulumi.runtime.set_mocks(_mocks, project="mlserve", stack="render", preview=False)
    return _mocks


def render_resources(config: StackConfig, context: DockerContext | None = None) -> list[RenderedResource]:
    """Run the program for `config` under the mocks; every resource it registers, in a stable order.

    The image context is the one `pulumi up` would build (`prepare_image`: same inputs, same tag) unless given.
    """
    if context is None:
        context = prepare_image(config.model, config.image)
    mocks = install_mocks()
    mocks.resources.clear()
    pulumi.runtime.test(lambda: build_stack(config, context))()
    # The stack and our components are groupings, not things that get applied.
    resources = [r for r in mocks.resources if not r.type.startswith(("pulumi:", "mlserve:"))]
    return sorted(resources, key=lambda r: (not r.is_kubernetes_object, r.kind, r.object_name, r.name))


def write_resources(resources: list[RenderedResource], out_dir: Path) -> list[Path]:
    """Write each resource to its own file under a fresh `out_dir`; returns the paths in order."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    paths = []
    for resource in resources:
        path = out_dir / resource.file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        if resource.is_kubernetes_object:
            path.write_text(yaml.safe_dump(resource.manifest, sort_keys=False, width=120))
        else:
            path.write_text(json.dumps({"type": resource.type, "name": resource.name, "inputs": resource.inputs}, indent=2, sort_keys=True) + "\n")
        paths.append(path)
    return paths


def use_local_registry(config: StackConfig) -> str:
    """Point the image build at the local demo registry (as ``MLSERVE_MODEL_REGISTRY_URI`` would), registering the
    demo models in it first when the stack serves the demo model and they are missing; returns the registry URI."""
    from service.names import DEMO_MODEL_NAME, mlserve_home
    from service.settings import parse_model_uri

    registry_uri = f"sqlite:///{mlserve_home() / 'mlflow.db'}"
    os.environ[REGISTRY_ENV] = registry_uri
    if any(parse_model_uri(config.model.uri(variant))[0] == DEMO_MODEL_NAME for variant in config.model.variants):
        from service.train import demo_models_registered, ensure_demo_models

        if not demo_models_registered(registry_uri):
            print(f"registering the demo models in {registry_uri}", file=sys.stderr, flush=True)
            ensure_demo_models(registry_uri)
    return registry_uri


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.render", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", required=True, help="stack name; reads Pulumi.STACK.yaml")
    parser.add_argument("--out", required=True, type=Path, help="folder to write (replaced)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY.PATH=VALUE",
        help="override a config key, e.g. --set traffic.challengerWeight=25 (repeatable)",
    )
    parser.add_argument(
        "--local-registry", action="store_true",
        help="read the models' requirements from the local demo registry (MLSERVE_HOME, default .mlserve/), "
             "not model.trackingUri; the demo models are registered there first when the stack serves them",
    )
    args = parser.parse_args(argv)
    try:
        overrides = dict(parse_override(assignment) for assignment in args.set)
        config = load_stack_config(args.stack, overrides=overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        if args.local_registry:
            use_local_registry(config)
        resources = render_resources(config)
    except ImageBuildError as err:
        hint = "" if args.local_registry else (
            "\nTo render without that registry, add --local-registry: the local demo registry (MLSERVE_HOME, "
            "default .mlserve/) stands in for it.")
        print(f"error: {err}{hint}", file=sys.stderr)
        return 3
    paths = write_resources(resources, args.out)
    for resource, path in zip(resources, paths):
        namespace = (resource.inputs.get("metadata") or {}).get("namespace")
        where = f"{namespace}/{resource.object_name}" if namespace else resource.object_name
        print(f"{resource.kind:<26} {where:<44} {path}")
    print(f"{len(paths)} resources for stack {args.stack!r} written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

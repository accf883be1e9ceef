"""Fixtures for the infra tests: render a stack in-process, as `python -m infra.render` would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from infra.config import PROJECT_DIR, StackConfig, load_stack_config
from infra.image_context import DockerContext, prepare_image
from infra.render import RenderedResource, render_resources

# MLSERVE_CRD_DIR (as engine.cluster reads it) wins; else ../shared/schemas/crds beside the checkout.
SCHEMA_DIR = Path(os.environ.get("MLSERVE_CRD_DIR") or Path(__file__).resolve().parents[3] / "shared" / "schemas" / "crds")
KUBERNETES_VERSION = "1.30.0"
# prod on the Gateway API router (no Seldon, no Istio): what `--set traffic.router=gateway --set
# traffic.gateway=gateway-system/public ...` renders, with the prod stack's 90/10 split.
GATEWAY_PROD = {
    "traffic.router": "gateway",
    "traffic.gateway": "gateway-system/public",
    "platform.installSeldon": False,
    "platform.installIstio": False,
}


def stack_config(stack: str, **overrides: Any) -> StackConfig:
    """The stack's config with dotted-key overrides, e.g. stack_config("prod", **{"gpu.enabled": False})."""
    return load_stack_config(stack, overrides=overrides)


@pytest.fixture(scope="session")
def render() -> Callable[..., list[RenderedResource]]:
    cache: dict[tuple, list[RenderedResource]] = {}
    # The real image context (what `pulumi up` builds), prepared once per set of image inputs: renders that
    # differ elsewhere share it instead of reading the registry again.
    contexts: dict[tuple, DockerContext] = {}

    def _render(stack: str, **overrides: Any) -> list[RenderedResource]:
        cache_key = (stack, repr(sorted(overrides.items(), key=str)))
        if cache_key not in cache:
            config = stack_config(stack, **overrides)
            image_key = (config.image, tuple(config.model.uri(v) for v in config.model.variants))
            if image_key not in contexts:
                contexts[image_key] = prepare_image(config.model, config.image)
            cache[cache_key] = render_resources(config, contexts[image_key])
        return cache[cache_key]

    return _render


def run_render(*args: str) -> subprocess.CompletedProcess:
    """`python -m infra.render ARGS` in a fresh process (it inherits the test registry from tests/conftest.py)."""
    return subprocess.run([sys.executable, "-m", "infra.render", *args], cwd=PROJECT_DIR, capture_output=True, text=True)


def manifests(resources: list[RenderedResource], kind: str | None = None) -> list[dict]:
    return [r.manifest for r in resources if r.is_kubernetes_object and (kind is None or r.kind == kind)]

"""Fixtures for the infra tests: render a stack in-process, as `python -m infra.render` would."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from infra.config import StackConfig, load_stack_config
from infra.render import RenderedResource, render_resources

SCHEMA_DIR = Path(__file__).resolve().parents[3] / "shared" / "schemas" / "crds"
KUBERNETES_VERSION = "1.30.0"


def stack_config(stack: str, **overrides: Any) -> StackConfig:
    """The stack's config with dotted-key overrides, e.g. stack_config("prod", **{"gpu.enabled": False})."""
    return load_stack_config(stack, overrides=overrides)


@pytest.fixture(scope="session")
def render() -> Callable[..., list[RenderedResource]]:
    cache: dict[tuple, list[RenderedResource]] = {}

    def _render(stack: str, **overrides: Any) -> list[RenderedResource]:
        cache_key = (stack, tuple(sorted(overrides.items(), key=str)))
        if cache_key not in cache:
            cache[cache_key] = render_resources(stack_config(stack, **overrides))
        return cache[cache_key]

    return _render


def manifests(resources: list[RenderedResource], kind: str | None = None) -> list[dict]:
    return [r.manifest for r in resources if r.is_kubernetes_object and (kind is None or r.kind == kind)]

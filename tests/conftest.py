"""Process-wide test set-up: telemetry off, Pulumi's mocks installed once before any program runs, and the
image build pointed at a test registry holding the models the stacks name (tests/infra/registry.py)."""

import os

for _name in ("BENTOML_DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
    os.environ[_name] = "true"

from infra.render import install_mocks  # noqa: E402  (after the environment is set)

# `set_mocks` is process-global: set it once, here, before any test imports the program.
install_mocks()


def pytest_sessionstart(session):
    """Every render (in-process or a `python -m infra.render` / `rollout plan` child) reads the served models'
    requirements from the test registry, made once per session, as a deployer would set MLSERVE_MODEL_REGISTRY_URI."""
    from infra.image_context import REGISTRY_ENV
    from tests.infra.registry import infra_registry

    os.environ[REGISTRY_ENV] = infra_registry().uri

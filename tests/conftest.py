"""Process-wide test set-up: telemetry off, and Pulumi's mocks installed once before any program runs."""

import os

for _name in ("BENTOML_DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
    os.environ[_name] = "true"

from infra.render import install_mocks  # noqa: E402  (after the environment is set)

# `set_mocks` is process-global: set it once, here, before any test imports the program.
install_mocks()

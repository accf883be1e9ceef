"""mlserve's Pulumi program: load the stack config, build the components, export the outputs."""

import pulumi

from infra.config import load_from_pulumi
from infra.errors import ConfigError
from infra.image import export_docker_context
from infra.stack import build_stack

try:
    config = load_from_pulumi()
except ConfigError as err:
    # RunError prints the message alone: every config problem, no traceback.
    raise pulumi.RunError(str(err)) from err

build_stack(config, export_docker_context())

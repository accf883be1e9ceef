"""mlserve's Pulumi program: load the stack config, build the components, export the outputs."""

import pulumi

from infra.config import load_from_pulumi
from infra.errors import ConfigError, ImageBuildError
from infra.image import prepare_image
from infra.stack import build_stack

try:
    config = load_from_pulumi()
except ConfigError as err:
    # RunError prints the message alone: every config problem, no traceback.
    raise pulumi.RunError(str(err)) from err

try:
    context = prepare_image(config)
except ImageBuildError as err:
    # A requirement conflict or a registry the build cannot read stops the preview with the reason alone.
    raise pulumi.RunError(str(err)) from err

build_stack(config, context)

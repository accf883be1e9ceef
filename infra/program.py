"""mlserve's Pulumi program as a function: load the stack config, prepare the image, build the components.

`__main__.py` calls it when the official CLI runs the project (`pulumi up`, through the Python language host);
`infra.automation` hands the same function to the Automation API as an inline program, where no language host
is needed.
"""

from __future__ import annotations

import pulumi

from infra.config import load_from_pulumi
from infra.errors import ConfigError, ImageBuildError
from infra.image_context import prepare_image
from infra.stack import build_stack


def run_program() -> None:
    """The program body: every config problem, or an image that cannot be prepared, stops it with the reason alone."""
    try:
        config = load_from_pulumi()
    except ConfigError as err:
        # RunError prints the message alone: every config problem, no traceback.
        raise pulumi.RunError(str(err)) from err
    try:
        context = prepare_image(config.model, config.image)
    except ImageBuildError as err:
        # A requirement conflict or a registry the build cannot read stops the preview with the reason alone.
        raise pulumi.RunError(str(err)) from err
    build_stack(config, context)

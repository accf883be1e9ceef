"""One Pulumi stack driven through the Automation API: read, write and remove config keys, then `pulumi up`.

The stack router (rollout.router.StackConfigRouter) and the stack promotion (rollout.promotion.StackPromotion)
both change a stack this way, so every change is an ordinary stack config edit with an ordinary entry in the
stack's history. With `config_only`, changes are written to `Pulumi.<stack>.yaml` and nothing is applied: the
team reviews and applies them in a pull request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from rollout.errors import RouterError


class PulumiStack:
    """A selected stack of the project in `project_dir`; Pulumi CLI failures become `RouterError`s."""

    def __init__(self, stack_name: str, project_dir: Path, *, config_only: bool = False,
                 on_output: Callable[[str], None] | None = None):
        self.stack_name = stack_name
        self.project_dir = Path(project_dir)
        self.config_only = config_only
        self._on_output = on_output
        self._stack = None

    def selected(self):
        """The Automation API's `Stack`, selected once."""
        # Imported here: the Automation API is only needed when a stack is actually driven.
        from pulumi import automation as auto

        from infra.automation import select_stack

        if self._stack is None:
            try:
                # The program runs inline, in this process (no Python language host needed).
                self._stack = select_stack(self.stack_name, self.project_dir)
            except auto.CommandError as err:
                raise RouterError(f"cannot select stack {self.stack_name!r} in {self.project_dir}: {err}") from err
        return self._stack

    def run(self, action: str, call: Callable[[], object]):
        """`call()`, with a failing Pulumi command reported as `RouterError` naming `action`."""
        from pulumi import automation as auto

        try:
            return call()
        except auto.CommandError as err:
            raise RouterError(f"stack {self.stack_name!r}: {action} failed: {err}") from err

    def get(self, key: str) -> str:
        """The value of config `key` (a `--path` key)."""
        stack = self.selected()
        return self.run(f"reading {key}", lambda: stack.get_config(key, path=True)).value

    def set(self, key: str, value: str) -> None:
        """Write config `key` (a `--path` key)."""
        from pulumi.automation import ConfigValue

        stack = self.selected()
        self.run(f"setting {key}", lambda: stack.set_config(key, ConfigValue(value), path=True))

    def remove(self, key: str) -> None:
        """Remove config `key` (a `--path` key) from the stack file."""
        stack = self.selected()
        self.run(f"removing {key}", lambda: stack.remove_config(key, path=True))

    def apply(self, message: str) -> None:
        """`pulumi up` with `message`; nothing in config-only mode."""
        if self.config_only:
            return
        stack = self.selected()
        self.run("pulumi up", lambda: stack.up(message=message, on_output=self._on_output))

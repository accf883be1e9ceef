"""mlserve's program under the real Pulumi engine, through the Automation API, as an inline program.

`select_stack(name)` gives an `automation.Stack` of the project in `project_dir` (so `Pulumi.yaml`'s config
declarations and `Pulumi.NAME.yaml` apply) whose program is `infra.program.run_program`, run in this Python
process: the Automation API starts the SDK's own language server and hands the CLI `--client=ADDRESS`
(`pulumi/automation/_stack.py`, `_server.py`), so no `pulumi-language-python` host is needed. The CLI and the
Kubernetes provider are `pulumi` and its plugins as installed on the machine when a `pulumi` is on PATH, else the
ones `make engine` builds (the provider as an ambient plugin, first on the CLI's PATH). State goes wherever the environment
says (`PULUMI_BACKEND_URL`, or the CLI's login), secrets as the stack's secrets provider says.

A person with the official CLI runs plain `pulumi up` in the project; this module is what `python -m rollout`
and tests/engine use, and what a machine without the language host (ours) can use too.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Mapping

from infra.config import PROJECT_DIR

PROJECT_NAME = "mlserve"


def engine_binaries() -> tuple[Path | None, Path | None]:
    """The CLI's root (ROOT/bin/pulumi) and the provider's folder that `make engine` built, each None when not
    built; both None when a `pulumi` is on PATH (an installed CLI, with its own plugins, wins)."""
    from engine.build import EngineError, group

    if shutil.which("pulumi"):
        return None, None
    found = []
    for name in ("pulumi", "pulumi-kubernetes"):
        spec = group(name)
        try:
            found.append(None if spec.missing() else spec.bin_dir())
        except EngineError:
            found.append(None)
    cli_bin, provider_dir = found
    return (cli_bin.parent if cli_bin else None), provider_dir


def workspace_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The CLI's environment: the built provider first on PATH (an ambient plugin wins over installed ones),
    no update check, and `extra`."""
    _, provider_dir = engine_binaries()
    path = os.environ.get("PATH", "")
    env = {"PULUMI_SKIP_UPDATE_CHECK": "true"}
    if provider_dir is not None:
        env["PATH"] = os.pathsep.join([str(provider_dir), path])
    return {**env, **(extra or {})}


def select_stack(stack_name: str, project_dir: Path = PROJECT_DIR, *, create: bool = False,
                 env: Mapping[str, str] | None = None):
    """The stack `stack_name` of the project in `project_dir`, running this repository's program inline.

    With `create`, the stack is created in the backend when it does not exist yet (`pulumi stack init`).
    Raises `automation.CommandError` (or `StackNotFoundError`) as the Automation API does.
    """
    from pulumi import automation as auto

    from infra.program import run_program

    cli_root, _ = engine_binaries()
    options = auto.LocalWorkspaceOptions(
        work_dir=str(project_dir),
        pulumi_command=auto.PulumiCommand(root=str(cli_root)) if cli_root else None,
        env_vars=workspace_env(env),
    )
    helper = auto.create_or_select_stack if create else auto.select_stack
    return helper(stack_name=stack_name, project_name=PROJECT_NAME, program=run_program, opts=options)


def main(argv: list[str] | None = None) -> int:
    """`python -m infra.automation preview|up|destroy --stack NAME [--diff]`: the program inline, output streamed."""
    import argparse
    import sys

    from pulumi import automation as auto

    parser = argparse.ArgumentParser(prog="python -m infra.automation", description=main.__doc__)
    parser.add_argument("command", choices=["preview", "up", "destroy"])
    parser.add_argument("--stack", required=True, help="stack name; created in the backend when new (reads Pulumi.NAME.yaml)")
    parser.add_argument("--diff", action="store_true", help="show each resource's property-level diff")
    args = parser.parse_args(argv)
    try:
        stack = select_stack(args.stack, create=True)
        run = {"preview": stack.preview, "up": stack.up, "destroy": stack.destroy}[args.command]
        options = {"diff": True} if args.diff and args.command != "destroy" else {}
        run(on_output=print, **options)
    except auto.CommandError as err:
        # The CLI already streamed what went wrong (our config errors included); say where it stopped.
        print(f"error: pulumi {args.command} of stack {args.stack!r} failed:\n{err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

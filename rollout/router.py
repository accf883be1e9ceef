"""Traffic routers: how the scheduler reads and moves the challenger's share of traffic.

Every router speaks the same small protocol (`get_weight`, `set_weight`, `promote`), so the scheduler
does not know whether a step is a Pulumi stack update (`StackConfigRouter`, for real clusters) or a
runtime command to a local HAProxy (`HAProxyRouter`, for the demo and the integration tests).
`make_router` picks one by its type string.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Callable, Protocol

from rollout.errors import RouterError

WEIGHT_KEY = "traffic.challengerWeight"
CHAMPION_URI_KEY = "model.championUri"
CHALLENGER_URI_KEY = "model.challengerUri"


class TrafficRouter(Protocol):
    """Moves traffic between the champion and the challenger."""

    def get_weight(self) -> int:
        """The challenger's current share of traffic, in percent (0..100)."""
        ...

    def set_weight(self, percent: int) -> None:
        """Send `percent` of traffic to the challenger and the rest to the champion."""
        ...

    def promote(self) -> str:
        """Make the challenger the champion; returns a one-line description of what changed."""
        ...


def check_weight(percent: object) -> int:
    """`percent` as an int in 0..100, or RouterError naming the bad value."""
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise RouterError(f"challenger weight must be an integer percent 0..100, got {percent!r}")
    return percent


class StackConfigRouter:
    """Each weight change is `pulumi config set --path traffic.challengerWeight N` then `pulumi up`.

    Driven through the Pulumi Automation API on the project in `project_dir`, so every step is an
    ordinary update in the stack's history. With `config_only`, changes are written to
    `Pulumi.<stack>.yaml` and nothing is applied: the team reviews and applies them in a pull request.
    """

    def __init__(
        self,
        stack_name: str,
        project_dir: Path,
        *,
        config_only: bool = False,
        default_weight: int = 0,
        on_output: Callable[[str], None] | None = None,
    ):
        self.stack_name = stack_name
        self.default_weight = default_weight
        self.project_dir = Path(project_dir)
        self.config_only = config_only
        self._on_output = on_output
        self._stack = None

    def _selected_stack(self):
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

    def _run(self, action: str, call: Callable[[], object]):
        from pulumi import automation as auto

        try:
            return call()
        except auto.CommandError as err:
            raise RouterError(f"stack {self.stack_name!r}: {action} failed: {err}") from err

    def get_weight(self) -> int:
        """Read `traffic.challengerWeight` from the stack's config (`default_weight` when the stack does not set it)."""
        from pulumi import automation as auto

        stack = self._selected_stack()
        try:
            value = stack.get_config(WEIGHT_KEY, path=True).value
        except auto.CommandError as err:
            # A stack file without the key runs on Pulumi.yaml's default, which `config get` does not report.
            if "not found" in str(err):
                return self.default_weight
            raise RouterError(f"stack {self.stack_name!r}: reading {WEIGHT_KEY} failed: {err}") from err
        try:
            return check_weight(int(value))
        except ValueError as err:
            raise RouterError(f"stack {self.stack_name!r}: {WEIGHT_KEY} is {value!r}, not an integer 0..100") from err

    def _apply(self, message: str) -> None:
        if self.config_only:
            return
        stack = self._selected_stack()
        self._run("pulumi up", lambda: stack.up(message=message, on_output=self._on_output))

    def set_weight(self, percent: int) -> None:
        """Write the weight to stack config and, unless config-only, apply it with `pulumi up`."""
        percent = check_weight(percent)
        stack = self._selected_stack()
        from pulumi.automation import ConfigValue

        self._run(f"setting {WEIGHT_KEY}", lambda: stack.set_config(WEIGHT_KEY, ConfigValue(str(percent)), path=True))
        self._apply(f"rollout: {WEIGHT_KEY}={percent}")

    def promote(self) -> str:
        """championUri := challengerUri, challengerUri removed, weight 0; applied as one update."""
        from pulumi.automation import ConfigValue

        stack = self._selected_stack()
        challenger_uri = self._run(
            f"reading {CHALLENGER_URI_KEY}", lambda: stack.get_config(CHALLENGER_URI_KEY, path=True)
        ).value
        if not challenger_uri:
            raise RouterError(f"stack {self.stack_name!r} has no {CHALLENGER_URI_KEY} to promote")
        self._run(
            f"setting {CHAMPION_URI_KEY}",
            lambda: stack.set_config(CHAMPION_URI_KEY, ConfigValue(challenger_uri), path=True),
        )
        self._run(f"removing {CHALLENGER_URI_KEY}", lambda: stack.remove_config(CHALLENGER_URI_KEY, path=True))
        self._run(f"setting {WEIGHT_KEY}", lambda: stack.set_config(WEIGHT_KEY, ConfigValue("0"), path=True))
        self._apply(f"rollout: promote {challenger_uri} to champion")
        return f"{CHAMPION_URI_KEY} is now {challenger_uri}; {CHALLENGER_URI_KEY} removed; {WEIGHT_KEY}=0"


class HAProxyRouter:
    """Server weights of one HAProxy backend, changed over the runtime API (admin-level stats socket).

    The champion server gets `100 - percent`, the challenger `percent`, so with HAProxy's weighted
    round robin the percentages are exact. Runtime weights live in HAProxy's memory: a rollout process
    that dies and restarts reads them back and resumes.
    """

    def __init__(
        self,
        socket_path: Path,
        *,
        backend: str = "models",
        champion_server: str = "champion",
        challenger_server: str = "challenger",
        on_promote: Callable[[], str] | None = None,
        timeout_seconds: float = 2.0,
    ):
        self.socket_path = Path(socket_path)
        self.backend = backend
        self.champion_server = champion_server
        self.challenger_server = challenger_server
        self._on_promote = on_promote
        self.timeout_seconds = timeout_seconds

    def command(self, line: str) -> str:
        """Send one runtime API command and return HAProxy's answer."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(self.timeout_seconds)
                conn.connect(str(self.socket_path))
                conn.sendall(line.encode() + b"\n")
                chunks = []
                while chunk := conn.recv(65536):
                    chunks.append(chunk)
        except OSError as err:
            raise RouterError(f"HAProxy runtime API at {self.socket_path} did not answer {line!r}: {err}") from err
        return b"".join(chunks).decode().strip()

    def _server_weight(self, server: str) -> int:
        answer = self.command(f"get weight {self.backend}/{server}")
        # The answer reads "5 (initial 1)".
        try:
            return int(answer.split()[0])
        except (IndexError, ValueError) as err:
            raise RouterError(f"HAProxy: unexpected answer to get weight {self.backend}/{server}: {answer!r}") from err

    def get_weight(self) -> int:
        """The challenger's share: its server weight out of the two servers' total."""
        champion, challenger = self._server_weight(self.champion_server), self._server_weight(self.challenger_server)
        if champion + challenger == 0:
            return 0
        return round(100 * challenger / (champion + challenger))

    def set_weight(self, percent: int) -> None:
        """Set challenger weight `percent` and champion weight `100 - percent`."""
        percent = check_weight(percent)
        for server, weight in ((self.challenger_server, percent), (self.champion_server, 100 - percent)):
            answer = self.command(f"set weight {self.backend}/{server} {weight}")
            if answer:
                raise RouterError(f"HAProxy refused set weight {self.backend}/{server} {weight}: {answer}")

    def promote(self) -> str:
        """Run the promotion hook (the demo moves the registry alias) and keep all traffic on the challenger."""
        self.set_weight(100)
        described = self._on_promote() if self._on_promote else "challenger serves all traffic"
        return described


ROUTER_TYPES = ("stack", "haproxy")


def make_router(kind: str, **options) -> TrafficRouter:
    """Build the router named by `kind` ("stack" or "haproxy") from its keyword options."""
    if kind == "stack":
        return StackConfigRouter(**options)
    if kind == "haproxy":
        return HAProxyRouter(**options)
    raise RouterError(f"unknown router type {kind!r}; expected one of {', '.join(ROUTER_TYPES)}")

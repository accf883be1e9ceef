"""Traffic routers: how the scheduler reads and moves the challenger's share of traffic.

Every router speaks the same small protocol (`get_weight`, `set_weight`), so the scheduler does not know
whether a step is a Pulumi stack update (`StackConfigRouter`, for real clusters) or a runtime command to a
local HAProxy (`HAProxyRouter`, for the demo and the integration tests). Routers only move traffic, as
Flagger's do: promotion (new model URIs, registry aliases) is `rollout.promotion`'s, run by the scheduler's
caller. `make_router` picks one by its type string.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Callable, Protocol

from rollout.errors import RouterError
from rollout.pulumi_stack import PulumiStack

WEIGHT_KEY = "traffic.challengerWeight"


class TrafficRouter(Protocol):
    """Moves traffic between the champion and the challenger."""

    def get_weight(self) -> int:
        """The challenger's current share of traffic, in percent (0..100)."""
        ...

    def set_weight(self, percent: int) -> None:
        """Send `percent` of traffic to the challenger and the rest to the champion."""
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
        self.stack = PulumiStack(stack_name, project_dir, config_only=config_only, on_output=on_output)

    def get_weight(self) -> int:
        """Read `traffic.challengerWeight` from the stack's config (`default_weight` when the stack does not set it)."""
        from pulumi import automation as auto

        stack = self.stack.selected()
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

    def set_weight(self, percent: int) -> None:
        """Write the weight to stack config and, unless config-only, apply it with `pulumi up`."""
        percent = check_weight(percent)
        self.stack.set(WEIGHT_KEY, str(percent))
        self.stack.apply(f"rollout: {WEIGHT_KEY}={percent}")


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
        timeout_seconds: float = 2.0,
    ):
        self.socket_path = Path(socket_path)
        self.backend = backend
        self.champion_server = champion_server
        self.challenger_server = challenger_server
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


ROUTER_TYPES = ("stack", "haproxy")


def make_router(kind: str, **options) -> TrafficRouter:
    """Build the router named by `kind` ("stack" or "haproxy") from its keyword options."""
    if kind == "stack":
        return StackConfigRouter(**options)
    if kind == "haproxy":
        return HAProxyRouter(**options)
    raise RouterError(f"unknown router type {kind!r}; expected one of {', '.join(ROUTER_TYPES)}")

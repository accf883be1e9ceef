"""Domain exceptions of the rollout package.

Routers and metrics providers raise these; the scheduler turns metrics failures into `Measurement`
values (phase `error`) so a Prometheus outage holds a rollout instead of ending it.
"""

from __future__ import annotations


class RolloutError(Exception):
    """Base class of every error the rollout package raises on purpose."""


class UsageError(RolloutError):
    """A command-line or stack-config problem; the message names it."""


class RouterError(RolloutError):
    """A traffic router could not read or change the challenger's weight."""


class MetricsUnreachableError(RolloutError):
    """The metrics backend did not answer (connection refused, timeout, 5xx)."""


class MetricsQueryError(RolloutError):
    """The metrics backend answered, but rejected the query or returned something unusable."""


class RolloutLockedError(RolloutError):
    """Another rollout already runs on this stack; `pid` is the process holding the lock."""

    def __init__(self, stack: str, pid: int, lock_path: str):
        self.stack = stack
        self.pid = pid
        self.lock_path = lock_path
        super().__init__(
            f"a rollout is already running on stack {stack!r} (pid {pid}, lock {lock_path}); "
            f"wait for it, or stop it with `python -m rollout abort --stack {stack}`"
        )


class LocalEnvironmentError(RolloutError):
    """A process of the local demo environment (model server, HAProxy, Prometheus) failed to start."""


class PlanError(RolloutError):
    """`rollout plan` could not read one side of the change (a git ref, a stack file, invalid config)."""


class ExplanationError(RolloutError):
    """A variant's model server did not explain: refused (409 no background, 404 explanations off, 4xx), still busy or
    starting after the wait (503), or unreachable. The report notes it; the rollout goes on."""

"""Domain exceptions of the infra package.

Config problems are collected, never raised one by one: a `ConfigError` carries every problem found
so a user fixes their stack file in one pass.
"""

from __future__ import annotations


class InfraError(Exception):
    """Base class of every error the infra package raises on purpose."""


class ConfigError(InfraError):
    """Stack config that cannot be deployed; `problems` lists each one, naming key, value and what is allowed."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"invalid stack config ({len(self.problems)} problem(s)):\n{lines}")


class ImageBuildError(InfraError):
    """`bentoml build` or `bentoml export` of service/ failed."""

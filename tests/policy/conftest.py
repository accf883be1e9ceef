"""The policy tests check rendered stacks: the same cached `render` fixture as the infra tests."""

from tests.infra.conftest import render  # noqa: F401  (a fixture, used by name)

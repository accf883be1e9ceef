"""Shared fixtures for rollout unit tests: default limits and the default five-step plan."""

from __future__ import annotations

import pytest

from rollout.analysis import Thresholds
from rollout.scheduler import RolloutPlan


@pytest.fixture
def limits() -> Thresholds:
    return Thresholds(min_requests=100, max_error_rate=0.01, max_p95_seconds=0.5)


@pytest.fixture
def plan(limits) -> RolloutPlan:
    return RolloutPlan(steps=(5, 10, 25, 50, 100), interval_seconds=60, failure_threshold=2, thresholds=limits)

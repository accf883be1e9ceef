"""Fakes for rollout unit tests: a router that remembers weights, a scripted measurement source,
and a simulated clock so a whole rollout runs in milliseconds (imported by name; tests/ has no packages)."""

from __future__ import annotations

from rollout.analysis import Measurement, Phase


class FakeRouter:
    """Records every weight it was given."""

    def __init__(self, weight: int = 0):
        self.weight = weight
        self.history: list[int] = []

    def get_weight(self) -> int:
        return self.weight

    def set_weight(self, percent: int) -> None:
        self.weight = percent
        self.history.append(percent)


class SimClock:
    """Simulated time: `wait` advances it, and stops the run after `stop_after` waits if given."""

    def __init__(self, stop_after: int | None = None):
        self.now = 1_700_000_000.0
        self.waits = 0
        self.stop_after = stop_after

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.waits += 1
        if self.stop_after is not None and self.waits > self.stop_after:
            return True
        self.now += seconds
        return False


def scripted(phases: str):
    """A measure function answering with phases from a string: P passed, F failed, I inconclusive, E error."""
    codes = {"P": Phase.PASSED, "F": Phase.FAILED, "I": Phase.INCONCLUSIVE, "E": Phase.ERROR}
    remaining = list(phases)
    windows: list[float] = []

    def measure_fn(provider, plan, window_seconds, look=None):
        windows.append(window_seconds)
        phase = codes[remaining.pop(0)]
        return Measurement(phase, f"scripted {phase.value}")

    measure_fn.windows = windows
    return measure_fn

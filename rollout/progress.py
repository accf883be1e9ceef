"""What a person watching a rollout sees and does: a line per decision, a countdown, Ctrl-C, and the exit codes.

Shared by `python -m rollout start` (rollout.cli) and `python -m rollout demo` (rollout.demo): both run the
scheduler in the foreground, print each decision as it happens, and let Ctrl-C or SIGTERM (sent by `abort`)
end the wait between analyses instead of killing the process mid-update.
"""

from __future__ import annotations

import signal
import sys
import threading
import time

from rollout.scheduler import StepRecord

EXIT_OK, EXIT_ROLLED_BACK, EXIT_USAGE, EXIT_REFUSED, EXIT_STOPPED = 0, 1, 2, 3, 130


def print_record(record: StepRecord, started: float, stream=sys.stdout) -> None:
    """One progress line per decision: elapsed time, weight, decision, reason."""
    elapsed = record.time - started
    stream.write(f"\r[{elapsed:7.1f}s] weight {record.weight:3d}%  {record.decision.value:<8} {record.reason}\n")
    stream.flush()


class Progress:
    """Prints decisions; on a terminal also a live countdown to the next analysis."""

    def __init__(self, stop: threading.Event, stream=sys.stdout):
        self.stop = stop
        self.stream = stream
        self.started: float | None = None
        self.live = stream.isatty()

    def on_record(self, record: StepRecord) -> None:
        """Print one decision (the scheduler's `on_record` hook)."""
        if self.started is None:
            self.started = record.time
        print_record(record, self.started, self.stream)

    def wait(self, seconds: float) -> bool:
        """Sleep until the next analysis; True when the operator asked to stop."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.live:
                self.stream.write(f"\r  next analysis in {left:5.1f}s ")
                self.stream.flush()
            if self.stop.wait(min(left, 1.0)):
                return True
        if self.live:
            self.stream.write("\r" + " " * 32 + "\r")
        return False


def stop_on_signals(stop: threading.Event) -> dict:
    """Ctrl-C and SIGTERM (sent by `abort`) end the wait between analyses instead of killing mid-update.

    Returns the previous handlers, for `restore_signals`.
    """
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in previous:
        signal.signal(signum, lambda *_: stop.set())
    return previous


def restore_signals(previous: dict) -> None:
    """Put back the handlers `stop_on_signals` replaced."""
    for signum, handler in previous.items():
        signal.signal(signum, handler)

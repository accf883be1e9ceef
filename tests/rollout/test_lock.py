"""One rollout per stack: the lock refuses a live holder and takes over a stale one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rollout.errors import RolloutLockedError
from rollout.lock import RolloutLock, lock_holder, lock_path


@pytest.fixture(autouse=True)
def state_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MLSERVE_HOME", str(tmp_path))


def test_lock_holds_our_pid_and_releases():
    with RolloutLock("prod") as lock:
        assert lock.path.read_text().strip() == str(os.getpid())
        assert lock_holder("prod") == os.getpid()
    assert not lock_path("prod").exists()


def test_second_rollout_is_refused_while_one_runs():
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lock_path("prod").write_text(f"{holder.pid}\n")
        with pytest.raises(RolloutLockedError, match=rf"already running on stack 'prod' \(pid {holder.pid}"):
            RolloutLock("prod").acquire()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("content", ["", "not-a-pid", "dead"])
def test_stale_locks_are_taken_over(content):
    if content == "dead":
        finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        content = finished.stdout.strip()
    lock_path("prod").write_text(content)
    with RolloutLock("prod"):
        assert lock_holder("prod") == os.getpid()


def test_locks_are_per_stack():
    with RolloutLock("prod"), RolloutLock("dev"):
        assert lock_holder("prod") == lock_holder("dev") == os.getpid()

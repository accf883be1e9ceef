"""One rollout per stack: a lock file holding the owner's pid, with stale locks detected.

The lock lives in the local state folder (`MLSERVE_HOME`, default `.mlserve/` at the repository root).
A lock whose pid no longer runs is stale (the rollout was killed) and is taken over, so a killed
rollout can be restarted and resume without anyone deleting files by hand.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from rollout.errors import RolloutLockedError
from service.names import mlserve_home as state_dir

REPO_ROOT = Path(__file__).resolve().parent.parent


def lock_path(stack: str) -> Path:
    """Where the lock of `stack` lives."""
    return state_dir() / f"rollout-{stack.replace('/', '_')}.lock"


def _pid_running(pid: int) -> bool:
    try:
        # A zombie has exited; only its parent has not collected it yet.
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # it exists, it is just not ours


def lock_holder(stack: str) -> int | None:
    """The pid of the live rollout holding `stack`'s lock, or None (no lock, or a stale one)."""
    try:
        pid = int(lock_path(stack).read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid > 0 and _pid_running(pid) else None


class RolloutLock:
    """Context manager: holds `stack`'s lock for this process, or raises RolloutLockedError."""

    def __init__(self, stack: str):
        self.stack = stack
        self.path = lock_path(stack)

    def acquire(self) -> None:
        """Create the lock file with our pid; take over a stale one; refuse a live one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = lock_holder(self.stack)
                if holder is not None and holder != os.getpid():
                    raise RolloutLockedError(self.stack, holder, str(self.path)) from None
                # Stale (its process is gone) or empty: remove and try once more.
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{os.getpid()}\n")
            return
        holder = lock_holder(self.stack) or -1
        raise RolloutLockedError(self.stack, holder, str(self.path))

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        try:
            if int(self.path.read_text().strip() or 0) == os.getpid():
                self.path.unlink()
        except (FileNotFoundError, ValueError):
            pass

    def __enter__(self) -> "RolloutLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

"""The local cluster's start: a process that dies fails the wait at once with the end of its log, and a port
taken between being found free and being bound (CI runs many servers beside these tests) costs a retry, not
the three-minute wait and every engine test after it."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from engine import cluster
from engine.build import bin_dir, missing_binaries


def test_a_process_that_exits_fails_the_wait_at_once_with_the_end_of_its_log(tmp_path: Path):
    (tmp_path / "logs").mkdir()
    pid = cluster._spawn("listener", ["sh", "-c", "echo 'listen tcp 127.0.0.1:1: bind: address already in use'; exit 1"],
                         tmp_path)
    began = time.monotonic()
    with pytest.raises(cluster.ClusterError, match="listener exited while waiting for nodes.*address already in use"):
        cluster._wait("nodes", lambda: False, 60.0, tmp_path / "logs", {"listener": pid})
    assert time.monotonic() - began < 10.0


def test_a_start_whose_etcd_port_was_taken_first_is_tried_again_and_comes_up(tmp_path: Path, monkeypatch):
    if missing := missing_binaries():
        pytest.skip(f"engine binaries not built ({', '.join(missing)} missing in {bin_dir()}): run `make engine`")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = iter([taken.getsockname()[1]])
    real_free_port = cluster.free_port
    monkeypatch.setattr(cluster, "free_port", lambda: next(ports, None) or real_free_port())
    try:
        state = cluster.start(tmp_path)
        try:
            assert state.api.ready()
            assert "address already in use" not in (tmp_path / "logs" / "etcd.log").read_text()
        finally:
            cluster.stop(tmp_path)
    finally:
        taken.close()

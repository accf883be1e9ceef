"""Shared fixtures for rollout unit tests: default limits, the default five-step plan, a recording stand-in for
the `pulumi` executable first on PATH, and fake model servers answering `/explain`."""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from pathlib import Path

import pytest

from rollout.analysis import Thresholds
from rollout.scheduler import RolloutPlan


@pytest.fixture
def limits() -> Thresholds:
    return Thresholds(min_requests=100, max_error_rate=0.01, max_p95_seconds=0.5)


@pytest.fixture
def plan(limits) -> RolloutPlan:
    return RolloutPlan(steps=(5, 10, 25, 50, 100), interval_seconds=60, failure_threshold=2, thresholds=limits)


STANDIN = Path(__file__).with_name("pulumi_standin.py")


@pytest.fixture
def pulumi_cli(tmp_path, monkeypatch):
    """Put the stand-in first on PATH; returns (project dir, state file, function reading the recorded calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "pulumi"
    exe.write_text(f"#!{sys.executable}\n" + STANDIN.read_text())
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: mlserve\nruntime: python\n")
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"stacks": {"prod": {
        "traffic.challengerWeight": "0",
        "model.challengerUri": "models:/customer-churn-classifier@challenger",
        "model.championUri": "models:/customer-churn-classifier@champion",
    }}}))
    log = tmp_path / "calls.jsonl"
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PULUMI_STANDIN_LOG", str(log))
    monkeypatch.setenv("PULUMI_STANDIN_STATE", str(state))

    def calls():
        # An inline program's language server listens on a fresh port each run: `--client=ADDRESS` stands for it.
        return [[re.sub(r"^--client=127\.0\.0\.1:\d+$", "--client=ADDRESS", word) for word in json.loads(line)]
                for line in log.read_text().splitlines()]

    return project, state, calls


@pytest.fixture
def explainer_url():
    """Start fake model servers' /explain (rollout_fakes.FakeExplainer) answering as given; returns their URLs."""
    from rollout_fakes import serve_explainer

    servers = []

    def start(*answers: tuple[int, dict, dict]) -> str:
        servers.append(serve_explainer(*answers))
        return f"http://127.0.0.1:{servers[-1].server_port}"

    yield start
    for server in servers:
        server.shutdown()

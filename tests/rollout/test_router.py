"""Routers: StackConfigRouter against a recording stand-in for the `pulumi` CLI, asserting the exact
commands the Automation API runs; HAProxyRouter against a fake runtime API socket."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from rollout.errors import RouterError
from rollout.promotion import StackPromotion
from rollout.router import HAProxyRouter, StackConfigRouter, check_weight, make_router

def test_set_weight_is_config_set_then_up(pulumi_cli):
    project, state, calls = pulumi_cli
    StackConfigRouter("prod", project).set_weight(25)
    assert calls() == [
        ["version"],
        ["--non-interactive", "stack", "select", "--stack", "prod"],
        # The SDK passes --non-interactive itself here, so the runner does not add it again.
        ["config", "set", "--path", "traffic.challengerWeight", "--plaintext",
         "--stack", "prod", "--non-interactive", "--", "25"],
        ["--non-interactive", "up", "--yes", "--skip-preview", "--message", "rollout: traffic.challengerWeight=25",
         "--client=ADDRESS", "--exec-kind", "auto.inline", "--stack", "prod"],
        ["--non-interactive", "stack", "output", "--json", "--stack", "prod"],
        ["--non-interactive", "stack", "output", "--json", "--show-secrets", "--stack", "prod"],
        ["--non-interactive", "stack", "history", "--json", "--show-secrets", "--page-size", "1", "--page", "1",
         "--stack", "prod"],
    ]
    assert json.loads(state.read_text())["updates"] == 1


def test_config_only_writes_and_stops(pulumi_cli):
    project, state, calls = pulumi_cli
    StackConfigRouter("prod", project, config_only=True).set_weight(10)
    assert not any(call[1] == "up" for call in calls()[1:])
    assert json.loads(state.read_text())["stacks"]["prod"]["traffic.challengerWeight"] == "10"


def test_get_weight_reads_path_config(pulumi_cli):
    project, state, calls = pulumi_cli
    router = StackConfigRouter("prod", project)
    router.set_weight(50)
    assert router.get_weight() == 50
    assert calls()[-1] == ["--non-interactive", "config", "get", "--path", "traffic.challengerWeight", "--json",
                           "--stack", "prod"]


def test_missing_weight_key_uses_the_declared_default(pulumi_cli):
    project, state, _ = pulumi_cli
    data = json.loads(state.read_text())
    del data["stacks"]["prod"]["traffic.challengerWeight"]
    state.write_text(json.dumps(data))
    assert StackConfigRouter("prod", project, default_weight=0).get_weight() == 0


def test_promote_swaps_uris_and_resets_weight_in_one_update(pulumi_cli):
    project, state, calls = pulumi_cli
    described = StackPromotion("prod", project).promote()
    config = json.loads(state.read_text())["stacks"]["prod"]
    assert config["model.championUri"] == "models:/customer-churn-classifier@challenger"
    assert "model.challengerUri" not in config
    assert config["traffic.challengerWeight"] == "0"
    assert [call[1:3] for call in calls() if call[0] == "--non-interactive"].count(["up", "--yes"]) == 1
    assert ["--non-interactive", "config", "rm", "model.challengerUri", "--stack", "prod", "--path"] in calls()
    assert "championUri" in described


@pytest.mark.parametrize(
    ("setup", "message"),
    [("unknown_stack", "cannot select stack 'staging'"), ("fail_up", "pulumi up failed")],
)
def test_cli_failures_become_router_errors(pulumi_cli, setup, message):
    project, state, _ = pulumi_cli
    data = json.loads(state.read_text())
    data["fail_up"] = setup == "fail_up"
    state.write_text(json.dumps(data))
    stack = "staging" if setup == "unknown_stack" else "prod"
    with pytest.raises(RouterError, match=message):
        StackConfigRouter(stack, project).set_weight(5)


@pytest.mark.parametrize("bad", [-1, 101, 2.5, "10", True, None])
def test_bad_weights_are_refused(bad):
    with pytest.raises(RouterError, match="0..100"):
        check_weight(bad)


class FakeHAProxy:
    """Answers `get weight` / `set weight` on a unix socket like HAProxy's runtime API."""

    def __init__(self, path: Path):
        self.weights = {"models/champion": 100, "models/challenger": 0}
        self.commands = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                line = conn.recv(4096).decode().strip()
                self.commands.append(line)
                words = line.split()
                if words[:2] == ["get", "weight"]:
                    answer = f"{self.weights[words[2]]} (initial 1)\n"
                elif words[:2] == ["set", "weight"] and words[2] in self.weights:
                    self.weights[words[2]] = int(words[3])
                    answer = "\n"
                else:
                    answer = "No such server.\n"
                conn.sendall(answer.encode())


@pytest.fixture
def haproxy_socket(tmp_path):
    path = tmp_path / "admin.sock"
    fake = FakeHAProxy(path)
    yield path, fake
    fake.server.close()


def test_haproxy_router_splits_weights(haproxy_socket):
    path, fake = haproxy_socket
    router = make_router("haproxy", socket_path=path)
    router.set_weight(25)
    assert fake.weights == {"models/champion": 75, "models/challenger": 25}
    assert router.get_weight() == 25
    assert "set weight models/challenger 25" in fake.commands


def test_haproxy_router_reports_refusals(haproxy_socket):
    path, _ = haproxy_socket
    with pytest.raises(RouterError, match="No such server"):
        HAProxyRouter(path, challenger_server="canary").set_weight(5)


def test_haproxy_router_unreachable(tmp_path):
    with pytest.raises(RouterError, match="did not answer"):
        HAProxyRouter(tmp_path / "missing.sock").get_weight()


def test_unknown_router_type():
    with pytest.raises(RouterError, match="unknown router type 'istio'"):
        make_router("istio")

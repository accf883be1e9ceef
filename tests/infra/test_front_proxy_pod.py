"""serving.frontProxy: HAProxy beside the model server in each pod, on serving.port, with the serving.* limits."""

from __future__ import annotations

import subprocess

from infra import workload
from service.admission import AdmissionLimits
from service.front_proxy import find_haproxy
from service.settings import FRONT_PROXY_STATS_PORT_ENV
from tests.infra.conftest import stack_config

IMAGE = "ghcr.io/acme/churn@sha256:abc"


def proxied(**overrides):
    return stack_config("dev", **{"serving.frontProxy": True, **overrides})


def test_the_proxy_takes_the_http_port_and_the_server_moves_behind_it():
    config = proxied()
    model, proxy = workload.pod_spec(config.pod, "champion", IMAGE)["containers"]
    env = {item["name"]: item["value"] for item in model["env"]}
    assert proxy["name"] == "front-proxy" and proxy["image"] == IMAGE
    assert proxy["ports"] == [{"name": "http", "containerPort": config.serving.port, "protocol": "TCP"}]
    assert model["ports"][0] == {"name": "workers", "containerPort": workload.WORKERS_PORT, "protocol": "TCP"}
    assert env["BENTOML_PORT"] == str(workload.WORKERS_PORT)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert model[probe]["httpGet"]["port"] == "workers", probe
    # The proxy is ready when the server behind it is, and alive while it accepts connections.
    assert proxy["readinessProbe"]["httpGet"] == {"port": "http", "scheme": "HTTP", "path": "/readyz"}
    assert proxy["livenessProbe"]["tcpSocket"] == {"port": "http"}
    assert proxy["securityContext"] == model["securityContext"]
    assert set(proxy["resources"]) == {"requests", "limits"}


def test_without_it_the_pod_is_the_server_alone_on_the_http_port():
    config = stack_config("dev", **{"serving.frontProxy": False})
    (model,) = workload.pod_spec(config.pod, "champion", IMAGE)["containers"]
    assert model["ports"][0]["name"] == "http" and model["livenessProbe"]["httpGet"]["port"] == "http"
    assert FRONT_PROXY_STATS_PORT_ENV not in {item["name"] for item in model["env"]}


def test_the_proxy_applies_the_serving_limits_and_haproxy_accepts_its_configuration(tmp_path):
    config = proxied(**{"serving.maxConcurrency": 12, "serving.maxQueue": 3, "serving.queueTimeoutSeconds": "0.2"})
    proxy = workload.pod_spec(config.pod, "champion", IMAGE)["containers"][1]
    text = next(item["value"] for item in proxy["env"] if item["name"] == workload.FRONT_PROXY_CONFIG_ENV)
    assert f"bind 0.0.0.0:{config.serving.port}" in text
    assert f"server workers 127.0.0.1:{workload.WORKERS_PORT} maxconn 12" in text  # one worker per pod
    assert "queue(workers) ge 3" in text and "timeout queue 200ms" in text
    assert f"bind 127.0.0.1:{workload.PROXY_STATS_PORT}" in text
    # The server behind the proxy keeps its own limits, the same ones, and reads the proxy's refusals from the
    # exporter the pod's containers share on loopback.
    env = {item["name"]: item["value"] for item in workload.pod_spec(config.pod, "champion", IMAGE)["containers"][0]["env"]}
    assert AdmissionLimits.from_env(env).max_concurrency == 12
    assert env[FRONT_PROXY_STATS_PORT_ENV] == str(workload.PROXY_STATS_PORT)
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    check = subprocess.run([find_haproxy(), "-c", "-f", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    # What the container runs writes exactly that text before starting HAProxy.
    script = proxy["command"][2]
    script = script.replace("/tmp/haproxy.cfg", str(tmp_path / "written.cfg")).replace("exec haproxy -db -f", "cat")
    written = subprocess.run(["/bin/sh", "-c", script], env={workload.FRONT_PROXY_CONFIG_ENV: text},
                             capture_output=True, text=True)
    assert written.returncode == 0 and written.stdout == text


def test_a_proxy_config_change_changes_the_pod_template_so_the_pods_roll():
    before = workload.pod_template(proxied().pod, "champion", IMAGE)
    after = workload.pod_template(proxied(**{"serving.maxQueue": 4}).pod, "champion", IMAGE)
    assert before["spec"]["containers"][1]["env"] != after["spec"]["containers"][1]["env"]

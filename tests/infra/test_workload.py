"""Pure pod builders: the qualities every model pod must have, whichever path renders it."""

from __future__ import annotations

import pytest

from infra import workload
from infra.services import REQUESTS_PER_SECOND_METRIC, hpa_spec, service_spec
from tests.infra.conftest import stack_config

IMAGE = "ghcr.io/acme/churn@sha256:abc"


@pytest.fixture(params=["dev", "prod"])
def config(request):
    return stack_config(request.param)


def test_container_carries_model_uri_and_variant(config):
    container = workload.model_container(config.pod, "champion", IMAGE)
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["MODEL_URI"] == config.model.champion_uri
    assert env["MODEL_VARIANT"] == "champion"
    assert env["BENTOML_DO_NOT_TRACK"] == env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert container["image"] == IMAGE
    assert container["ports"][1] == {"name": "grpc", "containerPort": config.serving.grpc_port, "protocol": "TCP"}
    # The pod's `http` port is the server's, or the front proxy's in front of it (dev: serving.frontProxy).
    http = [port for c in workload.pod_spec(config.pod, "champion", IMAGE)["containers"] for port in c["ports"]
            if port["name"] == "http"]
    assert http == [{"name": "http", "containerPort": config.serving.port, "protocol": "TCP"}]
    assert env["MLSERVE_GRPC_PORT"] == str(config.serving.grpc_port)


@pytest.mark.parametrize("public", [True, False], ids=["load-balancer", "cluster-ip"])
def test_services_and_network_policy_let_grpc_through(config, public):
    from infra.services import network_policy_spec

    spec = service_spec(config.identity, config.serving, config.load_balancer, "champion", public)
    ports = {port["name"]: port for port in spec["ports"]}
    assert ports["grpc"] == {"name": "grpc", "port": config.serving.grpc_port, "targetPort": "grpc", "protocol": "TCP"}
    policy = network_policy_spec(config.identity, config.serving, config.load_balancer, "champion")
    allowed = [port["port"] for port in policy["ingress"][0]["ports"]]
    assert config.serving.port in allowed and config.serving.grpc_port in allowed


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, {"MLSERVE_CLASSIFIER_OUTPUT": "auto", "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"}),
        ({"model.classifierOutput": "predict_proba", "model.allowPickleDeserialization": False},
         {"MLSERVE_CLASSIFIER_OUTPUT": "predict_proba", "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}),
    ],
    ids=["defaults", "overridden"],
)
def test_container_env_carries_the_model_serving_keys(overrides, expected):
    """What service.settings reads: the classifier output mode and MLflow's pickle switch, from stack config."""
    container = workload.model_container(stack_config("prod", **overrides).pod, "champion", IMAGE)
    env = {item["name"]: item["value"] for item in container["env"]}
    assert {name: env[name] for name in expected} == expected


def test_probes_hit_livez_and_readyz_and_startup_covers_slow_loads(config):
    probes = workload.probes(config.serving)
    assert probes["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    startup = probes["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= config.serving.startup_timeout_seconds


def test_security_context_is_restricted(config):
    container = workload.model_container(config.pod, "champion", IMAGE)["securityContext"]
    assert container["runAsNonRoot"] is True and container["runAsUser"] > 0
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert container["seccompProfile"] == {"type": "RuntimeDefault"}
    pod = workload.pod_spec(config.pod, "champion", IMAGE)
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # A read-only root needs somewhere to write: /tmp is an emptyDir.
    assert {"name": "tmp", "mountPath": "/tmp"} in workload.model_container(config.pod, "champion", IMAGE)["volumeMounts"]
    assert any(volume["name"] == "tmp" and "emptyDir" in volume for volume in pod["volumes"])


def test_requests_and_limits_come_from_config(config):
    resources = workload.resources(config.serving, config.gpu)
    assert resources["requests"] == {"cpu": config.serving.cpu_request, "memory": config.serving.memory_request}
    assert resources["limits"]["memory"] == config.serving.memory_limit


def test_gpu_pods_get_limits_node_selector_and_tolerations():
    config = stack_config("prod")
    pod = workload.pod_spec(config.pod, "challenger", IMAGE)
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


@pytest.mark.parametrize(
    ("overrides", "limit_key", "toleration"),
    [
        ({"gpu.resource": "amd.com/gpu", "gpu.count": 2}, "amd.com/gpu", {"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"}),
        ({"gpu.tolerations": ["pool=gpu:NoExecute"]}, "nvidia.com/gpu", {"key": "pool", "operator": "Equal", "value": "gpu", "effect": "NoExecute"}),
    ],
)
def test_gpu_scheduling_follows_config(overrides, limit_key, toleration):
    config = stack_config("prod", **overrides)
    pod = workload.pod_spec(config.pod, "champion", IMAGE)
    assert pod["containers"][0]["resources"]["limits"][limit_key] == config.gpu.count
    assert toleration in pod["tolerations"]


def test_cpu_pods_have_no_gpu_scheduling():
    pod = workload.pod_spec(stack_config("dev").pod, "champion", IMAGE)
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert set(pod["containers"][0]["resources"]["limits"]) == {"cpu", "memory"}


def test_labels_are_standard_and_selectors_are_per_variant(config):
    labels = workload.standard_labels(config.identity, "challenger")
    for name in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by",
                 "app.kubernetes.io/part-of", "app.kubernetes.io/component"):
        assert labels[name]
    assert workload.selector_labels(config.identity, "champion") != workload.selector_labels(config.identity, "challenger")
    spread = workload.topology_spread(config.identity, "champion")
    assert {constraint["topologyKey"] for constraint in spread} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}


def test_hpa_scales_on_cpu_memory_and_requests_per_second(config):
    metrics = hpa_spec(config.identity, config.autoscaling, "champion")["metrics"]
    resource_names = {m["resource"]["name"] for m in metrics if m["type"] == "Resource"}
    assert resource_names == {"cpu", "memory"}
    pods = [m["pods"] for m in metrics if m["type"] == "Pods"]
    assert pods[0]["metric"]["name"] == REQUESTS_PER_SECOND_METRIC
    assert pods[0]["target"]["averageValue"] == str(config.autoscaling.target_requests_per_second)


def test_entry_point_is_a_load_balancer_on_the_champion():
    config = stack_config("prod", **{"loadBalancer.sourceRanges": ["10.0.0.0/8"]})
    spec = service_spec(config.identity, config.serving, config.load_balancer, "champion", public=True)
    assert spec["type"] == "LoadBalancer"
    assert spec["selector"]["mlserve.io/variant"] == "champion"
    assert spec["loadBalancerSourceRanges"] == ["10.0.0.0/8"]


def test_admission_limits_reach_the_server_as_the_server_reads_them():
    from service.admission import AdmissionLimits

    config = stack_config("dev", **{"serving.maxConcurrency": 7, "serving.maxQueue": 0,
                                    "serving.queueTimeoutSeconds": "0.25", "serving.bodyTimeoutSeconds": "3"})
    container = workload.model_container(config.pod, "champion", IMAGE)
    env = {item["name"]: item["value"] for item in container["env"]}

    assert AdmissionLimits.from_env(env) == AdmissionLimits(
        max_concurrency=7, max_queue=0, queue_timeout=0.25, body_timeout=3.0)


def test_a_server_started_without_a_deployment_uses_the_declared_defaults():
    from service.admission import AdmissionLimits

    env = {item["name"]: item["value"] for item in workload.container_env(stack_config("dev").pod, "champion")}

    assert AdmissionLimits.from_env({}) == AdmissionLimits.from_env(env)


def test_batching_bounds_reach_the_server_as_the_server_reads_them():
    from service.settings import BatchLimits

    config = stack_config("dev", **{"serving.maxBatchSize": 16, "serving.maxBatchWaitMs": "0.5"})
    env = {item["name"]: item["value"] for item in workload.model_container(config.pod, "champion", IMAGE)["env"]}

    assert BatchLimits.from_env(env) == BatchLimits(max_batch_size=16, max_wait_ms=0.5)


def test_a_server_started_without_a_deployment_batches_with_the_declared_defaults():
    from service.settings import BatchLimits

    env = {item["name"]: item["value"] for item in workload.container_env(stack_config("dev").pod, "champion")}

    assert BatchLimits.from_env({}) == BatchLimits.from_env(env)

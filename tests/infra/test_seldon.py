"""Champion/challenger on Seldon Core: CRD-valid, traffic from one config value, nothing else moves."""

from __future__ import annotations

import json
import re

import kubernetes_validate
import pytest
import yaml

from infra import workload
from infra.errors import ConfigError
from infra.image_context import image_inputs
from infra.helm import SELDON_CHART_VERSION
from tests.infra.conftest import KUBERNETES_VERSION, manifests, run_render, stack_config
from tests.infra.crd import validate_against_crd


def seldon_deployment(resources) -> dict:
    (sdep,) = manifests(resources, "SeldonDeployment")
    return sdep


def predictors(resources) -> dict[str, dict]:
    return {p["name"]: p for p in seldon_deployment(resources)["spec"]["predictors"]}


SPLITS = [
    ({}, {"champion": 90, "challenger": 10}),
    ({"traffic.challengerWeight": 25}, {"champion": 75, "challenger": 25}),
    ({"traffic.challengerWeight": 0}, {"champion": 100, "challenger": 0}),
    ({"traffic.challengerWeight": 100}, {"champion": 0, "challenger": 100}),
    ({"traffic.challengerWeight": 0, "model.challengerUri": ""}, {"champion": 100}),
    ({"traffic.challengerWeight": 50, "autoscaling.enabled": False}, {"champion": 50, "challenger": 50}),
]


@pytest.mark.parametrize(("overrides", "expected"), SPLITS, ids=[str(expected) for _, expected in SPLITS])
def test_predictors_split_traffic_by_challenger_weight(render, overrides, expected):
    resources = render("prod", **overrides)
    sdep = seldon_deployment(resources)
    validate_against_crd(sdep)
    traffic = {name: p["traffic"] for name, p in predictors(resources).items()}
    assert traffic == expected
    assert sum(traffic.values()) == 100


def test_shadow_challenger_mirrors_traffic_and_answers_nobody(render):
    resources = render("prod", **{"traffic.challengerWeight": 0, "traffic.shadow": True})
    validate_against_crd(seldon_deployment(resources))
    by_name = predictors(resources)
    assert by_name["champion"]["traffic"] == 100
    assert by_name["challenger"]["shadow"] is True and "traffic" not in by_name["challenger"]


def test_predictor_pods_are_the_plain_path_pods(render):
    config = stack_config("prod")
    for name, predictor in predictors(render("prod")).items():
        (component,) = predictor["componentSpecs"]
        expected = workload.pod_spec(config.pod, name, image=component["spec"]["containers"][0]["image"])
        assert component["spec"] == expected
        container = component["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert {"name": "MODEL_VARIANT", "value": name} in container["env"]
        assert "@" in container["image"]
        assert predictor["graph"]["name"] == container["name"]


def test_graph_speaks_oip_v2_on_the_service_port(render):
    sdep = seldon_deployment(render("prod"))
    assert sdep["apiVersion"] == "machinelearning.seldon.io/v1"
    assert sdep["spec"]["protocol"] == "v2"
    for predictor in sdep["spec"]["predictors"]:
        assert predictor["graph"]["endpoint"]["httpPort"] == stack_config("prod").serving.port
        # The executor proxies OIP gRPC (ModelInfer, ModelReady, ModelMetadata) to grpcPort.
        assert predictor["graph"]["endpoint"]["grpcPort"] == stack_config("prod").serving.grpc_port


def test_hpa_spec_measures_the_model_container_not_the_executor(render):
    """The operator adds its executor container to the pod; pod-level utilisation would average it in."""
    sdep = seldon_deployment(render("prod"))
    validate_against_crd(sdep)  # the CRD's metricsv2 items accept containerResource
    name = workload.container_name(stack_config("prod").model)
    for predictor in sdep["spec"]["predictors"]:
        hpa = predictor["componentSpecs"][0]["hpaSpec"]
        assert "metrics" not in hpa  # Seldon 1.18's `metrics` is the old v2beta1 form
        assert [m["type"] for m in hpa["metricsv2"]] == ["ContainerResource", "ContainerResource", "Pods"]
        resources = [m["containerResource"] for m in hpa["metricsv2"][:2]]
        assert [(r["name"], r["container"]) for r in resources] == [("cpu", name), ("memory", name)]
        assert resources[0]["target"] == {"type": "Utilization", "averageUtilization": 60}
        assert "pdbSpec" not in predictor["componentSpecs"][0]  # see test_no_pod_is_covered_by_two_disruption_budgets


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, {"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}),
        (
            {"seldon.executorCpuRequest": "100m", "seldon.executorCpuLimit": "200m",
             "seldon.executorMemoryRequest": "64Mi", "seldon.executorMemoryLimit": "256Mi"},
            {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "200m", "memory": "256Mi"}},
        ),
    ],
    ids=["defaults", "configured"],
)
def test_executor_is_sized_from_config(render, overrides, expected):
    sdep = seldon_deployment(render("prod", **overrides))
    validate_against_crd(sdep)
    for predictor in sdep["spec"]["predictors"]:
        assert predictor["svcOrchSpec"] == {"resources": expected}


# --------------------------------------------------------------------------------------------------
# What the Seldon Core v1.18.2 operator makes of the SeldonDeployment (SeldonIO/seldon-core at v1.18.2)
# --------------------------------------------------------------------------------------------------


def operator_pod_labels(sdep: dict, predictor: dict, index: int, component: dict) -> dict[str, str]:
    """The labels the operator puts on a predictor's pods: createDeploymentWithoutEngine and
    createContainerService in operator/controllers/seldondeployment_controller.go (seldon-deployment-id,
    app, fluentd, the predictor's labels, the component's metadata labels, seldon-app, seldon-app-svc-*)."""
    name = sdep["metadata"]["name"]
    containers = "-".join(c["name"] for c in component["spec"]["containers"])
    deployment = f"{name}-{predictor['name']}-{index}-{containers}"
    labels = {"seldon-deployment-id": name, "app": deployment, "fluentd": "true"}
    if predictor.get("shadow"):
        labels["seldon.io/shadow"] = "true"
    labels.update(predictor.get("labels") or {})
    labels.update(component["metadata"].get("labels") or {})
    labels["seldon-app"] = f"{name}-{predictor['name']}"
    for container in component["spec"]["containers"]:
        labels[f"seldon-app-svc-{container['name']}"] = f"{name}-{predictor['name']}-{container['name']}"
    return labels


def operator_pdbs(sdep: dict) -> list[dict]:
    """createPdb: one PDB per componentSpec with a pdbSpec, each selecting `seldon-deployment-id: <name>`."""
    name = sdep["metadata"]["name"]
    return [
        {"metadata": {"namespace": sdep["metadata"]["namespace"]}, "spec": {"selector": {"matchLabels": {"seldon-deployment-id": name}}}}
        for predictor in sdep["spec"]["predictors"]
        for component in predictor["componentSpecs"]
        if "pdbSpec" in component
    ]


@pytest.mark.parametrize(
    "overrides",
    [{}, {"traffic.challengerWeight": 0, "traffic.shadow": True}, {"traffic.challengerWeight": 0, "model.challengerUri": ""}],
    ids=["canary", "shadow", "champion-only"],
)
def test_no_pod_is_covered_by_two_disruption_budgets(render, overrides):
    """The eviction API refuses a pod that more than one PDB selects (kubernetes pkg/registry/core/pod/storage/
    eviction.go: "This pod has more than one PodDisruptionBudget"), which stalls drains. Every predictor pod,
    labelled as the operator labels it, must be selected by exactly one budget: the operator's or ours."""
    resources = render("prod", **overrides)
    sdep = seldon_deployment(resources)
    budgets = manifests(resources, "PodDisruptionBudget") + operator_pdbs(sdep)
    for manifest in manifests(resources, "PodDisruptionBudget"):
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    for predictor in sdep["spec"]["predictors"]:
        for index, component in enumerate(predictor["componentSpecs"]):
            labels = operator_pod_labels(sdep, predictor, index, component)
            covering = [
                budget for budget in budgets
                if budget["metadata"]["namespace"] == sdep["metadata"]["namespace"]
                and budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
            ]
            assert len(covering) == 1, (predictor["name"], [b["spec"]["selector"] for b in covering])
            assert covering[0]["spec"]["maxUnavailable"] == stack_config("prod").serving.max_unavailable


def test_the_operators_shared_budget_would_cover_every_pod_twice(render):
    """The defect the test above guards against: with the operator's pdbSpec on both predictors each pod has two."""
    sdep = seldon_deployment(render("prod"))
    for predictor in sdep["spec"]["predictors"]:
        predictor["componentSpecs"][0]["pdbSpec"] = {"maxUnavailable": 1}
    labels = operator_pod_labels(sdep, sdep["spec"]["predictors"][1], 0, sdep["spec"]["predictors"][1]["componentSpecs"][0])
    assert sum(b["spec"]["selector"]["matchLabels"].items() <= labels.items() for b in operator_pdbs(sdep)) == 2


def executor_forwards(graph: dict, method: str, path: str) -> tuple[int, str | None]:
    """What Seldon's executor does with an OIP REST call: (500, None) when it fails itself, else (0, the path it
    asks the model container). Routes: executor/api/rest/server.go Initialise (protocol v2); model names:
    predictor_process.go (getModelName: the caller's name, else the node's; Status and Metadata look the
    node up by the caller's name with GetPredictiveUnit and fail with "Failed to find model"); container
    paths: executor/api/rest/client.go modifyMethod (ProtocolV2)."""
    node = graph["name"]
    parts = path.strip("/").split("/")
    if method == "POST" and parts == ["v2", "models", "infer"]:  # nonstandard Seldon path: the node's name
        return 0, f"/v2/models/{node}/infer"
    if method == "POST" and len(parts) == 4 and parts[3] == "infer":
        return 0, f"/v2/models/{parts[2]}/infer"
    if method == "GET" and len(parts) == 4 and parts[3] == "ready":
        return (0, f"/v2/models/{parts[2]}/ready") if parts[2] == node else (500, None)
    if method == "GET" and len(parts) == 3:
        return (0, f"/v2/models/{parts[2]}") if parts[2] == node else (500, None)
    raise AssertionError(f"not an OIP model route: {method} {path}")


def server_answers(model_name: str, path: str) -> bool:
    """The model server's OIP routes answer only to the registered model's name (service/service.py)."""
    return path.split("/")[3] == model_name


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v2/models/{model}/infer"), ("POST", "/v2/models/infer"), ("GET", "/v2/models/{model}/ready"), ("GET", "/v2/models/{model}")],
    ids=["infer", "infer-without-name", "model-ready", "model-metadata"],
)
@pytest.mark.parametrize("model_name", ["customer-churn-classifier", "fraud-v2"])
def test_every_oip_call_reaches_the_model_through_the_executor(render, method, path, model_name):
    config = stack_config("prod", **{"model.name": model_name})
    for predictor in predictors(render("prod", **{"model.name": model_name})).values():
        status, forwarded = executor_forwards(predictor["graph"], method, path.format(model=model_name))
        assert status == 0, f"the executor itself answers 500 to {method} {path}"
        assert server_answers(config.model.name, forwarded), forwarded
        # The operator pairs graph nodes with containers by name (GetPredictiveUnit(&p.Graph, con.Name)).
        assert predictor["graph"]["name"] == predictor["componentSpecs"][0]["spec"]["containers"][0]["name"]


def test_a_model_name_the_executor_cannot_route_is_refused_on_seldon():
    with pytest.raises(ConfigError, match=r"model.name: 'Fraud_Model' is not a DNS-1123 label.*'fraud-model'"):
        stack_config("prod", **{"model.name": "Fraud_Model"})
    assert stack_config("prod", **{"model.name": "Fraud_Model", "traffic.router": "service", "traffic.challengerWeight": 0})


def test_a_non_default_port_is_used_by_every_reference(tmp_path):
    """BentoML listens on BENTOML_PORT (default 3000): a port change must reach the server, the probes, the
    executor's graph endpoint, the policies and the Services, and nothing may still name 3000."""
    for router in ("seldon", "service"):
        out = tmp_path / router
        sets = ["serving.port=8088"] + (["traffic.router=service", "traffic.challengerWeight=0"] if router == "service" else [])
        result = run_render("--stack", "prod", "--out", str(out), *[arg for s in sets for arg in ("--set", s)])
        assert result.returncode == 0, result.stderr
        text = "".join(p.read_text() for p in sorted(out.glob("*.yaml")))
        assert not re.search(r"\b3000\b", text), "a reference to the default port survived"
        documents = [yaml.safe_load(p.read_text()) for p in sorted(out.glob("*.yaml"))]
        pods = [d["spec"]["template"]["spec"] for d in documents if d["kind"] == "Deployment"] + [
            c["spec"] for d in documents if d["kind"] == "SeldonDeployment" for p in d["spec"]["predictors"] for c in p["componentSpecs"]
        ]
        assert pods
        for pod in pods:
            (container,) = pod["containers"]
            assert {"name": "BENTOML_PORT", "value": "8088"} in container["env"]
            assert {"containerPort": 8088, "name": "http", "protocol": "TCP"} in container["ports"]
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert container[probe]["httpGet"]["port"] == "http"  # the named port, so 8088
        for document in documents:
            if document["kind"] == "SeldonDeployment":
                assert {p["graph"]["endpoint"]["httpPort"] for p in document["spec"]["predictors"]} == {8088}
            if document["kind"] == "NetworkPolicy":
                assert {"port": 8088, "protocol": "TCP"} in document["spec"]["ingress"][0]["ports"]
            if document["kind"] == "Service" and document["metadata"]["namespace"] == "mlserve":
                assert {port["targetPort"] for port in document["spec"]["ports"]} <= {"http", "grpc"}


def test_platform_installs_seldon_operator_and_istio_entry_point(render):
    resources = render("prod")
    releases = {r.name: r.inputs for r in resources if r.type == "kubernetes:helm.sh/v3:Release"}
    operator = releases["seldon-core-operator"]
    assert operator["version"] == SELDON_CHART_VERSION
    assert operator["values"]["usageMetrics"]["enabled"] is False
    assert operator["values"]["istio"] == {"enabled": True, "gateway": "istio-system/seldon-gateway"}
    assert {"istio-base", "istiod", "istio-ingressgateway"} <= set(releases)
    (entry,) = [s for s in manifests(resources, "Service") if s["spec"]["type"] == "LoadBalancer"]
    kubernetes_validate.validate(entry, KUBERNETES_VERSION, strict=True)
    assert entry["metadata"]["namespace"] == "istio-system"


def test_platform_add_ons_are_switchable(render):
    resources = render("prod", **{"platform.installSeldon": False, "platform.installIstio": False})
    assert not [r for r in resources if r.type == "kubernetes:helm.sh/v3:Release"]
    assert seldon_deployment(resources)


def test_dev_keeps_the_plain_single_variant_path(render):
    resources = render("dev")
    assert not manifests(resources, "SeldonDeployment")
    assert len(manifests(resources, "Deployment")) == 1


def test_weight_change_diffs_only_the_two_traffic_fields(tmp_path):
    def render_cli(out, *sets):
        result = run_render("--stack", "prod", "--out", str(out), *[arg for s in sets for arg in ("--set", s)])
        assert result.returncode == 0, result.stderr

    render_cli(tmp_path / "A")
    render_cli(tmp_path / "B", "traffic.challengerWeight=25")
    files_a = sorted(p.relative_to(tmp_path / "A") for p in (tmp_path / "A").rglob("*.*"))
    files_b = sorted(p.relative_to(tmp_path / "B") for p in (tmp_path / "B").rglob("*.*"))
    assert files_a == files_b
    changed = [f for f in files_a if (tmp_path / "A" / f).read_text() != (tmp_path / "B" / f).read_text()]
    assert [str(f) for f in changed] == ["seldondeployment-churn-model.yaml"]
    a = yaml.safe_load((tmp_path / "A" / changed[0]).read_text())
    b = yaml.safe_load((tmp_path / "B" / changed[0]).read_text())
    assert differing_paths(a, b) == [
        ("spec", "predictors", 0, "traffic"),
        ("spec", "predictors", 1, "traffic"),
    ]
    assert [p["traffic"] for p in a["spec"]["predictors"]] == [90, 10]
    assert [p["traffic"] for p in b["spec"]["predictors"]] == [75, 25]
    # Both renders carry the content-addressed tag the real program computes (not a placeholder), unchanged
    # by the weight: the image and every pod template stay as they are.
    (image_file,) = (tmp_path / "A" / "_pulumi").glob("image-*.json")
    image_name = json.loads(image_file.read_text())["inputs"]["imageName"]
    prod = stack_config("prod")
    assert image_name == f"{prod.image.repository}:{image_inputs(prod.model, prod.image).tag}"


def differing_paths(a, b, path=()):
    """Every leaf path where two YAML documents differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [p for key in sorted(set(a) | set(b), key=str) for p in differing_paths(a.get(key), b.get(key), (*path, key))]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for index, (x, y) in enumerate(zip(a, b)) for p in differing_paths(x, y, (*path, index))]
    return [] if a == b else [path]

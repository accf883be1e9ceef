"""Champion/challenger on Seldon Core: CRD-valid, traffic from one config value, nothing else moves."""

from __future__ import annotations

import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from infra import workload
from infra.config import PROJECT_DIR
from infra.platform import SELDON_CHART_VERSION
from tests.infra.conftest import KUBERNETES_VERSION, manifests, stack_config
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
        expected = workload.pod_spec(config, name, image=component["spec"]["containers"][0]["image"])
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


def test_hpa_spec_uses_autoscaling_v2_metrics(render):
    for predictor in predictors(render("prod")).values():
        hpa = predictor["componentSpecs"][0]["hpaSpec"]
        assert "metrics" not in hpa  # Seldon 1.18's `metrics` is the old v2beta1 form
        assert {m["type"] for m in hpa["metricsv2"]} == {"Resource", "Pods"}
        assert predictor["componentSpecs"][0]["pdbSpec"] == {"maxUnavailable": 1}


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
        args = [sys.executable, "-m", "infra.render", "--stack", "prod", "--out", str(out)]
        for assignment in sets:
            args += ["--set", assignment]
        result = subprocess.run(args, cwd=PROJECT_DIR, capture_output=True, text=True)
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


def differing_paths(a, b, path=()):
    """Every leaf path where two YAML documents differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [p for key in sorted(set(a) | set(b), key=str) for p in differing_paths(a.get(key), b.get(key), (*path, key))]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for index, (x, y) in enumerate(zip(a, b)) for p in differing_paths(x, y, (*path, index))]
    return [] if a == b else [path]

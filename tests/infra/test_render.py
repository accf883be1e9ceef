"""The program under Pulumi's mocks, and `python -m infra.render` as a reviewer runs it."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from infra.render import UNKNOWN_DIGEST
from tests.infra.conftest import KUBERNETES_VERSION, manifests, run_render
from tests.infra.crd import validate_against_crd

STACKS = ["dev", "prod"]
# prod on the plain path (no Seldon): what `--set traffic.router=service --set traffic.challengerWeight=0` renders.
PLAIN_PROD = {"traffic.router": "service", "traffic.challengerWeight": 0}
CORE_KINDS = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "Namespace"}


def is_built_in(manifest: dict) -> bool:
    """Kubernetes' own API groups (core, apps, autoscaling, policy, *.k8s.io), as opposed to custom resources."""
    group = manifest["apiVersion"].rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


def core_manifests(resources):
    return [m for m in manifests(resources) if is_built_in(m)]


@pytest.mark.parametrize("stack", STACKS)
def test_every_core_manifest_validates_strictly(render, stack):
    rendered = core_manifests(render(stack))
    assert rendered
    for manifest in rendered:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(("stack", "overrides"), [("dev", {}), ("prod", PLAIN_PROD)])
def test_plain_path_renders_the_serving_objects(render, stack, overrides):
    rendered = render(stack, **overrides)
    kinds = {m["kind"] for m in manifests(rendered)}
    assert CORE_KINDS <= kinds
    for manifest in core_manifests(rendered):
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    services = manifests(rendered, "Service")
    assert [s["spec"]["type"] for s in services].count("LoadBalancer") == 1


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_has_exactly_one_load_balancer_entry_point(render, stack):
    services = manifests(render(stack), "Service")
    assert [s["spec"]["type"] for s in services].count("LoadBalancer") == 1


def test_prod_runs_both_variants_on_gpus(render):
    deployments = {d["metadata"]["name"]: d for d in manifests(render("prod", **PLAIN_PROD), "Deployment")}
    assert set(deployments) == {"churn-model-champion", "churn-model-challenger"}
    for deployment in deployments.values():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"] and pod["tolerations"]


def test_pods_run_the_image_digest_never_a_tag(render):
    for deployment in manifests(render("prod", **PLAIN_PROD), "Deployment"):
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image == f"ghcr.io/acme/mlserve/churn-model@{UNKNOWN_DIGEST}"


def test_a_given_image_reference_is_run_and_nothing_is_built(render):
    reference = "ghcr.io/acme/mlserve/churn-model@sha256:" + "ab" * 32
    resources = render("prod", **PLAIN_PROD, **{"image.reference": reference})
    assert not [r for r in resources if r.type.startswith("docker:")]
    for deployment in manifests(resources, "Deployment"):
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == reference


def test_numbers_render_as_integers(render):
    hpa = manifests(render("prod", **PLAIN_PROD), "HorizontalPodAutoscaler")[0]
    assert type(hpa["spec"]["maxReplicas"]) is int
    assert "maxReplicas: 10\n" in yaml.safe_dump(hpa)


def test_hpa_is_autoscaling_v2_with_cpu_and_requests_per_second(render):
    for hpa in manifests(render("prod", **PLAIN_PROD), "HorizontalPodAutoscaler"):
        assert hpa["apiVersion"] == "autoscaling/v2"
        types = {m["type"] for m in hpa["spec"]["metrics"]}
        assert {"Resource", "Pods"} <= types


def test_autoscaling_off_fixes_replicas(render):
    rendered = render("dev", **{"autoscaling.enabled": False, "serving.replicas": 2})
    assert not manifests(rendered, "HorizontalPodAutoscaler")
    assert manifests(rendered, "Deployment")[0]["spec"]["replicas"] == 2


@pytest.mark.parametrize("sets", [[], ["traffic.router=service", "traffic.challengerWeight=0"]], ids=["seldon", "plain"])
def test_cli_writes_one_valid_file_per_object(tmp_path, sets):
    result = run_render("--stack", "prod", "--out", str(tmp_path / "p"), *[arg for s in sets for arg in ("--set", s)])
    assert result.returncode == 0, result.stderr
    files = sorted((tmp_path / "p").glob("*.yaml"))
    listed = [line for line in result.stdout.splitlines() if line.endswith((".yaml", ".json"))]
    assert len(listed) == len(list((tmp_path / "p").rglob("*.*")))
    for path in files:
        manifest = yaml.safe_load(path.read_text())
        if is_built_in(manifest):
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        elif manifest["kind"] != "Gateway":  # Istio's CRD schema is not among ../shared/schemas/crds
            validate_against_crd(manifest)


def test_cli_rejects_invalid_config_with_exit_2(tmp_path):
    result = run_render("--stack", "prod", "--set", "traffic.challengerWeight=150", "--set", "autoscaling.minReplicas=0",
                        "--out", str(tmp_path / "x"))
    assert result.returncode == 2
    assert "traffic.challengerWeight" in result.stderr and "autoscaling.minReplicas" in result.stderr
    assert not (tmp_path / "x").exists()


def test_cli_set_changes_only_what_it_names(tmp_path):
    plain = ["--set", "traffic.router=service", "--set", "traffic.challengerWeight=0"]
    assert run_render("--stack", "prod", *plain, "--out", str(tmp_path / "a")).returncode == 0
    assert run_render("--stack", "prod", *plain, "--set", "autoscaling.maxReplicas=12", "--out", str(tmp_path / "b")).returncode == 0
    changed = [p.name for p in sorted((tmp_path / "a").glob("*.yaml")) if p.read_text() != (tmp_path / "b" / p.name).read_text()]
    assert changed == ["horizontalpodautoscaler-churn-model-challenger.yaml", "horizontalpodautoscaler-churn-model-champion.yaml"]

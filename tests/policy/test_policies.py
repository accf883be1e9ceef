"""The CrossGuard policy pack, offline: its validate functions on the objects `infra.render` produces.

A good stack passes every policy; each row of the violation table breaks one thing, through stack config
where config can express it, or by editing the rendered object the way a code bug would, and expects
exactly that policy to fail with a message naming the object and what to do.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from pulumi_policy import PolicyResource, PolicyResourceOptions, ResourceValidationArgs, StackValidationArgs

from infra.config import PROJECT_DIR
from infra.render import UNKNOWN_DIGEST
from policy.mlserve_policies import POLICIES, UNKNOWN, VALIDATIONS
from tests.infra.conftest import GATEWAY_PROD

DIGEST = "sha256:" + "ab" * 32
PLAIN_PROD = {"traffic.router": "service", "traffic.challengerWeight": 0}
SHADOW_PROD = {"traffic.shadow": True, "traffic.challengerWeight": 0}
GATEWAY_SHADOW = {**GATEWAY_PROD, **SHADOW_PROD, "traffic.shadowPercent": 20}


def as_applied(value: Any, digest: str = DIGEST) -> Any:
    """A rendered value with the digest `pulumi up` knows in place of the render's placeholder."""
    if isinstance(value, str):
        return value.replace(UNKNOWN_DIGEST, digest)
    if isinstance(value, dict):
        return {k: as_applied(v, digest) for k, v in value.items()}
    if isinstance(value, list):
        return [as_applied(v, digest) for v in value]
    return value


def violations(resources: list[tuple[str, str, dict]]) -> list[tuple[str, str]]:
    """(policy, message) for every violation of every policy, over (type, name, props) resources."""
    found: list[tuple[str, str]] = []
    options = PolicyResourceOptions(False, [], None, [], None, [], None)
    for policy, (_, kind, validate) in VALIDATIONS.items():
        def report(message: str, urn: str | None = None, policy: str = policy) -> None:
            found.append((policy, message))
        if kind == "resource":
            for resource_type, name, props in resources:
                validate(ResourceValidationArgs(resource_type, props, f"urn:{name}", name, options, None), report)
        else:
            stack = [PolicyResource(t, props, f"urn:{n}", n, options, None, None, [], {}) for t, n, props in resources]
            validate(StackValidationArgs(stack), report)
    return found


def rendered(render, stack: str, overrides: dict, digest: str = DIGEST) -> list[tuple[str, str, dict]]:
    return [(r.type, r.name, as_applied(copy.deepcopy(r.inputs), digest)) for r in render(stack, **overrides)]


def test_the_pack_declares_every_policy_mandatory():
    assert [p.name for p in POLICIES] == list(VALIDATIONS)
    pack = yaml.safe_load((PROJECT_DIR / "policy" / "PulumiPolicy.yaml").read_text())
    assert pack["runtime"]["name"] == "python"
    assert (PROJECT_DIR / "policy" / pack["runtime"]["options"]["virtualenv"]).resolve() == (PROJECT_DIR / ".venv")
    main = (PROJECT_DIR / "policy" / "__main__.py").read_text()
    assert "PolicyPack(" in main and "policies=POLICIES" in main and "ENFORCEMENT" in main


@pytest.mark.parametrize(
    ("stack", "overrides"),
    [("dev", {}), ("prod", {}), ("prod", PLAIN_PROD), ("prod", SHADOW_PROD), ("prod", {"traffic.challengerWeight": 100}),
     ("prod", GATEWAY_PROD), ("prod", GATEWAY_SHADOW), ("prod", {**GATEWAY_PROD, "traffic.sticky": True})],
    ids=["dev", "prod-seldon", "prod-plain", "prod-shadow", "prod-challenger-100", "prod-gateway", "prod-gateway-shadow",
         "prod-gateway-sticky"],
)
def test_good_stacks_pass_every_policy(render, stack, overrides):
    assert violations(rendered(render, stack, overrides)) == []


def test_an_image_digest_unknown_during_preview_passes(render):
    # In a preview the image's repo digest is not known yet: Pulumi hands the policy its unknown sentinel.
    resources = rendered(render, "prod", {}, digest=DIGEST)
    for _, _, props in resources:
        for predictor in (props.get("spec") or {}).get("predictors") or []:
            for component in predictor["componentSpecs"]:
                component["spec"]["containers"][0]["image"] = UNKNOWN
    assert violations(resources) == []


def model_container(props: dict, variant: str = "champion") -> dict:
    """The model container of a variant, in a Deployment or a SeldonDeployment."""
    if "predictors" in props.get("spec", {}):
        predictor = next(p for p in props["spec"]["predictors"] if p["name"] == variant)
        return predictor["componentSpecs"][0]["spec"]["containers"][0]
    return props["spec"]["template"]["spec"]["containers"][0]


def pod(props: dict, variant: str = "champion") -> dict:
    if "predictors" in props.get("spec", {}):
        return next(p for p in props["spec"]["predictors"] if p["name"] == variant)["componentSpecs"][0]["spec"]
    return props["spec"]["template"]["spec"]


def edit(kind: str, change: Callable[[dict], None]) -> Callable[[list], list]:
    """Apply `change` to the props of every rendered object of `kind`."""
    def apply(resources: list) -> list:
        for _, _, props in resources:
            if props.get("kind") == kind:
                change(props)
        return resources
    return apply


def drop(kind: str) -> Callable[[list], list]:
    return lambda resources: [r for r in resources if r[2].get("kind") != kind]


SELDON = "SeldonDeployment"


def split_rule(props: dict) -> dict:
    return next(rule for rule in props["spec"]["rules"] if rule["name"] == "split")
VIOLATIONS = [
    # (id, stack, config overrides, edit of the rendered objects, policy, message)
    ("tag-not-digest", "prod", {}, edit(SELDON, lambda p: model_container(p).update(image="ghcr.io/acme/churn-model:latest")),
     "model-image-by-digest", "container 'customer-churn-classifier' runs image 'ghcr.io/acme/churn-model:latest', not pinned by digest"),
    ("no-memory-limit", "dev", {}, edit("Deployment", lambda p: model_container(p)["resources"]["limits"].pop("memory")),
     "model-requests-and-limits", "Deployment churn-model-champion: container 'customer-churn-classifier' has no limits.memory"),
    ("no-startup-probe", "prod", {}, edit(SELDON, lambda p: model_container(p, "challenger").pop("startupProbe")),
     "model-probes", "predictor challenger: container 'customer-churn-classifier' has no startupProbe"),
    ("privilege-escalation", "dev", {}, edit("Deployment", lambda p: model_container(p)["securityContext"].update(
        allowPrivilegeEscalation=True)), "model-restricted-security", "allowPrivilegeEscalation is not false"),
    ("root", "prod", PLAIN_PROD, edit("Deployment", lambda p: (model_container(p)["securityContext"].pop("runAsNonRoot"),
                                                               pod(p)["securityContext"].pop("runAsNonRoot"))),
     "model-restricted-security", "runAsNonRoot is not true"),
    ("no-gpu-toleration", "prod", {}, edit(SELDON, lambda p: pod(p, "challenger").pop("tolerations")),
     "gpu-scheduling", "asks for nvidia.com/gpu but does not tolerate the GPU taint nvidia.com/gpu:NoSchedule"),
    ("gpu-node-without-gpu", "prod", {}, edit(SELDON, lambda p: model_container(p)["resources"]["limits"].pop("nvidia.com/gpu")),
     "gpu-scheduling", "is pinned to GPU nodes but has no GPU limit"),
    ("weight-over-100", "prod", {}, edit(SELDON, lambda p: p["spec"]["predictors"][1].update(traffic=150)),
     "challenger-weight", "predictor 'challenger': traffic 150 is not a percent 0..100"),
    ("weights-not-100", "prod", {}, edit(SELDON, lambda p: p["spec"]["predictors"][1].update(traffic=20)),
     "challenger-weight", "predictor traffic adds up to 110, not 100"),
    ("no-pdb", "dev", {}, drop("PodDisruptionBudget"),
     "model-disruption-budget", "Deployment churn-model-champion: no PodDisruptionBudget selects its pods"),
    # Seldon's per-component pdbSpec, or PodDisruptionBudgets made by the stack: either counts, so remove both.
    ("seldon-no-pdb", "prod", {}, lambda rs: drop("PodDisruptionBudget")(edit(SELDON, lambda p: [
        c.pop("pdbSpec", None) for pr in p["spec"]["predictors"] for c in pr["componentSpecs"]])(rs)),
     "model-disruption-budget", "predictor champion: no PodDisruptionBudget selects its pods"),
    ("challenger-unmonitored", "prod", {"monitoring.enabled": False}, None,
     "challenger-monitoring", "the challenger takes traffic but no PodMonitor or ServiceMonitor scrapes its pods"),
    ("shadow-unmonitored", "prod", SHADOW_PROD, drop("PodMonitor"),
     "challenger-monitoring", "no PodMonitor or ServiceMonitor scrapes its pods"),
    ("route-weights-not-100", "prod", GATEWAY_PROD, edit("HTTPRoute", lambda p: split_rule(p)["backendRefs"][1].update(weight=20)),
     "challenger-weight", "HTTPRoute churn-model rule 'split': backend weights add up to 110, not 100"),
    ("route-weight-not-a-percent", "prod", GATEWAY_PROD, edit("GRPCRoute", lambda p: split_rule(p)["backendRefs"][0].update(weight=900)),
     "challenger-weight", "GRPCRoute churn-model rule 'split': backend weights [900, 10] are not percents 0..100"),
    ("gateway-challenger-unmonitored", "prod", {**GATEWAY_PROD, "monitoring.enabled": False}, None,
     "challenger-monitoring", "Deployment churn-model-challenger: the challenger takes traffic but no PodMonitor"),
    ("gateway-shadow-unmonitored", "prod", GATEWAY_SHADOW, drop("PodMonitor"),
     "challenger-monitoring", "Deployment churn-model-challenger: the challenger takes traffic but no PodMonitor"),
    ("route-to-a-missing-service", "prod", GATEWAY_PROD, edit("HTTPRoute", lambda p: split_rule(p)["backendRefs"][1].update(name="churn-model-canary")),
     "route-backends", "HTTPRoute churn-model: backend Service mlserve/churn-model-canary is not a Service of this stack"),
    ("route-to-a-wrong-port", "prod", GATEWAY_PROD, edit("GRPCRoute", lambda p: p["spec"]["rules"][0]["backendRefs"][0].update(port=1234)),
     "route-backends", "GRPCRoute churn-model: backend Service churn-model-champion has no port 1234"),
    ("prod-one-replica", "prod", {"autoscaling.minReplicas": 1}, None,
     "prod-replicas", "stack 'prod' runs 1 replica(s) of the champion; prod needs at least 2 per variant"),
    ("prod-plain-one-replica", "prod", {**PLAIN_PROD, "autoscaling.enabled": False, "serving.replicas": 1}, None,
     "prod-replicas", "Deployment churn-model-champion: stack 'prod' runs 1 replica(s)"),
]


@pytest.mark.parametrize(("stack", "overrides", "change", "policy", "message"),
                         [row[1:] for row in VIOLATIONS], ids=[row[0] for row in VIOLATIONS])
def test_each_violation_fails_its_policy_with_a_clear_message(render, stack, overrides, change, policy, message):
    resources = rendered(render, stack, overrides)
    if change is not None:
        resources = change(resources)
    found = violations(resources)
    assert found, "no policy failed"
    assert {name for name, _ in found} == {policy}, found
    assert any(message in text for _, text in found), found


def test_dev_may_run_one_replica(render):
    assert violations(rendered(render, "dev", {"autoscaling.minReplicas": 1})) == []

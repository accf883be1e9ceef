"""The feedback loop in the stack: the signing key's Secret, the pods' env, and the /feedback Service."""

from __future__ import annotations

import kubernetes_validate
import pytest

from infra.config import load_stack_config
from infra.errors import ConfigError
from tests.infra.conftest import KUBERNETES_VERSION, manifests

KEY = "k3y-" + "x" * 40
ON = {"feedback.signingKey": KEY}
PLAIN_PROD = {"traffic.router": "service", "traffic.challengerWeight": 0}


def pod_templates(resources):
    """Every model pod template: the plain Deployments' and the SeldonDeployment predictors' componentSpecs."""
    templates = [m["spec"]["template"] for m in manifests(resources, "Deployment")]
    for sdep in manifests(resources, "SeldonDeployment"):
        templates += [spec for predictor in sdep["spec"]["predictors"] for spec in predictor["componentSpecs"]]
    return templates


def env_of(template):
    return {entry["name"]: entry for entry in template["spec"]["containers"][0]["env"]}


@pytest.mark.parametrize(("stack", "overrides"), [("dev", {}), ("prod", {}), ("prod", PLAIN_PROD)],
                         ids=["dev", "prod seldon", "prod plain"])
def test_with_a_signing_key_every_pod_signs_and_one_service_reaches_them_all(render, stack, overrides):
    resources = render(stack, **overrides, **ON)
    secrets = manifests(resources, "Secret")
    assert [secret["metadata"]["name"] for secret in secrets] == ["churn-model-prediction-ids"]
    # The key is a secret Output: the render shows its place, never its value.
    assert secrets[0]["stringData"] == {"key": "<secret>"}
    assert KEY not in str(resources)
    templates = pod_templates(resources)
    assert templates
    for template in templates:
        env = env_of(template)
        assert env["MLSERVE_PREDICTION_ID_KEY"]["valueFrom"] == {
            "secretKeyRef": {"name": "churn-model-prediction-ids", "key": "key"}}
        assert env["MLSERVE_FEEDBACK_MAX_AGE_SECONDS"]["value"] == str(30 * 86400)
    feedback = [svc for svc in manifests(resources, "Service") if svc["metadata"]["name"] == "churn-model-feedback"]
    assert len(feedback) == 1
    spec = feedback[0]["spec"]
    # The selector matches every model pod of every variant: a subset of each template's labels.
    for template in templates:
        assert spec["selector"].items() <= template["metadata"]["labels"].items()
    port = load_stack_config(stack, overrides={**overrides, **ON}).serving.port
    assert spec["ports"][0]["targetPort"] == port
    for manifest in (*secrets, *feedback):
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_without_a_key_there_is_no_secret_no_env_and_no_feedback_service(render, stack):
    resources = render(stack)
    assert manifests(resources, "Secret") == []
    assert not any(svc["metadata"]["name"].endswith("-feedback") for svc in manifests(resources, "Service"))
    for template in pod_templates(resources):
        assert "MLSERVE_PREDICTION_ID_KEY" not in env_of(template)


def test_a_short_key_is_refused_without_echoing_it():
    with pytest.raises(ConfigError) as caught:
        load_stack_config("prod", overrides={"feedback.signingKey": "hunter2"})
    message = str(caught.value)
    assert "feedback.signingKey: must be empty or at least 32 characters" in message
    assert "hunter2" not in message
    assert "hunter2" not in repr(load_stack_config("prod", overrides=ON).feedback) and KEY not in repr(
        load_stack_config("prod", overrides=ON).feedback)

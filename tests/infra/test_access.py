"""Registry and artifact-store access: credentials by reference from a Secret, never in plain text; workload identity."""

from __future__ import annotations

import base64
import shutil

import kubernetes_validate
import pytest
import yaml

from infra.config import PROJECT_DIR, load_stack_config
from infra.errors import ConfigError
from infra.workload import CREDENTIAL_ENV
from tests.infra.conftest import KUBERNETES_VERSION, manifests, run_render, stack_config

# One known value per credential key, each unlike anything else in a render.
KNOWN_SECRETS = {
    "access.mlflowTrackingToken": "tok-9f3b2c7e-known",
    "access.mlflowTrackingUsername": "svc-mlserve-known",
    "access.mlflowTrackingPassword": "pw-Zq81!known",
    "access.awsAccessKeyId": "AKIAKNOWNVALUE0001",
    "access.awsSecretAccessKey": "aws/secret+known/value",
    "access.azureStorageConnectionString": "DefaultEndpointsProtocol=https;AccountKey=known==",
}
IDENTITY = {
    "access.serviceAccountAnnotations": ["eks.amazonaws.com/role-arn=arn:aws:iam::123456789012:role/mlserve"],
    "access.env": ["MLFLOW_S3_ENDPOINT_URL=https://minio.example.com", "AWS_DEFAULT_REGION=eu-west-1"],
}


def pods(resources) -> list[dict]:
    """Every model pod spec: the plain Deployments' and the Seldon predictors'."""
    specs = [d["spec"]["template"]["spec"] for d in manifests(resources, "Deployment")]
    for sdep in manifests(resources, "SeldonDeployment"):
        specs += [c["spec"] for p in sdep["spec"]["predictors"] for c in p["componentSpecs"]]
    return specs


@pytest.mark.parametrize("router", ["seldon", "service"])
def test_a_secret_set_in_config_is_nowhere_in_the_rendered_files(tmp_path, router):
    sets = [f"{key}={value}" for key, value in KNOWN_SECRETS.items()]
    if router == "service":
        sets += ["traffic.router=service", "traffic.challengerWeight=0"]
    result = run_render("--stack", "prod", "--out", str(tmp_path / "out"), *[arg for s in sets for arg in ("--set", s)])
    assert result.returncode == 0, result.stderr
    files = sorted(p for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert any(p.name.startswith("secret-") for p in files)
    for value in KNOWN_SECRETS.values():
        encoded = base64.b64encode(value.encode()).decode()
        for path in files:
            text = path.read_text()
            assert value not in text and encoded not in text, f"{value!r} in {path.name}"
        assert value not in result.stdout + result.stderr


def test_pods_read_every_credential_by_reference_from_one_secret(render):
    resources = render("prod", **KNOWN_SECRETS)
    (secret,) = manifests(resources, "Secret")
    kubernetes_validate.validate(secret, KUBERNETES_VERSION, strict=True)
    assert sorted(secret["stringData"]) == sorted(CREDENTIAL_ENV.values())
    assert len(pods(resources)) == 2
    for pod in pods(resources):
        env = {entry["name"]: entry for entry in pod["containers"][0]["env"]}
        for name in CREDENTIAL_ENV.values():
            assert env[name] == {"name": name, "valueFrom": {"secretKeyRef": {"name": secret["metadata"]["name"], "key": name}}}


def test_without_credentials_there_is_no_secret_and_no_reference(render):
    resources = render("prod")
    assert not manifests(resources, "Secret")
    for pod in pods(resources):
        assert not [entry for entry in pod["containers"][0]["env"] if "valueFrom" in entry]


@pytest.mark.parametrize("overrides", [{}, {"traffic.router": "service", "traffic.challengerWeight": 0}], ids=["seldon", "plain"])
def test_pods_run_as_a_service_account_with_the_workload_identity_annotations(render, overrides):
    resources = render("prod", **IDENTITY, **overrides)
    (account,) = manifests(resources, "ServiceAccount")
    kubernetes_validate.validate(account, KUBERNETES_VERSION, strict=True)
    assert account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/mlserve"}
    assert account["automountServiceAccountToken"] is False
    for pod in pods(resources):
        assert pod["serviceAccountName"] == account["metadata"]["name"]
        env = pod["containers"][0]["env"]
        assert {"name": "MLFLOW_S3_ENDPOINT_URL", "value": "https://minio.example.com"} in env
        assert {"name": "AWS_DEFAULT_REGION", "value": "eu-west-1"} in env


def test_an_encrypted_value_in_a_stack_file_renders_as_a_reference(tmp_path, render):
    """`pulumi config set --secret --path access.mlflowTrackingToken T` writes ciphertext; a render cannot
    decrypt it and needs not: the Secret names the entry, the pods reference it."""
    shutil.copy(PROJECT_DIR / "Pulumi.yaml", tmp_path)
    stack = yaml.safe_load((PROJECT_DIR / "Pulumi.prod.yaml").read_text())
    stack["config"]["mlserve:access"] = {"mlflowTrackingToken": {"secure": "v1:Zm9vYmFy:ciphertext=="}}
    (tmp_path / "Pulumi.enc.yaml").write_text(yaml.safe_dump(stack))
    config = load_stack_config("enc", project_dir=tmp_path)
    assert config.access.mlflow_tracking_token is not None
    assert "ciphertext" not in repr(config)


def test_config_never_echoes_a_credential():
    config = stack_config("prod", **KNOWN_SECRETS)
    for value in KNOWN_SECRETS.values():
        assert value not in repr(config) and value not in str(config.access)
    with pytest.raises(ConfigError) as caught:
        stack_config("prod", **{"access.mlflowTrackingPassword": ["pw-in-a-list-known"]})
    assert "access.mlflowTrackingPassword: expected a string" in str(caught.value)
    assert "pw-in-a-list-known" not in str(caught.value)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("access.env", ["NO_EQUALS_SIGN"], "access.env: item 0 ('NO_EQUALS_SIGN') must be NAME=VALUE"),
        ("access.env", ["1BAD=x"], "access.env: item 0 ('1BAD=x') must be NAME=VALUE"),
        ("access.serviceAccountAnnotations", ["bad key=x"], "access.serviceAccountAnnotations: item 0 ('bad key=x') must be KEY=VALUE"),
    ],
)
def test_bad_access_entries_name_the_key_and_the_form(key, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        stack_config("prod", **{key: value})

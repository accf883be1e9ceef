"""The image: content-addressed tag, byte-identical build context, the models' requirements inside it."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from infra import workload
from infra.errors import ImageBuildError
from infra.image_context import (
    BUILD_DIR, CONTEXT_ROOT, FIXED_CREATION_TIME, export_docker_context, image_inputs, prepare_image, source_files,
)
from infra.requirements import RequirementConflict, check_requirements, model_packages
from tests.infra.conftest import stack_config
from tests.infra.registry import CHALLENGER_REQUIREMENTS, MODEL_NAME, log_version, infra_registry


def tree(directory):
    """Every file under `directory`: relative path -> (bytes, mode, mtime)."""
    return {
        str(path.relative_to(directory)): (path.read_bytes(), path.stat().st_mode, path.stat().st_mtime)
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def inputs_of(config, **options):
    """The image inputs of a whole stack config."""
    return image_inputs(config.model, config.image, **options)


@pytest.fixture(scope="module")
def two_exports(tmp_path_factory):
    """The prod image's context exported twice from scratch, in two project folders."""
    inputs = inputs_of(stack_config("prod"))
    contexts = []
    for name in ("first", "second"):
        project = tmp_path_factory.mktemp(name)
        contexts.append(project / export_docker_context(inputs, project_dir=project, reuse=False).directory)
    return inputs, contexts


def test_two_exports_of_the_same_inputs_are_byte_identical(two_exports):
    inputs, (first, second) = two_exports
    assert first.name == second.name == inputs.tag
    assert tree(first) == tree(second)
    bento = (first / "bento.yaml").read_text()
    assert f"version: {inputs.tag}\n" in bento
    assert f"creation_time: '{FIXED_CREATION_TIME}'" in bento


def test_the_tag_is_a_function_of_the_inputs_alone():
    config = stack_config("prod")
    assert inputs_of(config).tag == inputs_of(stack_config("prod", **{"traffic.challengerWeight": 25})).tag
    assert re.fullmatch(r"[0-9a-f]{20}", inputs_of(config).tag)


def test_a_change_in_the_service_changes_the_tag(tmp_path):
    config = stack_config("prod")
    copy = tmp_path / "root"
    shutil.copytree(BUILD_DIR / "service", copy / "service", ignore=shutil.ignore_patterns("__pycache__"))
    assert inputs_of(config, build_dir=copy).tag == inputs_of(config).tag
    service = next(copy / path for path in source_files(copy, {"include": ["service/*.py"]}) if path.endswith("service.py"))
    service.write_text(service.read_text() + "\n# a change\n")
    assert inputs_of(config, build_dir=copy).tag != inputs_of(config).tag


@pytest.mark.parametrize(
    ("overrides", "changes"),
    [
        ({"image.artifactStoreClients": ["s3"]}, True),
        ({"image.platform": "linux/arm64"}, True),
        ({"model.challengerUri": "", "traffic.challengerWeight": 0}, True),  # the challenger's lightgbm leaves the image
        ({"serving.port": 8080}, False),
        ({"image.repository": "registry.example.com/other/churn"}, False),
    ],
    ids=["artifact-clients", "platform", "no-challenger", "port", "repository"],
)
def test_which_config_changes_the_tag(overrides, changes):
    assert (inputs_of(stack_config("prod", **overrides)).tag != inputs_of(stack_config("prod")).tag) is changes


def test_context_holds_what_bentoml_built_from_exactly_the_hashed_sources(two_exports):
    inputs, (context, _) = two_exports
    assert (context / "env/docker/Dockerfile").is_file()
    copied = sorted(str(p.relative_to(context / "src")) for p in (context / "src").rglob("*") if p.is_file())
    # bentoml writes the effective bentofile into src/; every other file there is a hashed source.
    assert [p for p in copied if p != "bentofile.yaml"] == [path for path, _digest in inputs.sources]


def test_models_recorded_requirements_and_artifact_clients_reach_the_image(tmp_path):
    config = stack_config("prod", **{"image.artifactStoreClients": ["s3", "azure"]})
    context = export_docker_context(inputs_of(config), project_dir=tmp_path)
    installed = (tmp_path / context.directory / "env/python/requirements.txt").read_text().splitlines()
    for requirement in (*CHALLENGER_REQUIREMENTS, "boto3==1.44.5", "azure-storage-blob==12.31.1", "azure-identity==1.27.0"):
        assert requirement in installed
    assert "google-cloud-storage==3.17.1" not in installed
    assert "bentoml==1.4.39" in installed


def test_image_user_is_the_uid_the_pods_run_as(two_exports):
    """The restricted security context sets runAsUser; it must be the image's own non-root user."""
    _, (context, _) = two_exports
    uid = re.search(r"ARG BENTO_USER_UID=(\d+)", (context / "env/docker/Dockerfile").read_text())
    assert uid and int(uid.group(1)) == workload.BENTO_UID


def test_bento_home_stays_outside_the_build_context(two_exports):
    _, (context, _) = two_exports
    assert not (context / "bentoml").exists()
    assert not list(context.rglob("bentos"))


def test_render_uses_the_tag_and_context_pulumi_up_builds(render):
    config = stack_config("prod")
    tag = prepare_image(config.model, config.image).tag
    (image,) = [r for r in render("prod") if r.type == "docker:index/image:Image"]
    assert image.inputs["imageName"] == f"{config.image.repository}:{tag}"
    assert image.inputs["build"]["context"] == str(CONTEXT_ROOT / tag)
    assert "unbuilt" not in json.dumps(image.inputs)


CONFLICTS = [
    (["scikit-learn==1.9.1"], {"models:/m@champion": ["scikit-learn==1.0.2"]}, ["scikit-learn"]),
    (["numpy==2.4.6"], {"models:/m@champion": ["numpy<2"]}, ["numpy"]),
    ([], {"models:/m@champion": ["pandas==2.2.0"], "models:/m@challenger": ["pandas==3.1.1"]}, ["pandas"]),
    (["mlflow==3.17.2", "numpy==2.4.6"], {"models:/m@c": ["mlflow==2.9.0", "numpy==1.26.4"]}, ["mlflow", "numpy"]),
]


@pytest.mark.parametrize(("server", "models", "packages"), CONFLICTS, ids=["pin", "range", "two-models", "two-at-once"])
def test_conflicts_are_all_reported_with_both_sides(server, models, packages):
    with pytest.raises(RequirementConflict) as caught:
        check_requirements(server, models)
    assert [conflict.split(":")[0] for conflict in caught.value.conflicts] == packages
    message = str(caught.value)
    for lines in models.values():
        for line in lines:
            assert line in message


@pytest.mark.parametrize(
    ("server", "models"),
    [
        (["scikit-learn==1.9.1"], {"models:/m@champion": ["scikit-learn>=1.5", "scikit-learn"]}),
        (["numpy==2.4.6"], {"models:/m@champion": ["numpy==2.4.6"], "models:/m@challenger": ["numpy>=2"]}),
        (["pandas==3.1.1"], {"models:/m@champion": ["# a comment", "", "--extra-index-url https://x", "torch==2.9.0"]}),
        (["numpy==2.4.6"], {"models:/m@champion": ['numpy==1.26.4; python_version < "3"']}),
    ],
    ids=["satisfied", "same-pin", "options-skipped", "marker-not-applicable"],
)
def test_compatible_requirements_pass(server, models):
    check_requirements(server, models)


def test_model_packages_are_each_listed_once_in_a_stable_order():
    assert model_packages({"a": ["Torch==2.9.0", "numpy==2.4.6"], "b": ["numpy==2.4.6"]}) == ("numpy==2.4.6", "Torch==2.9.0")


def test_an_invalid_requirement_names_its_model():
    with pytest.raises(ImageBuildError, match=r"models:/m@champion: requirement 'numpy=>1' is not valid"):
        check_requirements([], {"models:/m@champion": ["numpy=>1"]})


def test_a_conflicting_model_stops_the_build_with_both_sides(tmp_path):
    import mlflow

    registry = infra_registry()
    mlflow.set_tracking_uri(registry.uri)
    mlflow.set_registry_uri(registry.uri)
    try:
        log_version("conflicting-model", ("scikit-learn==1.0.2",), "champion")
    finally:
        mlflow.set_tracking_uri("")
        mlflow.set_registry_uri("")
    config = stack_config("prod", **{"model.championUri": "models:/conflicting-model@champion"})
    with pytest.raises(RequirementConflict) as caught:
        export_docker_context(inputs_of(config), project_dir=tmp_path)
    # The champion disagrees with the server's pin and with the challenger's: both are reported.
    assert sorted(caught.value.conflicts) == [
        "scikit-learn: scikit-learn==1.0.2 (models:/conflicting-model@champion) against "
        f"scikit-learn==1.9.1 (models:/{MODEL_NAME}@challenger)",
        "scikit-learn: scikit-learn==1.9.1 (the model server) against scikit-learn==1.0.2 (models:/conflicting-model@champion)",
    ]


def test_an_unreadable_model_names_the_model_and_the_registry():
    config = stack_config("prod", **{"model.championUri": f"models:/{MODEL_NAME}@nonexistent"})
    with pytest.raises(ImageBuildError, match=rf"models:/{MODEL_NAME}@nonexistent from the registry at sqlite:"):
        inputs_of(config)

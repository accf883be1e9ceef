"""The image build context: `bentoml build` of service/ exported for Docker, matching what the pods expect."""

from __future__ import annotations

import re

import pytest

from infra import workload
from infra.image import export_docker_context


@pytest.fixture(scope="module")
def docker_context(tmp_path_factory):
    home = tmp_path_factory.mktemp("mlserve-home")
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("MLSERVE_HOME", str(home))
    monkeypatch.delenv("BENTOML_HOME", raising=False)
    try:
        yield export_docker_context(out_dir=home / "context")
    finally:
        monkeypatch.undo()


def test_context_holds_a_dockerfile_and_the_service_source(docker_context):
    dockerfile = docker_context.directory / docker_context.dockerfile
    assert dockerfile.is_file()
    assert (docker_context.directory / "bento.yaml").is_file()
    assert list((docker_context.directory / "src").rglob("service.py"))
    assert docker_context.bento_tag and ":" in docker_context.bento_tag


def test_image_user_is_the_uid_the_pods_run_as(docker_context):
    """The restricted security context sets runAsUser; it must be the image's own non-root user."""
    dockerfile = (docker_context.directory / docker_context.dockerfile).read_text()
    uid = re.search(r"ARG BENTO_USER_UID=(\d+)", dockerfile)
    assert uid and int(uid.group(1)) == workload.BENTO_UID


def test_bento_home_stays_outside_the_build_context(docker_context):
    assert not (docker_context.directory / "bentoml").exists()
    assert not list(docker_context.directory.rglob("bentos"))

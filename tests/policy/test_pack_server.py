"""The pack as the Pulumi engine runs it: `policy/__main__.py` in the project's virtualenv serves the
analyzer gRPC protocol (pulumi/runtime/proto/analyzer.proto) on the port it prints; the engine then asks
for the policies and sends each resource. Here we are the engine, on loopback."""

from __future__ import annotations

import copy
import subprocess
import sys

import grpc
import pytest
from google.protobuf import empty_pb2, struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc

from infra.config import PROJECT_DIR
from policy.mlserve_policies import VALIDATIONS
from tests.policy.test_policies import as_applied

MANDATORY = 1  # analyzer.proto EnforcementLevel: ADVISORY 0, MANDATORY 1


@pytest.fixture(scope="module")
def analyzer():
    process = subprocess.Popen([sys.executable, "__main__.py"], cwd=PROJECT_DIR / "policy",
                               stdout=subprocess.PIPE, text=True)
    try:
        port = int(process.stdout.readline())
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        yield analyzer_pb2_grpc.AnalyzerStub(channel)
        channel.close()
    finally:
        process.kill()
        process.wait(timeout=30)


def analyze(analyzer, resource) -> list:
    properties = struct_pb2.Struct()
    properties.update(as_applied(copy.deepcopy(resource.inputs)))
    request = analyzer_pb2.AnalyzeRequest(
        type=resource.type, properties=properties, name=resource.name,
        urn=f"urn:pulumi:prod::mlserve::{resource.type}::{resource.name}")
    return list(analyzer.Analyze(request, timeout=30).diagnostics)


def test_engine_sees_every_policy_as_mandatory(analyzer):
    info = analyzer.GetAnalyzerInfo(empty_pb2.Empty(), timeout=30)
    assert info.name == "mlserve-guardrails"
    assert [(p.name, p.enforcementLevel) for p in info.policies] == [(name, MANDATORY) for name in VALIDATIONS]


def test_rendered_prod_passes_over_the_wire_and_a_tagged_image_fails(analyzer, render):
    # Over gRPC every number is a double (google.protobuf.Struct): 90 arrives as 90.0.
    sdep = next(r for r in render("prod") if r.inputs.get("kind") == "SeldonDeployment")
    assert analyze(analyzer, sdep) == []
    bad = copy.deepcopy(sdep)
    bad.inputs["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0]["image"] = "churn-model:latest"
    [diagnostic] = analyze(analyzer, bad)
    assert diagnostic.policyName == "model-image-by-digest" and diagnostic.enforcementLevel == MANDATORY
    assert "runs image 'churn-model:latest', not pinned by digest" in diagnostic.message

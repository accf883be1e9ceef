"""Stack config: defaults from Pulumi.yaml, stack overrides, and every invalid value rejected by key."""

from __future__ import annotations

import json
from pathlib import Path

import pulumi
import pytest
import yaml

from infra.config import (
    PROJECT_DIR, SECTIONS, StackConfig, load_stack_config, parse_override, read_declarations, values_from_pulumi,
)
from infra.errors import ConfigError

# (case id, overrides on the prod stack, key the error must name, words the message must carry)
INVALID = [
    ("weight-above-100", {"traffic.challengerWeight": 150}, "traffic.challengerWeight", "between 0 and 100"),
    ("weight-negative", {"traffic.challengerWeight": -5}, "traffic.challengerWeight", "between 0 and 100"),
    ("weight-not-integer", {"traffic.challengerWeight": "ten"}, "traffic.challengerWeight", "integer"),
    ("weight-without-challenger", {"traffic.router": "seldon", "traffic.challengerWeight": 10, "model.challengerUri": ""},
     "traffic.challengerWeight", "model.challengerUri"),
    ("weight-on-plain-service", {"traffic.router": "service", "traffic.challengerWeight": 10},
     "traffic.challengerWeight", "seldon"),
    ("unknown-router", {"traffic.router": "istio-magic"}, "traffic.router", "service, seldon"),
    ("shadow-with-weight", {"traffic.shadow": True, "traffic.challengerWeight": 10}, "traffic.shadow", "weight must be 0"),
    ("shadow-on-plain-service", {"traffic.shadow": True, "traffic.challengerWeight": 0, "traffic.router": "service"},
     "traffic.shadow", "seldon"),
    ("shadow-without-challenger", {"traffic.shadow": True, "traffic.challengerWeight": 0, "model.challengerUri": ""},
     "traffic.shadow", "model.challengerUri"),
    ("seldon-namespace-not-dns", {"platform.seldonNamespace": "Seldon System"}, "platform.seldonNamespace", "DNS label"),
    ("zero-min-replicas", {"autoscaling.minReplicas": 0}, "autoscaling.minReplicas", "between 1"),
    ("negative-replicas", {"serving.replicas": -1}, "serving.replicas", "between 1"),
    ("min-above-max", {"autoscaling.minReplicas": 8, "autoscaling.maxReplicas": 4}, "autoscaling.minReplicas", "maxReplicas"),
    ("replicas-wrong-type", {"autoscaling.maxReplicas": "many"}, "autoscaling.maxReplicas", "integer"),
    ("replicas-bool", {"autoscaling.maxReplicas": True}, "autoscaling.maxReplicas", "integer"),
    ("cpu-malformed", {"serving.cpuRequest": "lots"}, "serving.cpuRequest", "quantity"),
    ("cpu-negative", {"serving.cpuLimit": "-1"}, "serving.cpuLimit", "quantity"),
    ("memory-malformed", {"serving.memoryLimit": "4GB"}, "serving.memoryLimit", "quantity"),
    ("request-above-limit", {"serving.memoryRequest": "8Gi"}, "serving.memoryRequest", "limit"),
    ("unknown-gpu-resource", {"gpu.resource": "nvidia.com/tpu"}, "gpu.resource", "nvidia.com/gpu"),
    ("gpu-count-zero", {"gpu.count": 0}, "gpu.count", "between 1"),
    ("gpu-without-node-selector", {"gpu.nodeSelector": []}, "gpu.nodeSelector", "GPU node"),
    ("node-selector-malformed", {"gpu.nodeSelector": ["gpu-pool"]}, "gpu.nodeSelector", "KEY=VALUE"),
    ("toleration-bad-effect", {"gpu.tolerations": ["nvidia.com/gpu:Sometimes"]}, "gpu.tolerations", "NoSchedule"),
    ("cpu-target-zero", {"autoscaling.targetCpuUtilization": 0}, "autoscaling.targetCpuUtilization", "between 1 and 100"),
    ("memory-target-above-100", {"autoscaling.targetMemoryUtilization": 101}, "autoscaling.targetMemoryUtilization",
     "between 1 and 100"),
    ("push-without-registry", {"image.repository": "churn-model", "image.push": True}, "image.repository", "registry"),
    ("image-with-tag", {"image.repository": "ghcr.io/acme/churn:latest"}, "image.repository", "without tag"),
    ("push-not-boolean", {"image.push": "maybe"}, "image.push", "boolean"),
    ("image-reference-without-tag", {"image.reference": "ghcr.io/acme/churn"}, "image.reference", "tag or digest"),
    ("image-reference-short-digest", {"image.reference": "ghcr.io/acme/churn@sha256:abc"}, "image.reference",
     "sha256:<64 hex>"),
    ("bad-model-uri", {"model.championUri": "customer-churn-classifier"}, "model.championUri", "models:/NAME@ALIAS"),
    ("empty-champion", {"model.championUri": ""}, "model.championUri", "must not be empty"),
    ("unknown-classifier-output", {"model.classifierOutput": "labels"}, "model.classifierOutput", "predict_proba"),
    ("pickle-not-boolean", {"model.allowPickleDeserialization": "sometimes"}, "model.allowPickleDeserialization",
     "boolean"),
    ("namespace-not-dns", {"namespace": "ML_Serve"}, "namespace", "DNS label"),
    ("port-privileged", {"serving.port": 80}, "serving.port", "between 1024"),
    ("grpc-port-is-http-port", {"serving.grpcPort": 3000, "serving.port": 3000}, "serving.grpcPort", "port each"),
    ("grpc-port-is-executors", {"serving.grpcPort": 5001}, "serving.grpcPort", "Seldon's executor"),
    ("http-port-is-executors", {"serving.port": 8000}, "serving.port", "Seldon's executor"),
    ("source-range-not-cidr", {"loadBalancer.sourceRanges": ["everyone"]}, "loadBalancer.sourceRanges", "CIDR"),
    ("steps-not-ascending", {"rollout.steps": [50, 10, 100]}, "rollout.steps", "ascending"),
    ("steps-not-ending-at-100", {"rollout.steps": [5, 50]}, "rollout.steps", "100"),
    ("error-rate-not-number", {"rollout.maxErrorRatePercent": "low"}, "rollout.maxErrorRatePercent", "number"),
    ("unknown-key-typo", {"traffic.challangerWeight": 10}, "traffic.challangerWeight", "did you mean traffic.challengerWeight"),
    ("array-not-list", {"gpu.nodeSelector": "nvidia.com/gpu.present=true"}, "gpu.nodeSelector", "list"),
    ("quality-metric-unknown", {"rollout.quality.metric": "f1"}, "rollout.quality.metric",
     "one of accuracy, log_loss, brier, mae"),
    ("quality-degradation-negative", {"rollout.quality.maxDegradation": "-0.01"}, "rollout.quality.maxDegradation",
     "between 0"),
    ("quality-degradation-not-number", {"rollout.quality.maxDegradation": "a bit"}, "rollout.quality.maxDegradation",
     "number"),
    ("quality-min-feedback-too-small", {"rollout.quality.minFeedback": 5}, "rollout.quality.minFeedback", "between 30"),
    ("quality-required-not-boolean", {"rollout.quality.requiredForPromotion": "yes"},
     "rollout.quality.requiredForPromotion", "boolean"),
    ("quality-key-typo", {"rollout.quality.minFeedbacks": 100}, "rollout.quality.minFeedbacks",
     "did you mean rollout.quality.minFeedback"),
    ("divergence-action-unknown", {"rollout.divergence.action": "page"}, "rollout.divergence.action",
     "warn, hold, rollback"),
    ("divergence-min-effect-not-a-share", {"rollout.divergence.minEffect": "5"}, "rollout.divergence.minEffect",
     "between 0 and 0.99"),
    ("divergence-min-rows-too-small", {"rollout.divergence.minRows": 10}, "rollout.divergence.minRows", "between 30"),
    ("front-proxy-on-seldon", {"serving.frontProxy": True}, "serving.frontProxy", "needs traffic.router service or gateway"),
    ("front-proxy-port-taken", {"serving.frontProxy": True, "traffic.router": "service", "serving.port": 3080},
     "serving.port", "a port the front proxy's pod uses itself"),
]


@pytest.mark.parametrize(("overrides", "key", "words"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_config_is_rejected_naming_the_key(overrides, key, words):
    with pytest.raises(ConfigError) as caught:
        load_stack_config("prod", overrides=overrides)
    matching = [problem for problem in caught.value.problems if problem.startswith(f"{key}:")]
    assert matching, f"no problem names {key}: {caught.value.problems}"
    assert any(words in problem for problem in matching), matching


def test_every_problem_is_reported_at_once():
    overrides = {
        "traffic.challengerWeight": 150,
        "autoscaling.minReplicas": 0,
        "serving.cpuRequest": "lots",
        "gpu.resource": "tpu",
        "image.push": "maybe",
    }
    with pytest.raises(ConfigError) as caught:
        load_stack_config("prod", overrides=overrides)
    named = {problem.split(":", 1)[0] for problem in caught.value.problems}
    assert named == set(overrides)
    # The message shows the bad value, so the user sees what they wrote.
    assert "(got 150)" in str(caught.value)


def test_defaults_come_from_pulumi_yaml():
    declarations = read_declarations()
    config = load_stack_config("dev")
    assert config.traffic.challenger_weight == declarations["traffic.challengerWeight"].default == 0
    assert config.rollout.steps == tuple(declarations["rollout.steps"].default)
    assert config.serving.port == declarations["serving.port"].default
    assert config.rollout.quality_metric == declarations["rollout.quality.metric"].default == "accuracy"
    assert config.rollout.divergence_action == declarations["rollout.divergence.action"].default == "warn"
    assert config.rollout.divergence_min_effect == 0.05


def test_quality_keys_nest_three_levels_in_a_stack_file(tmp_path: Path):
    (tmp_path / "Pulumi.yaml").write_text((PROJECT_DIR / "Pulumi.yaml").read_text())
    (tmp_path / "Pulumi.q.yaml").write_text(
        "config:\n  mlserve:rollout:\n    quality:\n      metric: log_loss\n      maxDegradation: '0.02'\n"
    )
    config = load_stack_config("q", project_dir=tmp_path)
    assert (config.rollout.quality_metric, config.rollout.quality_max_degradation) == ("log_loss", 0.02)


def test_every_config_field_is_declared_with_type_default_and_description():
    declared = read_declarations()
    read_by_code = {
        spec.metadata["key"]
        for section in (*SECTIONS, StackConfig)
        for spec in section.__dataclass_fields__.values()
        if "key" in spec.metadata
    }
    assert read_by_code == set(declared), "Pulumi.yaml and infra/config.py must declare the same keys"
    for declaration in declared.values():
        assert declaration.type in ("string", "integer", "boolean", "array")
        assert declaration.default is not None and declaration.description


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_stack_files_hold_only_declared_keys(stack):
    config = load_stack_config(stack)
    assert config.stack == stack


def test_unknown_stack_names_the_stacks_that_exist():
    with pytest.raises(ConfigError, match="dev, prod"):
        load_stack_config("staging")


def test_overrides_keep_their_types():
    assert parse_override("traffic.challengerWeight=25") == ("traffic.challengerWeight", 25)
    assert parse_override("gpu.enabled=false") == ("gpu.enabled", False)
    assert parse_override("rollout.steps=[10, 100]") == ("rollout.steps", [10, 100])
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
        parse_override("traffic.challengerWeight")


def test_prod_has_gpu_scheduling_and_dev_does_not():
    assert load_stack_config("prod").gpu.enabled
    assert not load_stack_config("dev").gpu.enabled


def test_pulumi_runtime_reads_path_config_and_flat_config_alike():
    """Inside `pulumi up` the values arrive as Pulumi config: nested objects (`--path`) or flat keys."""
    declarations = read_declarations()
    prod = yaml.safe_load((PROJECT_DIR / "Pulumi.prod.yaml").read_text())["config"]
    as_engine_sends = {name: json.dumps(value) if isinstance(value, (dict, list)) else str(value)
                       for name, value in prod.items()}
    as_engine_sends["mlserve:serving.port"] = "3100"  # a flat key, as `pulumi config set serving.port 3100` writes
    previous = dict(pulumi.runtime.config.CONFIG.get())
    pulumi.runtime.set_all_config(as_engine_sends)
    try:
        values = values_from_pulumi(declarations)
    finally:
        pulumi.runtime.set_all_config(previous)
    assert values["traffic.challengerWeight"] == 10
    assert values["gpu.nodeSelector"] == ["nvidia.com/gpu.present=true"]
    assert values["serving.port"] == "3100"
    from infra.config import parse_config

    config = parse_config("prod", values, declarations)
    assert config.serving.port == 3100 and config.gpu.enabled


def test_stack_file_may_use_flat_keys(tmp_path: Path):
    (tmp_path / "Pulumi.yaml").write_text((PROJECT_DIR / "Pulumi.yaml").read_text())
    (tmp_path / "Pulumi.flat.yaml").write_text("config:\n  mlserve:autoscaling.maxReplicas: 7\n  aws:region: eu-west-1\n")
    assert load_stack_config("flat", project_dir=tmp_path).autoscaling.max_replicas == 7

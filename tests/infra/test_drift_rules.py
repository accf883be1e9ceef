"""Input drift rules: built from stack config, accepted by promtool, and firing on a shifted column only."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from infra.drift import DRIFT_SCORE_RULE, INPUT_DRIFT, drift_rule_group, drift_rules
from tests.infra.conftest import manifests, stack_config

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus; "
                                                             "scripts/setup.sh installs it)")
PROMTOOL_TESTS = Path(__file__).parent / "promtool"
# The config tests/infra/promtool/drift_test.yaml was written for (alerts.drift.* at their declared defaults).
PINNED = {"namespace": "mlserve", "appName": "churn-model"}


def test_thresholds_and_windows_come_from_stack_config():
    config = stack_config("prod", **{"alerts.drift.psiThreshold": "0.3", "alerts.drift.window": "2h",
                                     "alerts.drift.forDuration": "30m"})
    alert = next(rule for rule in drift_rules(config.identity, config.alerts) if rule.get("alert") == INPUT_DRIFT)
    assert f'{DRIFT_SCORE_RULE}{{namespace="{config.namespace}",job="{config.app_name}"}} > 0.3 and' in alert["expr"]
    assert "[2h]" in alert["expr"] and alert["for"] == "30m"


def test_the_stack_rule_carries_the_drift_group(render):
    rule = manifests(render("prod"), "PrometheusRule")[0]
    assert [group["name"].rsplit(".", 1)[-1] for group in rule["spec"]["groups"]] == ["alerts", "drift"]


@needs_promtool
def test_drift_alert_fires_on_the_shifted_column_only(tmp_path):
    config = stack_config("prod", **PINNED)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": [drift_rule_group(config.identity, config.alerts)]}))
    shutil.copy(PROMTOOL_TESTS / "drift_test.yaml", tmp_path)
    checked = subprocess.run([PROMTOOL, "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert checked.returncode == 0 and "SUCCESS: 3 rules found" in checked.stdout, checked.stdout + checked.stderr
    tested = subprocess.run([PROMTOOL, "test", "rules", "drift_test.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr


@pytest.mark.parametrize("reference_uri", ["", "s3://data/churn/train.parquet"], ids=["unset", "set"])
def test_the_reference_dataset_reaches_the_pods_only_when_set(reference_uri):
    from infra import workload
    from service.profiles import REFERENCE_URI_ENV

    container = workload.model_container(stack_config("prod", **{"drift.referenceUri": reference_uri}).pod, "champion",
                                         "registry.example/mlserve@sha256:" + "0" * 64)
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env.get(REFERENCE_URI_ENV) == (reference_uri or None)

"""The demo model: realistic data, what gets registered, aliases, and the deliberately faulty step."""

from __future__ import annotations

import json
import subprocess
import sys

import mlflow
import numpy as np
import pytest

from service.faults import InjectedModelFault, RowHashFault
from service.schema import InputSchema, RowValidator
from service.train import (
    FEATURES,
    KIND_TAG,
    MODEL_NAME,
    _synthesize,
    demo_models_registered,
    ensure_demo_models,
    register_demo_models,
    sample_instances,
)

from .conftest import REPO_ROOT


def client(registry) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=registry.tracking_uri, registry_uri=registry.tracking_uri)


def test_sample_instances_are_valid_requests_with_every_category(registry):
    rows = sample_instances(500, seed=1)
    info = mlflow.models.get_model_info(f"models:/{MODEL_NAME}/{registry.champion}")
    validator = RowValidator(InputSchema.from_signature(info.signature.inputs.to_dict()), max_rows=500)

    assert len(validator.validate_rows(rows)) == 500
    assert {row["contract_type"] for row in rows} == {"Month-to-month", "One year", "Two year"}
    assert len({row["payment_method"] for row in rows}) == 4
    assert sample_instances(500, seed=1) == rows, "the same seed gives the same rows"


def test_synthetic_churn_is_realistic():
    features, churned = _synthesize(5000, seed=0)
    month_to_month = features["contract_type"] == "Month-to-month"

    assert 0.15 < churned.mean() < 0.40
    assert churned[month_to_month].mean() > 2 * churned[~month_to_month].mean()
    assert (features["total_charges"] <= features["tenure"] * features["monthly_charges"] * 1.06 + 0.01).all()


def test_registry_has_champion_and_challenger_aliases_on_distinct_versions(registry):
    registered = client(registry).get_registered_model(MODEL_NAME)

    assert str(registered.aliases["champion"]) == registry.champion
    assert str(registered.aliases["challenger"]) == registry.faulty_challenger
    assert len({registry.champion, registry.healthy_challenger, registry.faulty_challenger}) == 3
    assert demo_models_registered(registry.tracking_uri)


def test_registered_versions_carry_a_signature_and_an_input_example(registry):
    version = client(registry).get_model_version(MODEL_NAME, registry.champion)
    info = mlflow.models.get_model_info(f"models:/{MODEL_NAME}/{registry.champion}")

    assert version.tags[KIND_TAG] == "champion"
    assert [spec.name for spec in info.signature.inputs] == list(FEATURES)
    assert info.saved_input_example_info is not None


def test_ensure_demo_models_registers_nothing_when_the_aliases_are_as_asked(registry):
    before = len(client(registry).search_model_versions(f"name='{MODEL_NAME}'"))

    aliases = ensure_demo_models(registry.tracking_uri, faulty_challenger=True)

    assert aliases == {"champion": registry.champion, "challenger": registry.faulty_challenger}
    assert len(client(registry).search_model_versions(f"name='{MODEL_NAME}'")) == before


def test_train_cli_registers_into_its_own_home_and_prints_the_aliases(tmp_path):
    env = {"MLSERVE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "MLFLOW_DISABLE_TELEMETRY": "true",
           "BENTOML_DO_NOT_TRACK": "true", "DO_NOT_TRACK": "true"}
    result = subprocess.run([sys.executable, "-m", "service.train", "--faulty-challenger"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout.strip().splitlines()[-1])
    assert output == {"model_name": MODEL_NAME, "aliases": {"champion": "1", "challenger": "2"}}
    assert (tmp_path / "mlflow.db").exists() and (tmp_path / "artifacts").is_dir()
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    version = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).get_model_version(MODEL_NAME, "2")
    assert version.tags[KIND_TAG] == "faulty-challenger"


def test_register_demo_models_keeps_the_champion_and_adds_a_challenger(tmp_path):
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = register_demo_models(tracking_uri)

    second = register_demo_models(tracking_uri)

    assert second["champion"] == first["champion"]
    assert int(second["challenger"]) > int(first["challenger"])


@pytest.mark.parametrize("fraction", [0.05, 0.08, 0.10])
def test_row_hash_fault_fails_about_the_configured_fraction_deterministically(fraction):
    fault = RowHashFault(fraction)
    rows = np.array([[row[f] for f in FEATURES] for row in sample_instances(4000, seed=3)], dtype=object)

    failing = [fault.fails_on(row) for row in rows]

    assert abs(sum(failing) / len(rows) - fraction) < 0.02
    assert failing == [RowHashFault(fraction).fails_on(row) for row in rows]


def test_row_hash_fault_treats_equal_numbers_alike_and_raises_only_at_predict_time():
    fault = RowHashFault(0.08)
    rows = [[row[f] for f in FEATURES] for row in sample_instances(200, seed=4)]
    bad = next(row for row in rows if fault.fails_on(row))

    assert fault.fails_on([int(bad[0]), *bad[1:]]) == fault.fails_on(bad)
    assert fault.fit_transform(np.array(rows, dtype=object)) is not None
    with pytest.raises(InjectedModelFault, match="injected fault"):
        fault.transform(np.array([bad], dtype=object))

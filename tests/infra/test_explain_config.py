"""Stack config ``explain.*`` reaches the model server's environment as the settings service/explain.py reads."""

from __future__ import annotations

from infra.config import load_stack_config
from infra.workload import container_env
from service.explain import ExplainSettings


def explain_settings(config) -> ExplainSettings:
    env = {item["name"]: item["value"] for item in container_env(config.pod, "champion") if "value" in item}
    # A setting left at its empty default is not in the pod's env at all (infra.workload.explain_env).
    return ExplainSettings.from_env({name: env[name] for name in ExplainSettings.ENV.values() if name in env})


def test_the_declared_defaults_are_the_servers_own_defaults():
    assert explain_settings(load_stack_config("dev")) == ExplainSettings(**ExplainSettings.DEFAULTS)


def test_stack_overrides_reach_the_server():
    config = load_stack_config("prod", overrides={"explain.enabled": False, "explain.maxRows": 5,
                                                  "explain.backgroundUri": "s3://bucket/background.parquet",
                                                  "explain.timeoutSeconds": "2.5"})

    settings = explain_settings(config)

    assert (settings.enabled, settings.max_rows, settings.timeout_seconds) == (False, 5, 2.5)
    assert settings.background_uri == "s3://bucket/background.parquet"

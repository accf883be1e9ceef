"""Weight changes as the API server sees them: a two-field change, and every update a rollout makes.

A server-side dry run of the edited stack is what pulumi-kubernetes' preview asks the server for
(`enableDryRun`): it shows the SeldonDeployment's two `traffic` fields change and nothing else, in any object.
Then each weight of the prod rollout plan, the rollback to 0 and the promotion are applied in turn and read back.
"""

from __future__ import annotations

from typing import Any

from rollout.scheduler import plan_from_config
from infra.config import load_stack_config
from tests.engine.conftest import deploy, identity, stack_manifests

SELDON = ("machinelearning.seldon.io/v1", "SeldonDeployment")
# Bookkeeping the server rewrites on every write; not part of what an update changes.
VOLATILE = ("resourceVersion", "generation", "managedFields", "uid", "creationTimestamp")


def content(stored: dict[str, Any]) -> dict[str, Any]:
    metadata = {k: v for k, v in stored["metadata"].items() if k not in VOLATILE}
    return {**stored, "metadata": metadata}


def differences(before: Any, after: Any, path: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        return [d for key in sorted(set(before) | set(after)) for d in differences(before.get(key), after.get(key), f"{path}.{key}")]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [d for i, (b, a) in enumerate(zip(before, after)) for d in differences(b, a, f"{path}[{i}]")]
    return [] if before == after else [path]


def seldon_weights(api, manifests) -> dict[str, int]:
    seldon = next(m for m in manifests if (m["apiVersion"], m["kind"]) == SELDON)
    api_version, kind, namespace, name = identity(seldon)
    stored = api.get(api_version, kind, name, namespace)
    return {p["name"]: p.get("traffic") for p in stored["spec"]["predictors"]}


def test_weight_edit_dry_runs_as_exactly_the_two_traffic_fields(api):
    deploy(api, stack_manifests("prod", **{"traffic.challengerWeight": 10}))
    edited = stack_manifests("prod", **{"traffic.challengerWeight": 25})
    changed = {}
    for manifest in edited:
        api_version, kind, namespace, name = identity(manifest)
        before = content(api.get(api_version, kind, name, namespace))
        after = content(api.apply(manifest, dry_run=True))
        if diff := differences(before, after):
            changed[f"{kind}/{name}"] = diff
    assert list(changed) == [f"SeldonDeployment/{identity(next(m for m in edited if m['kind'] == 'SeldonDeployment'))[3]}"]
    assert sorted(next(iter(changed.values()))) == [".spec.predictors[0].traffic", ".spec.predictors[1].traffic"]
    deploy(api, edited)
    assert sorted(seldon_weights(api, edited).values()) == [25, 75]


def test_each_rollout_step_rollback_and_promotion_is_accepted(api):
    config = load_stack_config("prod")
    champion, challenger = config.model.champion_uri, config.model.challenger_uri
    previous = stack_manifests("prod")
    deploy(api, previous)
    for weight in [*plan_from_config(config.rollout).steps, 0]:
        manifests = stack_manifests("prod", **{"traffic.challengerWeight": weight})
        deploy(api, manifests, previous)
        weights = seldon_weights(api, manifests)
        assert sorted(weights.values()) == sorted([100 - weight, weight]), (weight, weights)
        previous = manifests
    # Promotion (`rollout promote`): championUri := challengerUri, challenger removed, weight 0.
    promoted = stack_manifests("prod", **{"model.championUri": challenger, "model.challengerUri": "", "traffic.challengerWeight": 0})
    deploy(api, promoted, previous)
    assert list(seldon_weights(api, promoted).values()) == [100]
    assert champion != challenger

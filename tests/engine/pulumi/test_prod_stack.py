"""The prod stack (router `seldon`, Helm installs off) under the real engine: `up` creates what `infra.render`
writes; `config set --path traffic.challengerWeight 25` previews as a change of the SeldonDeployment's two
`traffic` fields and nothing else, then applies as 75/25; `python -m rollout start` makes one stack update per
step and, with the challenger failing, leaves weight 0 on the API server and in the stack config.

No Seldon operator runs here (its Go module is not served), so the SeldonDeployment is stored and validated by
the API server against the real CRD, but no pods are made from it: pod-level checks are in test_gpu_stack.py.
"""

from __future__ import annotations

import pytest
from pulumi.automation import ConfigValue

from tests.engine.conftest import contains, identity
from tests.engine.pulumi.conftest import ENGINE_SETTINGS, failing_rollout

pytestmark = pytest.mark.timeout(900)
SELDON_TYPE = "kubernetes:machinelearning.seldon.io/v1:SeldonDeployment"


@pytest.fixture(scope="module")
def prod(project):
    stack = project.stack("prod", ENGINE_SETTINGS["prod"])
    yield stack
    stack.destroy()


def seldon_weights(project) -> dict[str, int]:
    seldon = next(m for m in project.manifests("prod") if m["kind"] == "SeldonDeployment")
    api_version, kind, namespace, name = identity(seldon)
    stored = project.api.get(api_version, kind, name, namespace)
    return {p["name"]: p.get("traffic") for p in stored["spec"]["predictors"]}


def test_up_creates_what_render_writes(project, prod):
    rendered = project.manifests("prod")
    assert prod.up().summary.result == "succeeded"
    problems = []
    for manifest in rendered:
        api_version, kind, namespace, name = identity(manifest)
        problems += [f"{kind}/{name}{where}" for where in contains(project.api.get(api_version, kind, name, namespace), manifest)]
    assert not problems, "\n".join(problems)
    assert seldon_weights(project) == {"champion": 90, "challenger": 10}


def test_a_weight_edit_previews_as_the_two_traffic_fields_then_applies(project, prod):
    prod.set_config("traffic.challengerWeight", ConfigValue("25"), path=True)
    events = []
    prod.preview(diff=True, on_event=events.append)
    steps = [e.resource_pre_event.metadata for e in events if e.resource_pre_event is not None]
    changed = [step for step in steps if step.op.value not in ("same", "read")]
    assert [(step.op.value, step.type) for step in changed] == [("update", SELDON_TYPE)], [(s.op, s.urn) for s in changed]
    assert sorted(changed[0].detailed_diff) == ["spec.predictors[0].traffic", "spec.predictors[1].traffic"]
    assert prod.up().summary.result == "succeeded"
    assert seldon_weights(project) == {"champion": 75, "challenger": 25}


def test_rollout_start_is_one_update_per_step_and_a_rollback_leaves_weight_zero(project, prod, monkeypatch, tmp_path):
    code, report, updates, _ = failing_rollout(project, prod, "prod", monkeypatch, tmp_path)
    assert report["verdict"] == "rolled_back", report
    messages = [update.message for update in updates]
    assert messages[0] == "rollout: traffic.challengerWeight=10"
    assert messages[-1] == "rollout: traffic.challengerWeight=0"
    assert all(update.result == "succeeded" for update in updates)
    assert code != 0 or report["verdict"] == "rolled_back"
    assert prod.get_config("traffic.challengerWeight", path=True).value == "0"
    assert seldon_weights(project) == {"champion": 100, "challenger": 0}

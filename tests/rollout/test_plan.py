"""`python -m rollout plan`: what a reviewer reads for a weight edit, a new challenger, a model version bump,
a GPU budget overrun; and the command itself on a git checkout whose Pulumi.prod.yaml raises the weight."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infra.config import PROJECT_DIR, load_stack_config
from rollout.plan import diff_values, explain, rollout_preview, step_weights, to_markdown
from rollout.scheduler import plan_from_config

BASE_COMMIT = "0123456789abcdef0123456789abcdef01234567"
# prod as a stack without a challenger: where a pull request introduces one.
NO_CHALLENGER = {"model.challengerUri": "", "traffic.challengerWeight": 0}


def plan_markdown(base: dict, head: dict, stack: str = "prod", **options) -> str:
    """The Markdown for a change from prod+`base` overrides to prod+`head` overrides."""
    plan = explain(stack, "main", BASE_COMMIT, load_stack_config(stack, overrides=base),
                   load_stack_config(stack, overrides=head), **options)
    return to_markdown(plan)


WEIGHT_EDIT = """\
### mlserve plan for stack `prod`

Base: main (`0123456789ab`) -> working tree.

#### Warnings

- :warning: traffic.challengerWeight raised 10 -> 25 by hand: no analysis judges it before it takes that traffic \
(skips rollout steps ...); `python -m rollout start --stack prod` steps it and rolls back on failure \
(`--config-only` writes one judged step per pull request)

#### Config changes

| key | before | after |
|---|---|---|
| `traffic.challengerWeight` | `10` | `25` |

#### What changes in the cluster

- champion traffic 90% -> 75%
- challenger traffic 10% -> 25%

Objects: 1 changed.

| object | field | before | after |
|---|---|---|---|
| SeldonDeployment mlserve/churn-model | `spec.predictors[champion].traffic` | `90` | `75` |
| SeldonDeployment mlserve/churn-model | `spec.predictors[challenger].traffic` | `10` | `25` |

#### The rollout `python -m rollout start --stack prod` would run

Challenger `models:/customer-churn-classifier@challenger`: resumes at the configured 25%; steps 25% -> 50% -> \
100% (promotion), one analysis every 60 s, rolled back after 2 failed checks. Least time to promotion: \
2 x 60 s = 2 min. Each step is judged once the challenger has served 100 requests (`rollout.minRequests`).

| step | challenger | req/s needed for minRequests in one interval | GPUs at min replicas | GPUs at max replicas |
|---|---|---|---|---|
| 1 | 25% | 6.67 | 6 | 20 |
| 2 | 50% | 3.33 | 6 | 20 |
| 3 | 100% (promote) | - | 6 | 20 |

GPUs count both variants at each weight; no GPU budget set (gpu.maxGPUs 0).
"""


def test_weight_edit_is_two_fields_and_the_rollout_it_implies():
    expected = WEIGHT_EDIT.replace(" (skips rollout steps ...)", "")  # 25 is a step: none skipped from 10
    assert plan_markdown({}, {"traffic.challengerWeight": 25}) == expected


def test_new_challenger():
    markdown = plan_markdown(NO_CHALLENGER, {"model.challengerUri": "models:/customer-churn-classifier/7",
                                             "traffic.challengerWeight": 0})
    assert "| `model.challengerUri` | `\"\"` | `models:/customer-churn-classifier/7` |" in markdown
    assert "- challenger added: serves models:/customer-churn-classifier/7, traffic 0%" in markdown
    assert "- model pods 3-10 -> 6-20" in markdown
    assert "- GPU pods 3-10 -> 6-20" in markdown
    assert "- GPUs held 3-10 -> 6-20" in markdown
    # A new predictor in the SeldonDeployment and the challenger's own NetworkPolicy.
    assert "| NetworkPolicy mlserve/churn-model-challenger | *added* | | |" in markdown
    assert "| SeldonDeployment mlserve/churn-model | `spec.predictors[challenger]` | *(none)* | *added* |" in markdown
    assert ("Challenger `models:/customer-churn-classifier/7`: starts at the first step, 5%; steps "
            "5% -> 10% -> 25% -> 50% -> 100% (promotion)") in markdown
    assert "Least time to promotion: 4 x 60 s = 4 min." in markdown
    assert "| 1 | 5% | 33.33 | 6 | 20 |" in markdown
    assert "#### Warnings" not in markdown  # weight 0: the rollout will bring the traffic


def test_new_challenger_with_traffic_at_once_is_flagged():
    markdown = plan_markdown(NO_CHALLENGER, {"model.challengerUri": "models:/customer-churn-classifier/7",
                                             "traffic.challengerWeight": 30})
    assert ("a new challenger (models:/customer-churn-classifier/7) gets 30% at once: no analysis judges it "
            "before it takes that traffic (skips rollout steps 5%, 10%, 25%)") in markdown


def test_model_version_bump():
    markdown = plan_markdown({"model.championUri": "models:/customer-churn-classifier/3"},
                             {"model.championUri": "models:/customer-churn-classifier/4"})
    assert "- champion model version 3 -> 4 (customer-churn-classifier)" in markdown
    row = ("| SeldonDeployment mlserve/churn-model | `spec.predictors[champion].componentSpecs[0].spec."
           "containers[customer-churn-classifier].env[MODEL_URI].value` | `models:/customer-churn-classifier/3` | "
           "`models:/customer-churn-classifier/4` |")
    assert row in markdown
    assert "traffic" not in markdown.split("#### What changes in the cluster")[1]
    assert "would run" not in markdown  # the challenger and its weight are untouched: no rollout to show


def test_gpu_budget_overrun():
    markdown = plan_markdown({"gpu.maxGPUs": 8}, {"gpu.maxGPUs": 8, "gpu.count": 2})
    assert "| `gpu.count` | `1` | `2` |" in markdown
    assert "- GPUs held 6-20 -> 12-40" in markdown
    assert ("- :warning: GPU budget exceeded: 6 pods x 2 GPU at minimum replicas hold 12 GPUs, "
            "over gpu.maxGPUs 8") in markdown
    assert 'resources.limits["nvidia.com/gpu"]` | `1` | `2` |' in markdown


def test_budget_overrun_at_the_expected_rate_names_the_steps():
    markdown = plan_markdown({}, {"traffic.challengerWeight": 25, "gpu.maxGPUs": 10}, expected_rps=900)
    assert "GPU budget can be exceeded: the autoscalers may grow to 20 pods x 1 GPU = 20 GPUs" in markdown
    # At 900 req/s and 100 req/s per pod: 25% -> 7 + 3 pods, 50% -> 5 + 5, 100% -> 3 (min) + 9.
    assert "GPU budget exceeded at 900 req/s: step 100% needs 12 (gpu.maxGPUs 10)" in markdown
    assert "| 1 | 25% | 6.67 | 6 | 20 | 10 | 60 s |" in markdown


@pytest.mark.parametrize(
    ("head", "warning"),
    [
        ({"traffic.challengerWeight": 100}, "challenger weight jumps straight to 100% (from 10%)"),
        ({"model.challengerUri": "models:/customer-churn-classifier@champion"}, "the challenger is the champion"),
        ({"monitoring.enabled": False}, "monitoring.enabled is false while a challenger runs"),
        ({"traffic.challengerWeight": 50}, "raised 10 -> 50 by hand: no analysis judges it before it takes that "
                                           "traffic (skips rollout steps 25%)"),
    ],
)
def test_warnings_a_reviewer_would_raise(head, warning):
    assert warning in plan_markdown({}, head)


def test_lowering_the_weight_warns_of_nothing():
    markdown = plan_markdown({}, {"traffic.challengerWeight": 5})
    assert "#### Warnings" not in markdown
    assert "- challenger traffic 10% -> 5%" in markdown


def test_no_change_says_so():
    markdown = plan_markdown({}, {})
    assert "No config changes." in markdown and "Nothing: every rendered object is unchanged." in markdown


@pytest.mark.parametrize(
    ("steps", "weight", "visited"),
    [((5, 10, 25, 50, 100), 0, [5, 10, 25, 50, 100]), ((5, 10, 25, 50, 100), 10, [10, 25, 50, 100]),
     ((5, 10, 25, 50, 100), 30, [30, 50, 100]), ((50, 100), 100, [100])],
)
def test_step_weights_follow_the_scheduler(steps, weight, visited):
    config = load_stack_config("prod", overrides={"rollout.steps": list(steps)})
    assert step_weights(plan_from_config(config.rollout), weight) == visited


def test_slow_traffic_stretches_the_least_time_to_promotion():
    config = load_stack_config("prod", overrides={"traffic.challengerWeight": 0})
    # 10 req/s: at 5% the challenger needs 200 s for 100 requests, at 10% 100 s, then the 60 s interval.
    preview = rollout_preview(config, expected_rps=10)
    assert [s.seconds_at_expected_rate for s in preview.steps[:4]] == [200, 100, 60, 60]
    assert preview.least_seconds_to_promotion == 420


def test_named_list_items_are_matched_by_name():
    before = {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}
    after = {"env": [{"name": "B", "value": "3"}, {"name": "A", "value": "1"}]}
    assert [(c.path, c.before, c.after) for c in diff_values(before, after)] == [("env[B].value", "2", "3")]


def test_json_has_the_same_content():
    plan = explain("prod", "main", BASE_COMMIT, load_stack_config("prod"),
                   load_stack_config("prod", overrides={"traffic.challengerWeight": 25}))
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["config"] == [{"path": "traffic.challengerWeight", "before": 10, "after": 25}]
    assert [f["path"] for r in data["resources"] for f in r["fields"]] == [
        "spec.predictors[champion].traffic", "spec.predictors[challenger].traffic"]
    assert [s["weight"] for s in data["rollout"]["steps"]] == [25, 50, 100]


# --------------------------------------------------------------------------------------------------
# The command on a git checkout (a temporary repository: the real Pulumi.prod.yaml is never edited)
# --------------------------------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env).stdout


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """This working tree's project files (tracked and new) committed to a fresh repository on branch main."""
    repo = tmp_path_factory.mktemp("checkout")
    listed = subprocess.run(["git", "-C", str(PROJECT_DIR), "ls-files", "-co", "--exclude-standard"],
                            check=True, capture_output=True, text=True).stdout.split("\n")
    for name in filter(None, listed):
        source = PROJECT_DIR / name
        if source.is_file() and (name.split("/")[0] in ("infra", "rollout", "service") or "/" not in name):
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / name)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    return repo


def run_plan(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rollout", "plan", *args], cwd=repo, capture_output=True, text=True)


def test_cli_prints_the_two_field_change_and_the_rollout(checkout):
    stack_file = checkout / "Pulumi.prod.yaml"
    original = stack_file.read_text()
    assert "challengerWeight: 10\n" in original
    stack_file.write_text(original.replace("challengerWeight: 10\n", "challengerWeight: 25\n"))
    try:
        result = run_plan(checkout, "--stack", "prod", "--base", "HEAD")
        default_base = run_plan(checkout, "--stack", "prod", "--format", "json")
    finally:
        stack_file.write_text(original)
    assert result.returncode == 0, result.stderr
    commit = git(checkout, "rev-parse", "HEAD").strip()
    expected = WEIGHT_EDIT.replace(" (skips rollout steps ...)", "").replace(
        "Base: main (`0123456789ab`)", f"Base: HEAD (`{commit[:12]}`)")
    assert result.stdout == expected
    assert default_base.returncode == 0, default_base.stderr
    data = json.loads(default_base.stdout)
    assert (data["base_ref"], data["base_commit"]) == ("merge-base(HEAD, main)", commit)
    assert data["config"] == [{"path": "traffic.challengerWeight", "before": 10, "after": 25}]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stack", "prod", "--base", "no-such-ref"], "--base 'no-such-ref' is not a commit"),
        (["--stack", "staging", "--base", "HEAD"], "no file Pulumi.staging.yaml"),
        (["--stack", "prod", "--expected-rps", "-3"], "'-3' is not a positive request rate"),
    ],
)
def test_cli_errors_exit_2_naming_the_problem(checkout, args, message):
    result = run_plan(checkout, *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_invalid_config_at_the_base_is_named(checkout, tmp_path):
    stack_file = checkout / "Pulumi.prod.yaml"
    original = stack_file.read_text()
    stack_file.write_text(original.replace("challengerWeight: 10\n", "challengerWeight: 150\n"))
    git(checkout, "commit", "-qam", "bad weight")
    try:
        stack_file.write_text(original)
        result = run_plan(checkout, "--stack", "prod", "--base", "HEAD")
    finally:
        git(checkout, "reset", "-q", "--hard", "HEAD~1")
    assert result.returncode == 2
    assert "the config of stack 'prod' at HEAD is invalid" in result.stderr
    assert "traffic.challengerWeight: must be between 0 and 100 (got 150)" in result.stderr


def test_base_from_an_older_project_file_loads_and_changed_defaults_show(checkout):
    """A base whose Pulumi.yaml lacks a key declared since (gpu.maxGPUs) still loads; a default that changed
    in Pulumi.yaml is a config change like any other."""
    project = checkout / "Pulumi.yaml"
    current = project.read_text()
    start = current.index("  mlserve:gpu.maxGPUs:\n")
    older = current[:start] + current[current.index("  mlserve:", start + 1):]
    older = older.replace("mlserve:rollout.intervalSeconds:\n    type: integer\n    default: 60",
                          "mlserve:rollout.intervalSeconds:\n    type: integer\n    default: 30")
    assert "maxGPUs" not in older and "default: 30" in older
    project.write_text(older)
    git(checkout, "commit", "-qam", "older project file")
    try:
        project.write_text(current)
        result = run_plan(checkout, "--stack", "prod", "--base", "HEAD", "--format", "json")
    finally:
        git(checkout, "reset", "-q", "--hard", "HEAD~1")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["config"] == [{"path": "rollout.intervalSeconds", "before": 30, "after": 60}]
    assert data["resources"] == [] and data["rollout"] is None


# ------------------------------------------------------------------------------------ the gateway router

GATEWAY = {"traffic.router": "gateway", "traffic.gateway": "gateway-system/public",
           "platform.installSeldon": False, "platform.installIstio": False}


def test_a_gateway_weight_edit_is_the_weights_of_the_two_routes():
    markdown = plan_markdown(GATEWAY, {**GATEWAY, "traffic.challengerWeight": 25})
    assert "- champion traffic 90% -> 75%\n- challenger traffic 10% -> 25%\n" in markdown
    assert "Objects: 2 changed." in markdown
    for kind in ("HTTPRoute", "GRPCRoute"):
        for service, before, after in (("churn-model-champion", 90, 75), ("churn-model-challenger", 10, 25)):
            row = f"| {kind} mlserve/churn-model | `spec.rules[split].backendRefs[{service}].weight` | `{before}` | `{after}` |"
            assert row in markdown, markdown
    assert "| 1 | 25% |" in markdown  # the same rollout as on Seldon


def test_moving_from_seldon_to_the_gateway_router_names_the_gateway():
    markdown = plan_markdown({}, GATEWAY)
    assert "- traffic router seldon -> gateway\n- routes attach to Gateway gateway-system/public\n" in markdown
    assert "| HTTPRoute mlserve/churn-model | *added* | | |" in markdown
    assert "| SeldonDeployment mlserve/churn-model | *removed* | | |" in markdown


def test_sticky_sessions_warn_that_steps_move_only_new_clients():
    markdown = plan_markdown(GATEWAY, {**GATEWAY, "traffic.sticky": True, "traffic.stickyTimeout": "168h"})
    assert "- sticky sessions on (cookie for 168h)" in markdown
    assert "each rollout step moves only clients new to the stack" in markdown
    assert "needs the Gateway API experimental channel CRDs" in markdown
    assert "`spec.rules[split].sessionPersistence`" in markdown


def test_a_shadow_of_a_share_of_requests_is_named():
    shadow = {**GATEWAY, "traffic.challengerWeight": 0, "traffic.shadow": True}
    markdown = plan_markdown(shadow, {**shadow, "traffic.shadowPercent": 20})
    assert "- challenger traffic shadow -> shadow of 20%" in markdown
    assert "`spec.rules[split].filters[0].requestMirror.percent`" in markdown or "requestMirror" in markdown

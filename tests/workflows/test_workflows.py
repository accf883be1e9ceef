"""The GitHub workflows: actionlint-clean, and the promises the README makes about them (triggers, stacks,
least-privilege permissions, pinned actions, secrets from the repository), plus the script that puts
`rollout plan` into the preview comment, run against a stand-in `gh`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra.config import PROJECT_DIR

WORKFLOWS = PROJECT_DIR / ".github" / "workflows"
APPEND_PLAN = PROJECT_DIR / ".github" / "scripts" / "append-plan.sh"
PULUMI_ACTION = "pulumi/actions"
# The secrets a workflow may read: the Pulumi Cloud token and one kubeconfig per stack.
ALLOWED_SECRETS = {"PULUMI_ACCESS_TOKEN", "KUBECONFIG_DEV", "KUBECONFIG_PROD"}


def tool(name: str) -> str:
    """A tool `make setup` installs: in the virtualenv's bin (actionlint) or on PATH (shellcheck)."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is missing: `make setup` (scripts/setup.sh) installs it"
    return found


def load(name: str) -> dict:
    document = yaml.safe_load((WORKFLOWS / name).read_text())
    document["on"] = document.pop(True, document.get("on"))  # YAML 1.1 reads the key `on` as true
    return document


def steps_using(job: dict, action: str) -> list[dict]:
    return [step for step in job["steps"] if step.get("uses", "").split("@")[0] == action]


def pulumi_pin() -> str:
    return re.search(r"^pulumi==(\S+)$", (PROJECT_DIR / "requirements.txt").read_text(), re.M).group(1)


def test_actionlint_passes():
    result = subprocess.run([tool("actionlint"), "-shellcheck", tool("shellcheck"), "-no-color"],
                            cwd=PROJECT_DIR, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_scripts_pass_shellcheck():
    result = subprocess.run([tool("shellcheck"), str(APPEND_PLAN)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_pull_requests_preview_both_stacks_with_comment_plan_and_policies():
    workflow = load("pull-request.yml")
    assert workflow["on"] == {"pull_request": {"branches": ["main"]}}  # never pull_request_target
    [job] = workflow["jobs"].values()
    assert job["strategy"]["matrix"]["stack"] == ["dev", "prod"]
    [preview] = steps_using(job, PULUMI_ACTION)
    assert preview["with"]["command"] == "preview"
    assert preview["with"]["stack-name"] == "${{ matrix.stack }}"
    assert {key: preview["with"][key] for key in ("diff", "comment-on-pr", "edit-pr-comment", "policyPacks")} == {
        "diff": True, "comment-on-pr": True, "edit-pr-comment": True, "policyPacks": "policy"}
    runs = "\n".join(step.get("run", "") for step in job["steps"])
    assert 'python -m rollout plan --stack "$STACK"' in runs
    assert ".github/scripts/append-plan.sh" in runs
    assert job["steps"][0]["with"]["fetch-depth"] == 0  # the plan needs the merge base


def test_merge_to_main_ups_dev_then_prod_behind_a_protected_environment():
    workflow = load("deploy.yml")
    assert workflow["on"] == {"push": {"branches": ["main"]}}
    jobs = workflow["jobs"]
    ups = {name: steps_using(job, PULUMI_ACTION)[0]["with"] for name, job in jobs.items()}
    assert {name: (step["command"], step["stack-name"], step["policyPacks"]) for name, step in ups.items()} == {
        "dev": ("up", "dev", "policy"), "prod": ("up", "prod", "policy")}
    assert jobs["prod"]["needs"] == "dev"
    assert jobs["prod"]["environment"] == "production"
    assert workflow["concurrency"]["cancel-in-progress"] is False


@pytest.mark.parametrize("name", ["pull-request.yml", "deploy.yml"])
def test_least_privilege_permissions(name):
    workflow = load(name)
    assert workflow["permissions"] == {"contents": "read"}
    for job_name, job in workflow["jobs"].items():
        allowed = {"contents": "read", "pull-requests": "write"} if name == "pull-request.yml" else {"contents": "read"}
        permissions = job.get("permissions", workflow["permissions"])
        assert isinstance(permissions, dict) and permissions.items() <= allowed.items(), (job_name, permissions)


@pytest.mark.parametrize("name", ["pull-request.yml", "deploy.yml"])
def test_actions_pinned_by_commit_and_cli_by_version(name):
    text = (WORKFLOWS / name).read_text()
    uses = re.findall(r"uses: (\S+)@(\S+)(.*)", text)
    assert uses
    for action, ref, comment in uses:
        assert re.fullmatch(r"[0-9a-f]{40}", ref), f"{action}@{ref} is not pinned to a commit"
        assert re.search(r"# v\d+\.\d+\.\d+", comment), f"{action}@{ref} has no `# vX.Y.Z` comment"
    for job in load(name)["jobs"].values():
        for step in steps_using(job, PULUMI_ACTION):
            assert step["with"]["pulumi-version"] == pulumi_pin()


@pytest.mark.parametrize("name", ["pull-request.yml", "deploy.yml"])
def test_secrets_come_only_from_repository_secrets(name):
    text = (WORKFLOWS / name).read_text()
    assert "secrets: inherit" not in text
    named = set(re.findall(r"secrets\.([A-Za-z_][A-Za-z0-9_]*)", text))
    # The preview indexes KUBECONFIG_<STACK> by the matrix; every stack it runs has its secret here.
    for stack in load(name)["jobs"].get("preview", {}).get("strategy", {}).get("matrix", {}).get("stack", []):
        named.add(f"KUBECONFIG_{stack.upper()}")
    assert named <= ALLOWED_SECRETS, named - ALLOWED_SECRETS
    assert not re.search(r"(token|password|kubeconfig)\s*:\s*['\"]?[A-Za-z0-9/+=]{20,}", text, re.I)


# --------------------------------------------------------------------------------------------------
# append-plan.sh against a stand-in `gh` (the GitHub REST API of issue comments, in a JSON file)
# --------------------------------------------------------------------------------------------------

FAKE_GH = """\
import json, sys
from pathlib import Path
state = Path(sys.argv[0]).with_name("comments.json")
args = sys.argv[1:]
comments = json.loads(state.read_text())
if "--method" in args and args[args.index("--method") + 1] == "PATCH":
    comment_id = int(args[-3].rsplit("/", 1)[1])
    body = json.load(sys.stdin)["body"]
    for comment in comments:
        if comment["id"] == comment_id:
            comment["body"] = body
    state.write_text(json.dumps(comments))
    print("{}")
else:
    print(json.dumps(comments))
"""

HEADING = "#### :tropical_drink: `preview` on mlserve/prod"


@pytest.fixture
def gh(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "gh"
    exe.write_text(f"#!{sys.executable}\n{FAKE_GH}")
    exe.chmod(0o755)
    state = bin_dir / "comments.json"

    def run(comments: list[dict], plan: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
        state.write_text(json.dumps(comments))
        (tmp_path / "plan.md").write_text(plan)
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "GH_TOKEN": "x",
               "GITHUB_REPOSITORY": "acme/mlserve", "PR_NUMBER": "7"}
        result = subprocess.run(["bash", str(APPEND_PLAN), "prod", str(tmp_path / "plan.md")], cwd=PROJECT_DIR,
                                env=env, capture_output=True, text=True)
        return result, json.loads(state.read_text())

    return run


def test_append_plan_adds_the_plan_to_the_stacks_comment_and_replaces_it_on_the_next_push(gh):
    preview = f"{HEADING}\n\n<details>\n<summary>Pulumi report</summary>\n<pre>\n~ 1 to update\n</pre>\n</details>"
    others = [{"id": 1, "body": "looks good"}, {"id": 2, "body": "#### :tropical_drink: `preview` on mlserve/dev\n..."}]
    result, comments = gh([*others, {"id": 3, "body": preview}], "### mlserve plan for stack `prod`\nfirst\n")
    assert result.returncode == 0, result.stderr
    assert comments[:2] == others
    assert comments[2]["body"] == f"{preview}\n<!-- mlserve-plan -->\n\n### mlserve plan for stack `prod`\nfirst"
    # Next push: pulumi/actions did not rewrite the comment (say the preview failed); the plan is replaced, not doubled.
    result, comments = gh(comments, "### mlserve plan for stack `prod`\nsecond\n")
    assert result.returncode == 0, result.stderr
    assert comments[2]["body"] == f"{preview}\n<!-- mlserve-plan -->\n\n### mlserve plan for stack `prod`\nsecond"


def test_append_plan_fails_when_the_preview_comment_is_missing(gh):
    result, _ = gh([{"id": 1, "body": "looks good"}], "plan")
    assert result.returncode == 1
    assert "no pulumi preview comment for mlserve/prod on pull request #7" in result.stderr

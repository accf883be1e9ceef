"""`python -m rollout plan --stack S [--base REF]`: what a pull request's config change will do, for its reviewer.

The stack's config at REF (default: the merge base with main) and in the working tree are each loaded
(`infra.config`) and rendered by the program `pulumi up` runs, under Pulumi's mocks (`infra.render`), with
this working tree's code: the plan explains a *config* change; code changes are `pulumi preview`'s to show.
The result names the config keys that changed, every rendered field that changed, in plain words where a
reviewer needs them ("challenger traffic 10% -> 25%"), the rollout `python -m rollout start` would then run
(its steps, least time to promotion, the traffic each step needs, GPUs per step against `gpu.maxGPUs`) and
the warnings a careful reviewer would raise. Markdown for the pull-request comment, or the same as JSON.
"""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from infra.config import (
    PROJECT_DIR,
    StackConfig,
    parse_config,
    read_declarations,
    read_stack_file,
    typed_values,
)
from infra.errors import ConfigError
from infra.render import RenderedResource, render_resources
from rollout.errors import PlanError
from rollout.scheduler import RolloutPlan, plan_from_config
from service.names import parse_registry_uri

BASE_BRANCHES = ("main", "origin/main")
_VALUE_WIDTH = 60


# --------------------------------------------------------------------------------------------------
# The two sides: config at a git ref, config in the working tree
# --------------------------------------------------------------------------------------------------


def git(project_dir: Path, *args: str) -> str:
    """Run git in `project_dir`; PlanError with git's own message when it fails."""
    try:
        result = subprocess.run(["git", "-C", str(project_dir), *args], capture_output=True, text=True, check=False)
    except FileNotFoundError as err:
        raise PlanError("git is not installed; the plan reads the base config from git") from err
    if result.returncode != 0:
        raise PlanError(f"git {' '.join(args)}: {result.stderr.strip() or f'exit {result.returncode}'}")
    return result.stdout


def resolve_base(ref: str | None, project_dir: Path = PROJECT_DIR) -> tuple[str, str]:
    """(name, commit) of the base: `ref`, or the merge base of HEAD with main (or origin/main)."""
    if ref is not None:
        try:
            return ref, git(project_dir, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").strip()
        except PlanError as err:
            raise PlanError(f"--base {ref!r} is not a commit in {project_dir} (a branch, tag or commit id)") from err
    for branch in BASE_BRANCHES:
        try:
            return f"merge-base(HEAD, {branch})", git(project_dir, "merge-base", "HEAD", branch).strip()
        except PlanError:
            continue
    raise PlanError(f"no --base given and HEAD has no merge base with {' or '.join(BASE_BRANCHES)}; pass --base REF")


def file_at(commit: str, path: str, project_dir: Path = PROJECT_DIR) -> str | None:
    """The text of `path` (relative to `project_dir`) at `commit`, or None when it did not exist there."""
    try:
        git(project_dir, "cat-file", "-e", f"{commit}:./{path}")
    except PlanError:
        return None
    return git(project_dir, "show", f"{commit}:./{path}")


def config_at(stack: str, commit: str, project_dir: Path = PROJECT_DIR) -> StackConfig | None:
    """The stack's config as of `commit`, or None when the stack had no file there (a new stack).

    Keys declared since `commit` take their current declaration (so the old stack file still loads);
    keys `commit` declared keep their old default, so a changed default shows up as a change.
    """
    stack_text = file_at(commit, f"Pulumi.{stack}.yaml", project_dir)
    if stack_text is None:
        return None
    declarations = read_declarations(project_dir)
    with tempfile.TemporaryDirectory(prefix="mlserve-plan-") as folder:
        base_dir = Path(folder)
        (base_dir / f"Pulumi.{stack}.yaml").write_text(stack_text)
        project_text = file_at(commit, "Pulumi.yaml", project_dir)
        if project_text is not None:
            (base_dir / "Pulumi.yaml").write_text(project_text)
            declarations.update(read_declarations(base_dir))
        values = read_stack_file(stack, base_dir)
    return parse_config(stack, values, declarations)


# --------------------------------------------------------------------------------------------------
# Differences
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One value that changed: where, before and after (None: absent on that side)."""

    path: str
    before: Any
    after: Any


@dataclass(frozen=True)
class ResourceChange:
    """One rendered object that is added, removed or changed, with its changed fields."""

    resource: str
    change: str  # added | removed | changed
    fields: tuple[Change, ...] = ()


def config_changes(base: StackConfig | None, head: StackConfig) -> list[Change]:
    """Every declared key whose effective value (stack file over default) differs, in key order."""
    before = typed_values(base) if base is not None else {}
    after = typed_values(head)
    return [
        Change(name, before.get(name), after.get(name))
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name)
    ]


def _list_key(items: list) -> str | None:
    """The field that names each item of a list (`name`), when every item has a distinct one."""
    if items and all(isinstance(item, dict) and isinstance(item.get("name"), str) for item in items):
        names = [item["name"] for item in items]
        if len(set(names)) == len(names):
            return "name"
    return None


def diff_values(before: Any, after: Any, path: str = "") -> list[Change]:
    """Leaf-level differences; list items with a `name` are matched by name (`containers[model-server]`)."""
    if before == after:
        return []
    if isinstance(before, dict) and isinstance(after, dict):
        changes = []
        for name in list(before) + [name for name in after if name not in before]:
            sub = f'{path}["{name}"]' if "." in str(name) else f"{path}.{name}" if path else str(name)
            changes += diff_values(before.get(name), after.get(name), sub)
        return changes
    if isinstance(before, list) and isinstance(after, list):
        if _list_key(before) and _list_key(after):
            old = {item["name"]: item for item in before}
            new = {item["name"]: item for item in after}
            changes = []
            for name in list(old) + [name for name in new if name not in old]:
                changes += diff_values(old.get(name), new.get(name), f"{path}[{name}]")
            return changes
        if len(before) == len(after):
            return [c for index, (a, b) in enumerate(zip(before, after)) for c in diff_values(a, b, f"{path}[{index}]")]
    return [Change(path, before, after)]


def describe_resource(resource: RenderedResource) -> str:
    """`Kind namespace/name` for Kubernetes objects, `Type name` for other Pulumi resources."""
    if resource.is_kubernetes_object:
        namespace = (resource.inputs.get("metadata") or {}).get("namespace")
        return f"{resource.kind} {namespace}/{resource.object_name}" if namespace else f"{resource.kind} {resource.object_name}"
    return f"{resource.type.rsplit(':', 1)[-1]} {resource.name}"


def resource_changes(base: list[RenderedResource], head: list[RenderedResource]) -> list[ResourceChange]:
    """Objects added, removed or changed between two renders, in the render's order."""
    before = {r.file_name: r for r in base}
    after = {r.file_name: r for r in head}
    changes = []
    for name in list(before) + [name for name in after if name not in before]:
        old, new = before.get(name), after.get(name)
        if old is None:
            changes.append(ResourceChange(describe_resource(new), "added"))
        elif new is None:
            changes.append(ResourceChange(describe_resource(old), "removed"))
        elif old.inputs != new.inputs:
            old_body = old.manifest if old.is_kubernetes_object else old.inputs
            new_body = new.manifest if new.is_kubernetes_object else new.inputs
            changes.append(ResourceChange(describe_resource(new), "changed", tuple(diff_values(old_body, new_body))))
    return changes


# --------------------------------------------------------------------------------------------------
# The fleet in plain words
# --------------------------------------------------------------------------------------------------


def traffic_shares(config: StackConfig) -> dict[str, str]:
    """What each variant receives: a percent, or "shadow" (a copy of every request, or on the gateway router of
    `traffic.shadowPercent` of them, answered by nobody)."""
    if config.traffic.shadow:
        percent = config.traffic.shadow_percent
        return {"champion": "100%", "challenger": "shadow" if percent == 100 else f"shadow of {percent}%"}
    shares = {"champion": f"{config.traffic.champion_weight}%"}
    if config.model.has_challenger:
        shares["challenger"] = f"{config.traffic.challenger_weight}%"
    return shares


def replica_range(config: StackConfig) -> tuple[int, int]:
    """(fewest, most) pods of one variant: the HPA's bounds, or the fixed replica count."""
    if config.autoscaling.enabled:
        return config.autoscaling.min_replicas, config.autoscaling.max_replicas
    return config.serving.replicas, config.serving.replicas


def gpus_per_pod(config: StackConfig) -> int:
    return config.gpu.count if config.gpu.enabled else 0


def _model_change(variant: str, before: str, after: str) -> str:
    old, new = parse_registry_uri(before), parse_registry_uri(after)
    if old and new and old[2] and new[2] and old[0] == new[0]:
        return f"{variant} model version {old[2]} -> {new[2]} ({new[0]})"
    return f"{variant} model {before} -> {after}"


def _pods(config: StackConfig) -> tuple[int, int]:
    low, high = replica_range(config)
    return low * len(config.model.variants), high * len(config.model.variants)


def _span(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}-{high}"


def plain_words(base: StackConfig | None, head: StackConfig) -> list[str]:
    """The cluster changes a reviewer cares about first, one sentence each."""
    if base is None:
        return [f"new stack: {', '.join(head.model.variants)} on {head.traffic.router}, {_span(*_pods(head))} model pods"]
    lines = []
    for variant in ("champion", "challenger"):
        had, has = variant in base.model.variants, variant in head.model.variants
        if has and not had:
            lines.append(f"{variant} added: serves {head.model.uri(variant)}, traffic {traffic_shares(head)[variant]}")
        elif had and not has:
            lines.append(f"{variant} removed (was serving {base.model.uri(variant)})")
        elif has:
            if base.model.uri(variant) != head.model.uri(variant):
                lines.append(_model_change(variant, base.model.uri(variant), head.model.uri(variant)))
            old_share, new_share = traffic_shares(base)[variant], traffic_shares(head)[variant]
            if old_share != new_share:
                lines.append(f"{variant} traffic {old_share} -> {new_share}")
    old_pods, new_pods = _pods(base), _pods(head)
    if old_pods != new_pods:
        lines.append(f"model pods {_span(*old_pods)} -> {_span(*new_pods)}")
    old_gpu, new_gpu = gpus_per_pod(base), gpus_per_pod(head)
    old_gpu_pods = old_pods if old_gpu else (0, 0)
    new_gpu_pods = new_pods if new_gpu else (0, 0)
    if old_gpu_pods != new_gpu_pods:
        lines.append(f"GPU pods {_span(*old_gpu_pods)} -> {_span(*new_gpu_pods)}")
    old_gpus = tuple(pods * old_gpu for pods in old_pods)
    new_gpus = tuple(pods * new_gpu for pods in new_pods)
    if old_gpus != new_gpus:
        lines.append(f"GPUs held {_span(*old_gpus)} -> {_span(*new_gpus)}")
    if base.traffic.router != head.traffic.router:
        lines.append(f"traffic router {base.traffic.router} -> {head.traffic.router}")
    if head.traffic.router == "gateway":
        lines += gateway_words(base, head)
    if base.monitoring.enabled != head.monitoring.enabled:
        lines.append("monitoring and alerts " + ("turned on" if head.monitoring.enabled else "turned OFF"))
    return lines


def gateway_words(base: StackConfig, head: StackConfig) -> list[str]:
    """What changed in how the Gateway API router reaches the variants."""
    old, new = base.traffic, head.traffic
    on_gateway = base.traffic.router == "gateway"
    lines = []
    if not on_gateway or old.gateway != new.gateway:
        lines.append(f"routes attach to Gateway {new.gateway}" + (" (created by the stack)" if new.create_gateway else ""))
    elif old.create_gateway != new.create_gateway:
        lines.append(f"Gateway {new.gateway} " + ("now created by the stack" if new.create_gateway
                                                 else "no longer created by the stack: it is deleted"))
    if (old.sticky and on_gateway) != new.sticky or (new.sticky and old.sticky_timeout != new.sticky_timeout):
        lines.append("sticky sessions " + (f"on (cookie {'for ' + new.sticky_timeout if new.sticky_timeout else 'per client session'})"
                                           if new.sticky else "off"))
    return lines


# --------------------------------------------------------------------------------------------------
# The rollout `rollout start` would run
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutStep:
    """One step of the implied rollout: the challenger's weight and what it takes."""

    weight: int
    requests_per_second_needed: float  # total request rate at which the challenger gets minRequests per interval
    gpus_at_min_replicas: int
    gpus_at_max_replicas: int
    gpus_at_expected_rate: int | None = None
    seconds_at_expected_rate: float | None = None  # interval, or longer while minRequests are not yet reached


@dataclass(frozen=True)
class RolloutPreview:
    challenger_uri: str
    starts_at: int
    resumes: bool
    steps: tuple[RolloutStep, ...]
    interval_seconds: int
    failure_threshold: int
    min_requests: int
    least_seconds_to_promotion: float
    expected_requests_per_second: float | None
    max_gpus: int


def step_weights(plan: RolloutPlan, current_weight: int) -> list[int]:
    """The weights the scheduler visits from `current_weight` when every check passes (`Scheduler.run`):
    0 starts at the first step, anything else resumes there; each pass moves to the next step; 100 promotes."""
    weight = plan.steps[0] if current_weight == 0 else current_weight
    weights = [weight]
    while weight < 100:
        weight = plan.next_step(weight)
        weights.append(weight)
    return weights


def variant_replicas(config: StackConfig, share_percent: float, requests_per_second: float) -> int:
    """Pods the HPA settles on for a variant receiving `share_percent` of `requests_per_second`."""
    low, high = replica_range(config)
    if not config.autoscaling.enabled:
        return low
    wanted = math.ceil(requests_per_second * share_percent / 100 / config.autoscaling.target_requests_per_second)
    return min(max(wanted, low), high)


def rollout_preview(config: StackConfig, expected_rps: float | None = None) -> RolloutPreview:
    """The rollout `python -m rollout start` would run on `config` once it is applied."""
    rollout, per_pod = config.rollout, gpus_per_pod(config)
    low, high = replica_range(config)
    weights = step_weights(plan_from_config(rollout), config.traffic.challenger_weight)
    steps = []
    least_seconds = 0.0
    for weight in weights:
        needed = rollout.min_requests / rollout.interval_seconds / (weight / 100)
        at_rate = seconds = None
        if expected_rps:
            at_rate = per_pod * (variant_replicas(config, 100 - weight, expected_rps)
                                 + variant_replicas(config, weight, expected_rps))
            seconds = max(rollout.interval_seconds, rollout.min_requests / (expected_rps * weight / 100))
        steps.append(RolloutStep(weight, round(needed, 2), 2 * low * per_pod, 2 * high * per_pod, at_rate, seconds))
        if weight < 100:
            least_seconds += seconds if seconds is not None else rollout.interval_seconds
    return RolloutPreview(
        challenger_uri=config.model.challenger_uri,
        starts_at=weights[0],
        resumes=config.traffic.challenger_weight > 0,
        steps=tuple(steps),
        interval_seconds=rollout.interval_seconds,
        failure_threshold=rollout.failure_threshold,
        min_requests=rollout.min_requests,
        least_seconds_to_promotion=least_seconds,
        expected_requests_per_second=expected_rps,
        max_gpus=config.gpu.max_gpus,
    )


def implies_rollout(base: StackConfig | None, head: StackConfig) -> bool:
    """A challenger is introduced, replaced, or its weight changed: the reviewer should see the rollout."""
    if not head.model.has_challenger or head.traffic.shadow:
        return False
    if base is None or not base.model.has_challenger:
        return True
    return (base.model.challenger_uri != head.model.challenger_uri
            or base.traffic.challenger_weight != head.traffic.challenger_weight)


# --------------------------------------------------------------------------------------------------
# Warnings
# --------------------------------------------------------------------------------------------------


def review_warnings(base: StackConfig | None, head: StackConfig, preview: RolloutPreview | None) -> list[str]:
    """What a careful reviewer would raise about this change."""
    found = []
    stack = head.stack
    old_weight = base.traffic.challenger_weight if base is not None and base.model.has_challenger else 0
    new_weight = head.traffic.challenger_weight
    new_challenger = base is None or base.model.challenger_uri != head.model.challenger_uri
    if head.model.has_challenger and head.model.challenger_uri == head.model.champion_uri:
        found.append(f"the challenger is the champion ({head.model.challenger_uri}): the rollout compares a model with itself")
    if new_weight == 100 and old_weight < 100:
        found.append(f"challenger weight jumps straight to 100% (from {old_weight}%): the champion gets no traffic and "
                     f"nothing is compared; promote with `python -m rollout promote --stack {stack}` after a rollout instead")
    elif new_weight > old_weight or (new_challenger and new_weight > 0):
        skipped = [step for step in head.rollout.steps if old_weight < step < new_weight]
        what = f"traffic.challengerWeight raised {old_weight} -> {new_weight} by hand"
        if new_challenger and head.model.has_challenger:
            what = f"a new challenger ({head.model.challenger_uri}) gets {new_weight}% at once"
        found.append(
            f"{what}: no analysis judges it before it takes that traffic"
            + (f" (skips rollout steps {', '.join(f'{s}%' for s in skipped)})" if skipped else "")
            + f"; `python -m rollout start --stack {stack}` steps it and rolls back on failure "
            "(`--config-only` writes one judged step per pull request)"
        )
    newly_sticky = base is None or not (base.traffic.router == "gateway" and base.traffic.sticky)
    if (head.traffic.router == "gateway" and head.traffic.sticky and head.model.has_challenger and not head.traffic.shadow
            and (newly_sticky or implies_rollout(base, head))):
        found.append("traffic.sticky is on: a client keeps the variant it was first sent to, so each rollout step moves "
                     "only clients new to the stack, and a lowered weight moves nobody back until it reaches 0 "
                     "(Gateway API GEP-1619: a persistent session outranks the weights)")
        if newly_sticky:
            found.append("traffic.sticky needs the Gateway API experimental channel CRDs (HTTPRoute "
                         "sessionPersistence) and a gateway that implements session persistence; on the standard "
                         "channel the API server refuses the route")
    if head.model.has_challenger and (new_weight > 0 or head.traffic.shadow) and not head.monitoring.enabled:
        found.append("monitoring.enabled is false while a challenger runs: no alerts fire, and the rollout's "
                     "analysis has no metrics to judge it by")
    budget = head.gpu.max_gpus
    if budget and gpus_per_pod(head):
        low, high = _pods(head)
        per_pod = gpus_per_pod(head)
        if low * per_pod > budget:
            found.append(f"GPU budget exceeded: {low} pods x {per_pod} GPU at minimum replicas hold "
                         f"{low * per_pod} GPUs, over gpu.maxGPUs {budget}")
        elif high * per_pod > budget:
            found.append(f"GPU budget can be exceeded: the autoscalers may grow to {high} pods x {per_pod} GPU = "
                         f"{high * per_pod} GPUs, over gpu.maxGPUs {budget}")
        if preview is not None:
            over = [s for s in preview.steps if s.gpus_at_expected_rate is not None and s.gpus_at_expected_rate > budget]
            if over:
                found.append(f"GPU budget exceeded at {preview.expected_requests_per_second:g} req/s: "
                             + ", ".join(f"step {s.weight}% needs {s.gpus_at_expected_rate}" for s in over)
                             + f" (gpu.maxGPUs {budget})")
    return found


# --------------------------------------------------------------------------------------------------
# The plan, as data and as Markdown
# --------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    stack: str
    base_ref: str
    base_commit: str
    config: list[Change]
    summary: list[str]
    resources: list[ResourceChange]
    rollout: RolloutPreview | None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready: the same content as the Markdown."""
        return json.loads(json.dumps(asdict(self), default=list))


def make_plan(stack: str, base_ref: str | None = None, project_dir: Path = PROJECT_DIR,
              expected_rps: float | None = None) -> Plan:
    """Load and render both sides, and explain the difference. PlanError names what could not be read."""
    ref, commit = resolve_base(base_ref, project_dir)
    try:
        base = config_at(stack, commit, project_dir)
    except ConfigError as err:
        raise PlanError(f"the config of stack {stack!r} at {ref} is invalid: {err}") from err
    try:
        head = parse_config(stack, read_stack_file(stack, project_dir), read_declarations(project_dir))
    except ConfigError as err:
        raise PlanError(f"the working tree's config of stack {stack!r} is invalid: {err}") from err
    return explain(stack, ref, commit, base, head, expected_rps)


def explain(stack: str, ref: str, commit: str, base: StackConfig | None, head: StackConfig,
            expected_rps: float | None = None) -> Plan:
    """The plan for two loaded configs (each rendered in turn; the mocks are process-wide, renders are not)."""
    base_resources = render_resources(base) if base is not None else []
    head_resources = render_resources(head)
    preview = rollout_preview(head, expected_rps) if implies_rollout(base, head) else None
    return Plan(
        stack=stack,
        base_ref=ref,
        base_commit=commit,
        config=config_changes(base, head),
        summary=plain_words(base, head),
        resources=resource_changes(base_resources, head_resources),
        rollout=preview,
        warnings=review_warnings(base, head, preview),
    )


def _show(value: Any) -> str:
    """A value as a short inline-code cell: lists and mappings as compact JSON, long ones cut."""
    if value is None:
        return "*(none)*"
    text = value if isinstance(value, str) else json.dumps(list(value) if isinstance(value, tuple) else value,
                                                         separators=(", ", ": "))
    if text == "":
        return '`""`'
    if len(text) > _VALUE_WIDTH:
        text = text[: _VALUE_WIDTH - 1] + "…"
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"


def _field_cells(change: Change) -> tuple[str, str]:
    """(before, after) cells; a whole object that appears or disappears is named, not dumped."""
    if change.before is None and isinstance(change.after, (dict, list)) and change.after:
        return "*(none)*", "*added*"
    if change.after is None and isinstance(change.before, (dict, list)) and change.before:
        return "*removed*", "*(none)*"
    return _show(change.before), _show(change.after)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds / 60:g} min" if seconds % 60 == 0 else f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds / 3600:.1f} h"


def _rollout_markdown(stack: str, preview: RolloutPreview) -> list[str]:
    intervals = sum(1 for step in preview.steps if step.weight < 100)
    path = " -> ".join(f"{step.weight}%" for step in preview.steps)
    begin = (f"resumes at the configured {preview.starts_at}%" if preview.resumes
             else f"starts at the first step, {preview.starts_at}%")
    least = f"{intervals} x {preview.interval_seconds} s = {_duration(preview.least_seconds_to_promotion)}"
    if preview.expected_requests_per_second:
        least = f"{_duration(preview.least_seconds_to_promotion)} at {preview.expected_requests_per_second:g} req/s"
    lines = [
        f"#### The rollout `python -m rollout start --stack {stack}` would run",
        "",
        f"Challenger `{preview.challenger_uri}`: {begin}; steps {path} (promotion), one analysis every "
        f"{preview.interval_seconds} s, rolled back after {preview.failure_threshold} failed checks. "
        f"Least time to promotion: {least}. Each step is judged once the challenger has served "
        f"{preview.min_requests} requests (`rollout.minRequests`).",
        "",
    ]
    header = ["step", "challenger", "req/s needed for minRequests in one interval", "GPUs at min replicas",
              "GPUs at max replicas"]
    if preview.expected_requests_per_second:
        header += [f"GPUs at {preview.expected_requests_per_second:g} req/s", "time at that rate"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for number, step in enumerate(preview.steps, 1):
        promotes = step.weight >= 100  # reaching 100 promotes at once: no analysis, no interval
        row = [str(number), f"{step.weight}%" + (" (promote)" if promotes else ""),
               "-" if promotes else f"{step.requests_per_second_needed:g}",
               str(step.gpus_at_min_replicas), str(step.gpus_at_max_replicas)]
        if preview.expected_requests_per_second:
            row += [str(step.gpus_at_expected_rate), "-" if promotes else _duration(step.seconds_at_expected_rate)]
        lines.append("| " + " | ".join(row) + " |")
    budget = f"gpu.maxGPUs = {preview.max_gpus}" if preview.max_gpus else "no GPU budget set (gpu.maxGPUs 0)"
    lines += ["", f"GPUs count both variants at each weight; {budget}.", ""]
    return lines


def to_markdown(plan: Plan) -> str:
    """The pull-request comment: config changes, the cluster in plain words and field by field, rollout, warnings."""
    lines = [f"### mlserve plan for stack `{plan.stack}`", "",
             f"Base: {plan.base_ref} (`{plan.base_commit[:12]}`) -> working tree.", ""]
    if plan.warnings:
        lines += ["#### Warnings", ""] + [f"- :warning: {warning}" for warning in plan.warnings] + [""]
    lines += ["#### Config changes", ""]
    if plan.config:
        lines += ["| key | before | after |", "|---|---|---|"]
        lines += [f"| `{c.path}` | {_show(c.before)} | {_show(c.after)} |" for c in plan.config]
    else:
        lines.append("No config changes.")
    lines += ["", "#### What changes in the cluster", ""]
    if not plan.resources and not plan.summary:
        lines.append("Nothing: every rendered object is unchanged.")
    lines += [f"- {line}" for line in plan.summary]
    if plan.resources:
        counts = {kind: sum(1 for r in plan.resources if r.change == kind) for kind in ("changed", "added", "removed")}
        lines += ["", "Objects: " + ", ".join(f"{n} {kind}" for kind, n in counts.items() if n) + ".", "",
                  "| object | field | before | after |", "|---|---|---|---|"]
        for resource in plan.resources:
            if resource.change != "changed":
                lines.append(f"| {resource.resource} | *{resource.change}* | | |")
            for change in resource.fields:
                lines.append(f"| {resource.resource} | `{change.path}` | {' | '.join(_field_cells(change))} |")
    lines.append("")
    if plan.rollout is not None:
        lines += _rollout_markdown(plan.stack, plan.rollout)
    return "\n".join(lines).rstrip() + "\n"

"""mlserve's mandatory guardrails as CrossGuard policies: what every model-serving stack must satisfy.

Each policy's validate function takes the resource's type and inputs (`args.resource_type`, `args.props`;
for stack policies `args.resources`), exactly what `pulumi preview --policy-pack policy` hands it and what
`infra.render` records, so the tests call them offline on rendered stacks. Model pods are found by what
they are, not by who made them: any pod template (a Deployment's, or a SeldonDeployment predictor's
`componentSpecs`) with a container that reads `MODEL_URI`. Traffic is found the same way: a SeldonDeployment
predictor's `traffic`, or a Gateway API route (HTTPRoute, GRPCRoute) whose rules send requests, by weight or
by a RequestMirror filter, to a Service selecting the pods. The pack deliberately imports nothing from the
program it checks: a guardrail built from the program's own constants would agree with any bug in them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

MODEL_URI_ENV = "MODEL_URI"
VARIANT_LABEL = "mlserve.io/variant"
STACK_LABEL = "mlserve.io/stack"
# Stacks that must survive a node loss: at least this many pods per variant.
HA_STACKS = ("prod",)
HA_MIN_REPLICAS = 2
# Extended resources that are GPUs (as Kubernetes device plugins name them).
GPU_RESOURCE = re.compile(r"^(nvidia\.com/gpu|amd\.com/gpu|gpu\.intel\.com/.+)$")
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
# pulumi_policy hands a value Pulumi only knows after the update (the image's repo digest, in a
# preview) as this sentinel (pulumi/runtime/rpc.py UNKNOWN): it is checked again when it is known.
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
SELDON_DEPLOYMENT = "kubernetes:machinelearning.seldon.io/v1:SeldonDeployment"
PDB = "kubernetes:policy/v1:PodDisruptionBudget"
HPA = "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"
MONITORS = ("kubernetes:monitoring.coreos.com/v1:PodMonitor", "kubernetes:monitoring.coreos.com/v1:ServiceMonitor")
PROMETHEUS_RULE = "kubernetes:monitoring.coreos.com/v1:PrometheusRule"
SERVICE = "kubernetes:core/v1:Service"
ROUTES = ("kubernetes:gateway.networking.k8s.io/v1:HTTPRoute", "kubernetes:gateway.networking.k8s.io/v1:GRPCRoute")


@dataclass(frozen=True)
class ModelPods:
    """One variant's pod template and how many pods run it."""

    where: str  # e.g. "Deployment churn-model-champion" or "SeldonDeployment churn-model predictor challenger"
    variant: str
    labels: Mapping[str, str]
    pod: Mapping[str, Any]  # the pod spec
    replicas: int | None  # fixed count, or None when an autoscaler decides
    min_replicas: int | None  # the autoscaler's floor, when the object itself carries it (Seldon hpaSpec)
    traffic: int | None  # Seldon predictor traffic; None elsewhere
    shadow: bool
    has_pdb_spec: bool


def whole_number(value: Any) -> int | None:
    """`value` as an int when it is a whole number; the engine sends every number as a double (3 -> 3.0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        return None
    return int(value)


def _name(props: Mapping[str, Any]) -> str:
    return (props.get("metadata") or {}).get("name", "?")


def model_containers(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Containers that serve a model: they read MODEL_URI."""
    return [c for c in pod.get("containers") or [] if any(e.get("name") == MODEL_URI_ENV for e in c.get("env") or [])]


def model_pods(resource_type: str, props: Mapping[str, Any]) -> Iterator[ModelPods]:
    """The model-serving pod templates an object declares (none for objects that run no model)."""
    spec = props.get("spec") or {}
    if resource_type == DEPLOYMENT:
        template = spec.get("template") or {}
        labels = (template.get("metadata") or {}).get("labels") or {}
        if model_containers(template.get("spec") or {}):
            yield ModelPods(f"Deployment {_name(props)}", labels.get(VARIANT_LABEL, "?"), labels,
                            template.get("spec") or {}, whole_number(spec.get("replicas")), None, None, False, False)
    elif resource_type == SELDON_DEPLOYMENT:
        for predictor in spec.get("predictors") or []:
            for component in predictor.get("componentSpecs") or []:
                labels = (component.get("metadata") or {}).get("labels") or {}
                if not model_containers(component.get("spec") or {}):
                    continue
                hpa = component.get("hpaSpec") or {}
                yield ModelPods(
                    f"SeldonDeployment {_name(props)} predictor {predictor.get('name', '?')}",
                    labels.get(VARIANT_LABEL, predictor.get("name", "?")), labels, component.get("spec") or {},
                    None if hpa else whole_number(predictor.get("replicas", 1)), whole_number(hpa.get("minReplicas")),
                    whole_number(predictor.get("traffic")), bool(predictor.get("shadow")), "pdbSpec" in component,
                )


def _each_model_pod(check: Callable[[ModelPods, ReportViolation], None]):
    """A resource validation running `check` on every model pod template of the resource."""

    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        for pods in model_pods(args.resource_type, args.props):
            check(pods, report_violation)

    return validate


# --------------------------------------------------------------------------------------------------
# Resource policies: each model pod template on its own
# --------------------------------------------------------------------------------------------------


def _image_by_digest(pods: ModelPods, report: ReportViolation) -> None:
    for container in model_containers(pods.pod):
        image = container.get("image") or ""
        if image != UNKNOWN and not DIGEST.search(image):
            report(f"{pods.where}: container {container.get('name')!r} runs image {image!r}, not pinned by digest; "
                   "run REPOSITORY@sha256:<digest> (the image's repoDigest) so every pod runs the same bytes")


def _requests_and_limits(pods: ModelPods, report: ReportViolation) -> None:
    for container in model_containers(pods.pod):
        resources = container.get("resources") or {}
        missing = [f"{kind}.{name}" for kind in ("requests", "limits") for name in ("cpu", "memory")
                   if name not in (resources.get(kind) or {})]
        if missing:
            report(f"{pods.where}: container {container.get('name')!r} has no {', '.join(missing)}; "
                   "model pods need cpu and memory requests and limits")


def _probes(pods: ModelPods, report: ReportViolation) -> None:
    for container in model_containers(pods.pod):
        missing = [probe for probe in ("livenessProbe", "readinessProbe", "startupProbe") if not container.get(probe)]
        if missing:
            report(f"{pods.where}: container {container.get('name')!r} has no {', '.join(missing)}; a model pod "
                   "needs all three (startup for the slow model load, readiness before traffic, liveness)")


def _restricted(pods: ModelPods, report: ReportViolation) -> None:
    pod_context = pods.pod.get("securityContext") or {}
    for container in model_containers(pods.pod):
        context = container.get("securityContext") or {}
        problems = []
        if not context.get("runAsNonRoot", pod_context.get("runAsNonRoot")):
            problems.append("runAsNonRoot is not true")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append("allowPrivilegeEscalation is not false")
        if context.get("privileged"):
            problems.append("privileged is true")
        if "ALL" not in ((context.get("capabilities") or {}).get("drop") or []):
            problems.append("capabilities do not drop ALL")
        seccomp = (context.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append("seccompProfile is not RuntimeDefault")
        if not context.get("readOnlyRootFilesystem"):
            problems.append("readOnlyRootFilesystem is not true")
        if problems:
            report(f"{pods.where}: container {container.get('name')!r} is not restricted: {'; '.join(problems)} "
                   "(Pod Security Standards, restricted profile)")


def _gpu_scheduling(pods: ModelPods, report: ReportViolation) -> None:
    tolerations = pods.pod.get("tolerations") or []
    on_gpu_nodes = any("gpu" in key for key in (pods.pod.get("nodeSelector") or {}))
    for container in model_containers(pods.pod):
        resources = container.get("resources") or {}
        limited = [name for name in (resources.get("limits") or {}) if GPU_RESOURCE.match(name)]
        requested_only = [name for name in (resources.get("requests") or {})
                          if GPU_RESOURCE.match(name) and name not in limited]
        where = f"{pods.where}: container {container.get('name')!r}"
        if requested_only:
            report(f"{where} requests {', '.join(requested_only)} without a limit; extended resources are "
                   "scheduled by their limit (set limits, requests may be left out)")
        if on_gpu_nodes and not limited:
            report(f"{where} is pinned to GPU nodes but has no GPU limit (nvidia.com/gpu); it would hold a GPU "
                   "node without using its GPU")
        for name in limited:
            if not any(t.get("key") == name or (t.get("operator") == "Exists" and not t.get("key")) for t in tolerations):
                report(f"{where} asks for {name} but does not tolerate the GPU taint {name}:NoSchedule; "
                       "it will not schedule on tainted GPU nodes")


def general_rules(route: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A route's rules that serve every request: those that match no header. A rule matching a header serves only
    the requests that carry it (pinning a variant for QA or replay), not a share of the traffic."""
    return [rule for rule in (route.get("spec") or {}).get("rules") or []
            if not any(match.get("headers") for match in rule.get("matches") or [])]


def _route_split(args: ResourceValidationArgs, report: ReportViolation) -> None:
    where = f"{args.resource_type.rsplit(':', 1)[-1]} {_name(args.props)}"
    for rule in general_rules(args.props):
        refs = rule.get("backendRefs") or []
        weights = [whole_number(ref.get("weight", 1)) for ref in refs]
        if len(refs) < 2:
            continue  # one backend takes everything, whatever its weight
        if any(weight is None or not 0 <= weight <= 100 for weight in weights):
            report(f"{where} rule {rule.get('name', '?')!r}: backend weights {[ref.get('weight') for ref in refs]} "
                   "are not percents 0..100")
        elif sum(weights) != 100:
            report(f"{where} rule {rule.get('name', '?')!r}: backend weights add up to {sum(weights)}, not 100")


def _traffic_split(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type in ROUTES:
        _route_split(args, report)
        return
    if args.resource_type != SELDON_DEPLOYMENT:
        return
    predictors = (args.props.get("spec") or {}).get("predictors") or []
    served = [p for p in predictors if not p.get("shadow")]
    for predictor in served:
        traffic = whole_number(predictor.get("traffic"))
        if traffic is None or not 0 <= traffic <= 100:
            report(f"SeldonDeployment {_name(args.props)} predictor {predictor.get('name')!r}: traffic "
                   f"{predictor.get('traffic')!r} is not a percent 0..100")
            return
    total = sum(whole_number(p.get("traffic")) for p in served)
    if served and total != 100:
        report(f"SeldonDeployment {_name(args.props)}: predictor traffic adds up to {total}, not 100")


# --------------------------------------------------------------------------------------------------
# Stack policies: relations between objects
# --------------------------------------------------------------------------------------------------


def _all_model_pods(resources) -> list[ModelPods]:
    return [pods for r in resources for pods in model_pods(r.resource_type, r.props)]


def _selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    match = (selector or {}).get("matchLabels") or {}
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def _disruption_budget(args: StackValidationArgs, report: ReportViolation) -> None:
    budgets = [r.props.get("spec") or {} for r in args.resources if r.resource_type == PDB]
    for pods in _all_model_pods(args.resources):
        if not pods.has_pdb_spec and not any(_selects(b.get("selector"), pods.labels) for b in budgets):
            report(f"{pods.where}: no PodDisruptionBudget selects its pods ({VARIANT_LABEL}={pods.variant}); "
                   "a node drain could take every replica of the variant at once")


def _services(resources) -> dict[tuple[str | None, str], Mapping[str, Any]]:
    """Each Service's spec by (namespace, name)."""
    return {((r.props.get("metadata") or {}).get("namespace"), _name(r.props)): r.props.get("spec") or {}
            for r in resources if r.resource_type == SERVICE}


def _route_backends(route: Mapping[str, Any]) -> Iterator[tuple[Mapping[str, Any], bool]]:
    """Every Service a route names, with whether it gets a share of every request (a positive weight in a rule
    that matches no header, or a RequestMirror copy)."""
    general = [id(rule) for rule in general_rules(route)]
    for rule in (route.get("spec") or {}).get("rules") or []:
        for ref in rule.get("backendRefs") or []:
            yield ref, id(rule) in general and (whole_number(ref.get("weight", 1)) or 0) > 0
        for step in rule.get("filters") or []:
            if step.get("type") == "RequestMirror":
                yield (step.get("requestMirror") or {}).get("backendRef") or {}, id(rule) in general


def _routed_selectors(resources) -> list[Mapping[str, Any]]:
    """The pod selectors of the Services that Gateway API routes send a share of their traffic to."""
    services = _services(resources)
    selectors = []
    for r in resources:
        if r.resource_type not in ROUTES:
            continue
        namespace = (r.props.get("metadata") or {}).get("namespace")
        for ref, takes_traffic in _route_backends(r.props):
            service = services.get((ref.get("namespace", namespace), ref.get("name")))
            if takes_traffic and ref.get("kind", "Service") == "Service" and service is not None:
                selectors.append({"matchLabels": service.get("selector") or {}})
    return selectors


def _route_backends_exist(args: StackValidationArgs, report: ReportViolation) -> None:
    services = _services(args.resources)
    for r in args.resources:
        if r.resource_type not in ROUTES:
            continue
        namespace = (r.props.get("metadata") or {}).get("namespace")
        where = f"{r.resource_type.rsplit(':', 1)[-1]} {_name(r.props)}"
        for ref, _ in _route_backends(r.props):
            key = (ref.get("namespace", namespace), ref.get("name"))
            service = services.get(key)
            if ref.get("kind", "Service") != "Service" or service is None:
                report(f"{where}: backend {ref.get('kind', 'Service')} {'/'.join(map(str, key))} is not a Service of this "
                       "stack; the gateway would answer its share of requests with 500")
            elif ref.get("port") not in [whole_number(port.get("port")) for port in service.get("ports") or []]:
                report(f"{where}: backend Service {key[1]} has no port {ref.get('port')!r}")


def _challenger_monitoring(args: StackValidationArgs, report: ReportViolation) -> None:
    monitors = [r.props.get("spec") or {} for r in args.resources if r.resource_type in MONITORS]
    rules = [r for r in args.resources if r.resource_type == PROMETHEUS_RULE]
    routed = _routed_selectors(args.resources)
    for pods in _all_model_pods(args.resources):
        routed_here = any(_selects(selector, pods.labels) for selector in routed)
        if pods.variant != "challenger" or not (pods.shadow or (pods.traffic or 0) > 0 or routed_here):
            continue
        if not any(_selects(m.get("selector"), pods.labels) for m in monitors):
            report(f"{pods.where}: the challenger takes traffic but no PodMonitor or ServiceMonitor scrapes its "
                   "pods; without its metrics no alert fires and no rollout can judge it")
        if not rules:
            report(f"{pods.where}: the challenger takes traffic but the stack has no PrometheusRule alerting on it")


def _ha_replicas(args: StackValidationArgs, report: ReportViolation) -> None:
    floors = {}
    for r in args.resources:
        if r.resource_type == HPA:
            spec = r.props.get("spec") or {}
            floors[(spec.get("scaleTargetRef") or {}).get("name")] = whole_number(spec.get("minReplicas", 1))
    for r in args.resources:
        for pods in model_pods(r.resource_type, r.props):
            stack = pods.labels.get(STACK_LABEL) or ((r.props.get("metadata") or {}).get("labels") or {}).get(STACK_LABEL)
            if stack not in HA_STACKS:
                continue
            if r.resource_type == DEPLOYMENT and _name(r.props) in floors:
                least = floors[_name(r.props)]
            else:
                least = pods.min_replicas if pods.min_replicas is not None else pods.replicas
            if least is None:
                least = 1  # Kubernetes' default replicas
            if least < HA_MIN_REPLICAS:
                report(f"{pods.where}: stack {stack!r} runs {least} replica(s) of the {pods.variant}; "
                       f"{stack} needs at least {HA_MIN_REPLICAS} per variant (autoscaling.minReplicas or serving.replicas)")


# name -> (description, resource or stack validation, validate function); the pack and the tests use this table.
VALIDATIONS: dict[str, tuple[str, str, Callable[..., None]]] = {
    "model-image-by-digest": ("Model pods run their image by digest, never by a tag.",
                              "resource", _each_model_pod(_image_by_digest)),
    "model-requests-and-limits": ("Model containers have cpu and memory requests and limits.",
                                  "resource", _each_model_pod(_requests_and_limits)),
    "model-probes": ("Model containers have startup, readiness and liveness probes.",
                     "resource", _each_model_pod(_probes)),
    "model-restricted-security": ("Model containers meet the restricted Pod Security profile.",
                                  "resource", _each_model_pod(_restricted)),
    "gpu-scheduling": ("GPU pods set GPU limits and tolerate the GPU taint.", "resource", _each_model_pod(_gpu_scheduling)),
    "challenger-weight": ("Seldon predictor traffic, and the backend weights of a Gateway API route's general rule, "
                          "are 0..100 and add up to 100.", "resource", _traffic_split),
    "route-backends": ("Every backend of a Gateway API route is a Service of the stack, on one of its ports.",
                       "stack", _route_backends_exist),
    "model-disruption-budget": ("Every model variant has a PodDisruptionBudget.", "stack", _disruption_budget),
    "challenger-monitoring": ("A challenger that takes traffic is scraped and alerted on.",
                              "stack", _challenger_monitoring),
    "prod-replicas": (f"Stacks {', '.join(HA_STACKS)} run at least {HA_MIN_REPLICAS} replicas per variant.",
                      "stack", _ha_replicas),
}
ENFORCEMENT = EnforcementLevel.MANDATORY
POLICIES = [
    (ResourceValidationPolicy if kind == "resource" else StackValidationPolicy)(
        name=name, description=description, validate=validate, enforcement_level=ENFORCEMENT)
    for name, (description, kind, validate) in VALIDATIONS.items()
]

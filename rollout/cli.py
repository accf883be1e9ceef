"""`python -m rollout start|status|promote|abort|plan --stack STACK` and `python -m rollout demo`.

Every stack command reads the stack's typed config (`infra.config.load_stack_config`): invalid config,
like a bad argument, exits 2 with every problem named. `start` holds the stack's rollout lock, prints
each decision as it happens and, with `--report FILE.json`, writes the run and a chart beside it.
`plan` explains a config change for its pull request (`rollout.plan`). With `--explain-url VARIANT=URL` for each
variant's model server, the report also shows how each variant decides (`rollout.explanations`).

Exit codes: 0 promoted (or, in config-only mode, a change written), 1 rolled back, 2 bad arguments or
config, 3 refused (another rollout holds the lock, or the router failed), 130 stopped by the operator.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

from rollout.analysis import ready_pods_query
from rollout.errors import PlanError, RolloutError, RolloutLockedError, UsageError
from rollout.explanations import REPORT_ROWS, report_explanations, strongest_columns
from rollout.lock import RolloutLock, lock_holder, lock_path, state_dir
from rollout.metrics import PrometheusProvider
from rollout.progress import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_ROLLED_BACK,
    EXIT_STOPPED,
    EXIT_USAGE,
    Progress,
    restore_signals,
    stop_on_signals,
)
from rollout.promotion import make_promotion
from rollout.report import write_report
from rollout.router import ROUTER_TYPES, make_router
from rollout.scheduler import RolloutPlan, Scheduler, Verdict, measure, plan_from_config
from service.names import VARIANTS


def stack_metric_sources(config, router_type: str = "stack") -> dict[str, str]:
    """On Seldon: the executor's matchers per variant (it counts requests and errors, see
    `rollout.analysis.variant_queries`) and the challenger's ready-pods query (the operator names its
    Deployments SDEP-PREDICTOR-INDEX-CONTAINERS, operator/apis/.../seldondeployment_types.go GetDeploymentName).
    Nothing on the plain path, nor when traffic is split by a local HAProxy (`--router haproxy`): no
    executor stands in front of those servers, so its series would never exist and every look would hold."""
    if config.traffic.router != "seldon" or router_type != "stack":
        return {}
    from infra.seldon_specs import executor_selector

    return {
        "champion_executor_selector": executor_selector(config.identity, "champion"),
        "challenger_executor_selector": executor_selector(config.identity, "challenger"),
        "challenger_ready_query": ready_pods_query(config.namespace, f"{config.app_name}-challenger-[0-9]+-.+"),
    }


def _load_config(args):
    from infra.config import load_stack_config, parse_override
    from infra.errors import ConfigError

    stack = args.stack
    try:
        overrides = dict(parse_override(assignment) for assignment in args.set)
        return load_stack_config(stack, overrides=overrides)
    except ConfigError as err:
        raise UsageError(str(err)) from err
    except FileNotFoundError as err:
        raise UsageError(f"--stack {stack!r}: no such stack file ({err.filename})") from err


def _router(args, config):
    from infra.config import PROJECT_DIR

    if args.router == "haproxy":
        if not args.haproxy_socket:
            raise UsageError("--router haproxy needs --haproxy-socket PATH (HAProxy's admin-level stats socket)")
        return make_router("haproxy", socket_path=Path(args.haproxy_socket))
    return make_router(
        "stack",
        stack_name=args.stack,
        project_dir=PROJECT_DIR,
        config_only=getattr(args, "config_only", False),
        default_weight=config.traffic.challenger_weight,
        on_output=None,
    )


def _promotion(args, router):
    """How this stack's challenger becomes its champion (the router only moves traffic)."""
    from infra.config import PROJECT_DIR

    if args.router == "haproxy":
        return make_promotion("haproxy", router=router)
    return make_promotion("stack", router=router, stack_name=args.stack, project_dir=PROJECT_DIR,
                          config_only=getattr(args, "config_only", False))


def _promote_if_passed(result, promotion) -> None:
    """A rollout that passed its last step is promoted here, by its caller; the result then says what changed."""
    if result.verdict is Verdict.PROMOTED:
        result.reason = promotion.promote()


def _checks_file(stack: str) -> Path:
    return state_dir() / f"rollout-{stack.replace('/', '_')}.checks.json"


def cmd_start(args) -> int:
    config = _load_config(args)
    if not config.model.challenger_uri:
        raise UsageError(f"stack {args.stack!r} has no model.challengerUri: there is no challenger to roll out")
    plan = plan_from_config(config.rollout, stack_metric_sources(config, getattr(args, "router", "stack")))
    provider = PrometheusProvider(config.rollout.prometheus_url)
    router = _router(args, config)
    stop = threading.Event()
    progress = Progress(stop)
    print(
        f"rollout of {config.model.challenger_uri} on stack {args.stack!r}: steps {list(plan.steps)}, "
        f"every {plan.interval_seconds:g}s, rollback after {plan.failure_threshold} failed checks; "
        f"metrics from {config.rollout.prometheus_url}"
    )
    promotion = _promotion(args, router)
    with RolloutLock(args.stack):
        scheduler = Scheduler(router, provider, plan, wait=progress.wait, on_record=progress.on_record)
        if args.config_only:
            checks = _checks_file(args.stack)
            before = json.loads(checks.read_text())["failed_checks"] if checks.exists() else 0
            result, failed = scheduler.run_once(before)
            explanations = _explanations(args, config)
            _promote_if_passed(result, promotion)
            if result.verdict is None:
                checks.write_text(json.dumps({"failed_checks": failed}))
            else:
                checks.unlink(missing_ok=True)
            print(f"config-only: Pulumi.{args.stack}.yaml updated; apply it through your pull request")
        else:
            previous = stop_on_signals(stop)
            try:
                result = scheduler.run()
                explanations = _explanations(args, config)  # before a promotion changes what each variant serves
                _promote_if_passed(result, promotion)
            except RolloutError as err:
                # The router failed mid-rollout (e.g. `pulumi up`): keep what happened so far in the report.
                scheduler.result.verdict = Verdict.ABORTED
                scheduler.result.reason = f"stopped by an error: {err}"
                _write_report(args, config, plan, scheduler.result)
                raise
            finally:
                restore_signals(previous)
    _write_report(args, config, plan, result, explanations)
    verdict = result.verdict.value if result.verdict else "in progress"
    print(f"verdict: {verdict}" + (f" ({result.reason})" if result.reason else ""))
    return {Verdict.PROMOTED: EXIT_OK, Verdict.ROLLED_BACK: EXIT_ROLLED_BACK, Verdict.ABORTED: EXIT_STOPPED}.get(
        result.verdict, EXIT_OK
    )


def _explanations(args, config) -> dict | None:
    """For the report (only with --report): each variant's mean absolute attribution per column, asked of its model
    server (``--explain-url``) on the same rows (``service.explain.sample_rows``: the stack's explain background, else
    the champion's logged input example); a note in place of whatever cannot be had. Never fails the rollout."""
    if not args.report:
        return None
    if not config.explain.enabled:
        return {"note": "explanations are off on this stack (explain.enabled: false)"}
    urls = dict(args.explain_url)
    if not urls:
        return {"note": "no model server was given to ask: pass --explain-url champion=URL --explain-url "
                        "challenger=URL (each variant's server, e.g. through kubectl port-forward)"}
    from service.errors import InvalidInput
    from service.explain import sample_rows
    from service.settings import tracking_uri_from_env

    count = min(REPORT_ROWS, config.explain.max_rows)
    try:
        rows, rows_from = sample_rows(config.model.champion_uri, config.explain.background_uri, count,
                                      tracking_uri_from_env())
        print(f"explanations: {len(rows)} rows from {rows_from}, asked of {', '.join(urls)}")
        section = report_explanations(urls, rows, rows_from)
    except InvalidInput as err:
        return {"note": f"no rows to explain: {err.message}"}
    except Exception as err:  # noqa: BLE001 - the rollout has decided; what it could not explain is only noted
        return {"note": f"explanations failed: {type(err).__name__}: {err}"}
    for variant in VARIANTS:
        if variant not in urls:
            section["notes"][variant] = f"not asked: no --explain-url {variant}=URL"
    for variant, means in section["mean_absolute_attribution"].items():
        print(f"  {variant} leans most on: {strongest_columns(means)}")
    for variant, note in section["notes"].items():
        print(f"  {variant}: {note}")
    return section


def _write_report(args, config, plan: RolloutPlan, result, explanations: dict | None = None) -> None:
    if args.report:
        context = {"stack": args.stack, "challenger_uri": config.model.challenger_uri, "plan": plan.to_dict()}
        if explanations is not None:
            context["explanations"] = explanations
        report, chart = write_report(result, Path(args.report), context)
        print(f"report: {report} (chart {chart})")


def cmd_status(args) -> int:
    config = _load_config(args)
    holder = lock_holder(args.stack)
    print(f"stack:              {args.stack}")
    print(f"champion:           {config.model.champion_uri}")
    print(f"challenger:         {config.model.challenger_uri or '(none)'}")
    print(f"challenger weight:  {config.traffic.challenger_weight}% (from Pulumi.{args.stack}.yaml)")
    print(f"steps:              {list(config.rollout.steps)} every {config.rollout.interval_seconds}s")
    print(f"rollout running:    {f'yes, pid {holder}' if holder else 'no'}")
    provider = PrometheusProvider(config.rollout.prometheus_url, timeout_seconds=3)
    if not provider.is_online():
        print(f"prometheus:         unreachable at {config.rollout.prometheus_url}")
        return EXIT_OK
    measurement = measure(provider, plan_from_config(config.rollout, stack_metric_sources(config, getattr(args, "router", "stack"))), config.rollout.interval_seconds)
    print(f"last {config.rollout.interval_seconds}s:          {measurement.phase.value}: {measurement.reason}")
    return EXIT_OK


def cmd_promote(args) -> int:
    config = _load_config(args)
    if not config.model.challenger_uri:
        raise UsageError(f"stack {args.stack!r} has no model.challengerUri to promote")
    with RolloutLock(args.stack):
        print(_promotion(args, _router(args, config)).promote())
    return EXIT_OK


def cmd_abort(args) -> int:
    config = _load_config(args)
    holder = lock_holder(args.stack)
    if holder and holder != os.getpid():
        print(f"stopping the rollout running as pid {holder}")
        os.kill(holder, signal.SIGTERM)
        deadline = time.monotonic() + args.wait
        while lock_holder(args.stack) and time.monotonic() < deadline:
            time.sleep(0.2)
        if lock_holder(args.stack):
            print(f"pid {holder} still holds {lock_path(args.stack)} after {args.wait}s", file=sys.stderr)
            return EXIT_REFUSED
    with RolloutLock(args.stack):
        _router(args, config).set_weight(0)
    _checks_file(args.stack).unlink(missing_ok=True)
    print(f"aborted: challenger weight set to 0 on stack {args.stack!r} ({args.reason})")
    return EXIT_OK


def cmd_plan(args) -> int:
    from rollout.plan import make_plan, to_markdown

    plan = make_plan(args.stack, args.base, expected_rps=args.expected_rps)
    if args.format == "json":
        print(json.dumps(plan.to_dict(), indent=2))
    else:
        print(to_markdown(plan), end="")
    return EXIT_OK


def cmd_demo(args) -> int:
    from rollout.demo import run_demo

    if args.faulty_challenger and args.worse_challenger:
        raise UsageError("--faulty-challenger and --worse-challenger are two different demos; pick one")
    return run_demo(faulty_challenger=args.faulty_challenger, worse_challenger=args.worse_challenger,
                    report=Path(args.report) if args.report else None, shifted_traffic=args.shifted_traffic)


def _stack_name(value: str) -> str:
    if not value or not all(ch.isalnum() or ch in "-_./" for ch in value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a stack name (letters, digits, - _ . /)")
    return value


def _report_path(value: str) -> str:
    if not value.endswith(".json"):
        raise argparse.ArgumentTypeError(f"{value!r} must end in .json (the chart is written beside it as .png)")
    return value


def _variant_url(value: str) -> tuple[str, str]:
    variant, _, url = value.partition("=")
    if variant not in VARIANTS or not url.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"{value!r} is not VARIANT=URL with VARIANT one of {', '.join(VARIANTS)} and "
                                         "an http(s) URL, e.g. challenger=http://127.0.0.1:3001")
    return variant, url.rstrip("/")


def _positive_rate(value: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        rate = math.nan
    if not math.isfinite(rate) or rate <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive request rate (requests per second, e.g. 200)")
    return rate


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; bad arguments exit 2 with a message naming the problem."""
    parser = argparse.ArgumentParser(prog="python -m rollout", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="{start,status,promote,abort,plan,demo}")

    def stack_command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--stack", required=True, type=_stack_name, help="Pulumi stack, e.g. prod")
        sub.add_argument("--router", choices=ROUTER_TYPES, default="stack",
                         help="stack: Pulumi stack config + up (default); haproxy: a local HAProxy")
        sub.add_argument("--haproxy-socket", help="HAProxy admin socket (with --router haproxy)")
        sub.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                         help="override a stack config key for this run, e.g. --set rollout.intervalSeconds=30")
        return sub

    start = stack_command("start", "step the challenger's weight, judging each step against Prometheus")
    start.add_argument("--report", type=_report_path, help="write the run as JSON (and a PNG chart beside it)")
    start.add_argument("--config-only", action="store_true",
                       help="make one decision, write it to Pulumi.STACK.yaml and stop (apply via pull request)")
    start.add_argument("--explain-url", type=_variant_url, action="append", default=[], metavar="VARIANT=URL",
                       help="a variant's model server (e.g. through kubectl port-forward): the report then carries its "
                            "mean absolute attribution per column from /explain; give one per variant")
    stack_command("status", "show weights, models, whether a rollout runs, and the last interval's analysis")
    stack_command("promote", "make the challenger the champion now (weight back to 0)")
    abort = stack_command("abort", "stop a running rollout and set the challenger's weight to 0")
    abort.add_argument("--reason", default="aborted by operator", help="recorded in the output")
    abort.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the running rollout to stop")
    plan = commands.add_parser("plan", help="explain a config change for its pull request: cluster, rollout, GPUs, warnings")
    plan.add_argument("--stack", required=True, type=_stack_name, help="Pulumi stack, e.g. prod")
    plan.add_argument("--base", metavar="REF", help="git ref to compare with (default: the merge base of HEAD with main)")
    plan.add_argument("--format", choices=("markdown", "json"), default="markdown", help="output (default markdown)")
    plan.add_argument("--expected-rps", type=_positive_rate, metavar="REQ_PER_S",
                      help="expected total request rate: GPUs and time per rollout step at that load")
    demo = commands.add_parser("demo", help="the whole loop locally: MLflow, bentoml serve, HAProxy, Prometheus")
    demo.add_argument("--faulty-challenger", action="store_true",
                      help="serve a challenger version that fails part of its traffic (shows a rollback)")
    demo.add_argument("--worse-challenger", action="store_true",
                      help="serve a challenger that never fails but is less accurate; true labels come back as "
                           "feedback and the rollout rolls it back on quality")
    demo.add_argument("--shifted-traffic", action="store_true",
                      help="send rows whose monthly_charges drift upward; the input drift alert fires in Prometheus")
    demo.add_argument("--report", type=_report_path, help="write the run as JSON (and a PNG chart beside it)")
    return parser


COMMANDS = {"start": cmd_start, "status": cmd_status, "promote": cmd_promote, "abort": cmd_abort, "plan": cmd_plan, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    """Parse, dispatch, and turn domain errors into clear messages and exit codes."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UsageError as err:
        parser.exit(EXIT_USAGE, f"{parser.prog} {args.command}: error: {err}\n")
    except PlanError as err:
        parser.exit(EXIT_USAGE, f"{parser.prog} {args.command}: error: {err}\n")
    except RolloutLockedError as err:
        print(f"refused: {err}", file=sys.stderr)
        return EXIT_REFUSED
    except RolloutError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_REFUSED

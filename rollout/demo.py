"""`python -m rollout demo`: the whole progressive-delivery loop on one machine, no cluster needed.

It makes sure the local MLflow registry has the demo model (training and registering it if missing, a
faulty challenger version with `--faulty-challenger`), serves champion and challenger with
`bentoml serve` on loopback, splits traffic with HAProxy, scrapes both with Prometheus, drives bounded
load, and runs the same `Scheduler` as `start` with an `HAProxyRouter` on short intervals. A healthy
challenger is promoted (the registry's `champion` alias moves to it); a faulty one is rolled back. With
`--worse-challenger` the challenger never errors and is as fast but clearly less accurate: the load generator
sends each customer's true outcome to `/feedback` a few seconds after its prediction, the quality gate (required
for promotion) compares the variants' accuracy, and the rollout rolls it back on quality. With `--shifted-traffic`
the rows' `monthly_charges` drift upward during the run and Prometheus evaluates the drift rules
(`rollout.drift_demo`): the demo then waits for `ModelInputDrift` and shows every column's drift score. It exits 0
once the scheduler has decided, and stops every process it started, on Ctrl-C too.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import threading
from pathlib import Path

from dataclasses import replace

from rollout.analysis import QualityThresholds, Thresholds
from rollout.divergence import DivergenceThresholds
from rollout.drift_demo import (
    INPUT_DRIFT, SHIFT_PER_SECOND, SHIFT_START_SECONDS, SHIFTED_COLUMN, WATCH_SECONDS, demo_drift_rule_group,
    shift_monthly_charges, watch_drift,
)
from rollout.local import LoadGenerator, LocalEnvironment
from rollout.errors import ExplanationError
from rollout.explanations import explain_rows, mean_absolute_attributions, side_by_side
from rollout.lock import state_dir
from rollout.metrics import PrometheusProvider
from rollout.progress import EXIT_OK, EXIT_STOPPED, Progress, stop_on_signals
from rollout.promotion import RegistryAliasPromotion
from rollout.report import write_report
from rollout.router import HAProxyRouter
from rollout.scheduler import RolloutPlan, Scheduler, Verdict
from service.names import CHALLENGER, CHAMPION, DEMO_MODEL_NAME, VARIANTS

DEMO_RATE_PER_SECOND = 40
DEMO_MAX_SECONDS = 300
# Short intervals so the demo decides in about a minute; the statistics are the same as in production. The load
# stops after DEMO_MAX_SECONDS, so no step may outlast it: past that the demo stops and sets the weight to 0.
DEMO_PLAN = RolloutPlan(
    steps=(10, 25, 50, 100),
    interval_seconds=5,
    failure_threshold=2,
    thresholds=Thresholds(min_requests=50, max_error_rate=0.01, max_p95_seconds=0.5),
    # The label-free gate, reporting only (the stack default): the report's chart shows what it saw.
    divergence=DivergenceThresholds(action="warn", min_rows=100),
    progress_deadline_seconds=DEMO_MAX_SECONDS,
)
# The quality demo: ground truth comes back DEMO_FEEDBACK_DELAY_SECONDS after each prediction, and the last step
# holds until the gate has judged at least `min_feedback` rows per variant.
QUALITY_DEMO_PLAN = replace(DEMO_PLAN, quality=QualityThresholds(
    metric="accuracy", max_degradation=0.02, min_feedback=100, required_for_promotion=True,
))
DEMO_FEEDBACK_DELAY_SECONDS = 3


def say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def demo_versions(tracking_uri: str, faulty_challenger: bool, worse_challenger: bool = False) -> dict[str, str]:
    """Champion and challenger versions for the demo, registering (training) what is missing.

    A previous healthy demo promoted its challenger, leaving both aliases on one version; a fresh
    challenger is registered then, so there is always something to roll out.
    """
    from service.train import ensure_demo_models, register_demo_models

    kind = {"faulty_challenger": faulty_challenger, "worse_challenger": worse_challenger}
    versions = ensure_demo_models(tracking_uri, **kind)
    if versions[CHAMPION] == versions[CHALLENGER]:
        versions = register_demo_models(tracking_uri, **kind)
    return versions


def explain_variants(urls: dict[str, str], customers: list[dict]) -> dict[str, dict[str, float]]:
    """Print both variants' top three reasons for the first customer side by side; return each variant's mean
    absolute attribution per column over ``customers`` (the report's), or nothing when a variant cannot explain."""
    try:
        explanations = {variant: explain_rows(url, customers) for variant, url in urls.items()}
    except ExplanationError as err:
        say(f"explanations unavailable: {err}")
        return {}
    say(f"why, for one customer ({', '.join(f'{k}={v}' for k, v in customers[0].items())}):")
    for line in side_by_side({variant: rows[0] for variant, rows in explanations.items()}):
        say(f"  {line}")
    return {variant: mean_absolute_attributions(rows) for variant, rows in explanations.items()}


def _interrupt(signum, frame) -> None:
    """SIGTERM during start-up behaves like Ctrl-C: unwind, stopping what was started."""
    raise KeyboardInterrupt


def run_demo(faulty_challenger: bool = False, report: Path | None = None, worse_challenger: bool = False,
             shifted_traffic: bool = False) -> int:
    """Run the demo to a verdict; returns the exit code (0 once the scheduler decided)."""
    from service.settings import tracking_uri_from_env
    from service.train import sample_labelled_instances

    tracking_uri = tracking_uri_from_env()
    stop = threading.Event()
    # During start-up Ctrl-C/SIGTERM interrupt at once; from the first rollout step they end the wait.
    signal.signal(signal.SIGTERM, _interrupt)
    state_dir().mkdir(parents=True, exist_ok=True)
    # Logs and configs of the started processes; kept only when the demo fails, for diagnosis.
    workdir = Path(tempfile.mkdtemp(prefix="demo-", dir=state_dir()))
    load = None
    try:
        with LocalEnvironment(workdir, tracking_uri, log=say) as env:
            say(f"registry {tracking_uri}: making sure the demo model is registered")
            versions = demo_versions(tracking_uri, faulty_challenger, worse_challenger)
            kind = ("faulty challenger" if faulty_challenger else
                    "less accurate challenger" if worse_challenger else "challenger")
            say(f"champion is version {versions['champion']}, {kind} is version {versions['challenger']}")
            canary = env.start_canary(DEMO_MODEL_NAME, versions[CHAMPION], {CHALLENGER: versions[CHALLENGER]},
                                      rule_groups=[demo_drift_rule_group()] if shifted_traffic else None)
            split = canary.splits[CHALLENGER]
            router = HAProxyRouter(split.socket_path)
            router.set_weight(0)
            instances, truths = sample_labelled_instances(2000, seed=5)
            load = LoadGenerator(
                split.url, instances, rate_per_second=DEMO_RATE_PER_SECOND,
                max_requests=DEMO_RATE_PER_SECOND * DEMO_MAX_SECONDS, max_seconds=DEMO_MAX_SECONDS,
                truths=truths if worse_challenger else None, feedback_delay_seconds=DEMO_FEEDBACK_DELAY_SECONDS,
                transform=shift_monthly_charges if shifted_traffic else None,
            ).start()
            say(f"load: {DEMO_RATE_PER_SECOND} requests/s through {split.url} (at most {DEMO_MAX_SECONDS}s)")
            if worse_challenger:
                say(f"feedback: each customer's true outcome goes to {split.url}/feedback "
                    f"{DEMO_FEEDBACK_DELAY_SECONDS}s after its prediction")
            stop_on_signals(stop)
            progress = Progress(stop)
            plan = QUALITY_DEMO_PLAN if worse_challenger else DEMO_PLAN
            scheduler = Scheduler(
                router, PrometheusProvider(canary.prometheus_url, timeout_seconds=3), plan,
                wait=progress.wait, on_record=progress.on_record,
            )
            result = scheduler.run()
            if result.verdict is Verdict.PROMOTED:
                # The scheduler's caller promotes: the registry's champion alias moves to the challenger's version.
                result.reason = RegistryAliasPromotion(router, tracking_uri, DEMO_MODEL_NAME,
                                                       versions[CHALLENGER]).promote()
            drift = None
            if shifted_traffic:
                say(f"shifted traffic: {SHIFTED_COLUMN} grows {SHIFT_PER_SECOND:.0%} a second from "
                    f"{SHIFT_START_SECONDS}s; waiting (at most {WATCH_SECONDS}s) for {INPUT_DRIFT}")
                drift = watch_drift(canary.prometheus_url, stop, say)
                say(f"drift: {INPUT_DRIFT} fired on {sorted(drift.fired_columns) or 'no column'} "
                    f"{drift.fired_after_seconds}s after the rollout ended; PSI by column {drift.scores}")
            stats = load.stop()
            explained = explain_variants({variant: server.url for variant, server in canary.servers.items()}, instances[:20])
    except KeyboardInterrupt:
        say("interrupted; every process the demo started has been stopped")
        return EXIT_STOPPED
    finally:
        if load is not None:
            load.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    shutil.rmtree(workdir, ignore_errors=True)
    traffic = {
        variant: {"served": stats.served(variant), "failed_5xx": stats.failed(variant),
                  "feedback_recorded": stats.feedback_recorded[variant]}
        for variant in VARIANTS
    }
    say(f"traffic seen by the load generator: {traffic}")
    if report:
        context = {
            "demo": True, "faulty_challenger": faulty_challenger, "worse_challenger": worse_challenger,
            "versions": versions, "feedback_refused": stats.feedback_refused,
            "drift": None if drift is None else {"fired_columns": sorted(drift.fired_columns),
                                                 "fired_after_seconds": drift.fired_after_seconds,
                                                 "psi_by_column": drift.scores},
            "rate_per_second": DEMO_RATE_PER_SECOND, "traffic": traffic,
            "plan": plan.to_dict(),
            "mean_absolute_attribution": explained,
        }
        report_path, chart = write_report(result, report, context)
        say(f"report {report_path}, chart {chart}")
    say(f"verdict: {result.verdict.value} ({result.reason})")
    return EXIT_OK if result.verdict in (Verdict.PROMOTED, Verdict.ROLLED_BACK) else EXIT_STOPPED

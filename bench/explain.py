"""Explanation benchmark: ``/explain`` latency per model kind, and what an ``/explain`` load does to ``/predict``.

``make bench`` runs it after ``bench.serving`` (``python -m bench.explain [--quick]``). It registers the models of
tests/service/explain_models.py and the demo churn pipeline in a private registry (``build/bench/explain-home``),
then for each kind starts ``python -m service serve`` (one worker per core, as ``bench.serving`` does), waits for
its explainer processes, and times ``BENCH_EXPLAIN_CALLS`` sequential one-row ``/explain`` requests (p50, p99).

Then, on the churn server, the issue's bound: ``/predict`` at concurrency 8 (Debian's ``wrk``, the same Lua script as
``bench.serving``) alone, and with ``BENCH_EXPLAIN_CLIENTS`` clients calling ``/explain`` back to back for the same
time, alternated ``BENCH_REPEATS`` times so both are measured close together on a shared machine; the medians of the
p99s are compared with the target (no more than +20%). Results: ``bench/results/explain.json`` and ``explain.md``
(``explain-quick.*`` with ``--quick``: 2 s runs, one repeat, 10 calls per kind). Every load is bounded by its
duration or count; every server is stopped (its process group) in a ``finally``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import threading
import time
import typing as t
from pathlib import Path

import psutil
import requests

from bench.serving import BUILD, RESULTS, ServerSpec, run_wrk, running

TARGET_P99_INCREASE = 0.20
EXPLAINER_READY_SECONDS = 300


def register_models(home: Path) -> tuple[str, dict[str, tuple[str, list[dict[str, t.Any]], dict[str, str]]]]:
    """The registry URI, and kind -> (model URI, one row to explain, extra server environment)."""
    import mlflow

    from service.train import ensure_demo_models, sample_instances
    from tests.service import explain_models

    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
    ensure_demo_models(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    mlflow.set_experiment(experiment_id=mlflow.create_experiment(
        "explain-bench", artifact_location=(home / "artifacts").as_uri()))
    iris, iris_background = explain_models.iris_classifier()
    background = home / "iris-background.csv"
    iris_background.to_csv(background, index=False)
    kinds = {"churn pipeline (Exact, 5 raw columns)": ("models:/customer-churn-classifier@champion",
                                                      sample_instances(1, seed=5), {})}
    for label, model, env in (
        ("linear regressor (LinearExplainer, 10 columns)", explain_models.diabetes_regressor(), {}),
        ("random forest, 3 classes (Exact)", iris, {"MLSERVE_EXPLAIN_BACKGROUND_URI": background.as_uri()}),
        ("LightGBM (TreeExplainer)", explain_models.lightgbm_classifier(), {}),
        ("custom pyfunc (Exact)", explain_models.risk_pyfunc(), {}),
    ):
        kinds[label] = (f"models:/{model.name}/1", model.rows[:1], env)
    return tracking_uri, kinds


def wait_for_explainer(url: str, row: dict[str, t.Any]) -> float:
    started = time.monotonic()
    while time.monotonic() - started < EXPLAINER_READY_SECONDS:
        response = requests.post(f"{url}/explain", json={"instances": [row]}, timeout=60)
        if response.status_code == 200:
            return time.monotonic() - started
        if response.status_code != 503:
            raise RuntimeError(f"/explain answered {response.status_code}: {response.text}")
        time.sleep(1)
    raise RuntimeError(f"the explainer was not ready after {EXPLAINER_READY_SECONDS}s")


def time_explain(url: str, row: dict[str, t.Any], calls: int) -> dict[str, float]:
    """``calls`` sequential one-row explanations: p50 and p99 of those answered, and how many were answered 503 (an
    explainer starved past its timeout on a busy machine is replaced, and answers 503 while the new one starts)."""
    session = requests.Session()
    seconds, unavailable = [], 0
    for _ in range(calls):
        started = time.perf_counter()
        response = session.post(f"{url}/explain", json={"instances": [row]}, timeout=60)
        elapsed = time.perf_counter() - started
        if response.status_code == 503:
            unavailable += 1
            time.sleep(min(float(response.headers.get("Retry-After", 1)), 2.0))
            continue
        response.raise_for_status()
        seconds.append(elapsed)
    if not seconds:
        raise RuntimeError(f"all {calls} /explain calls were answered 503")
    seconds.sort()
    return {"p50_ms": 1000 * statistics.median(seconds),
            "p99_ms": 1000 * seconds[min(len(seconds) - 1, round(0.99 * (len(seconds) - 1)))],
            "calls": calls, "answered_503": unavailable}


def explain_load(url: str, row: dict[str, t.Any], clients: int, seconds: float) -> dict[str, int]:
    """``clients`` threads calling /explain back to back for ``seconds``; status counts."""
    counts: dict[str, int] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        session = requests.Session()
        while time.monotonic() < deadline:
            try:
                status = str(session.post(f"{url}/explain", json={"instances": [row]}, timeout=30).status_code)
            except requests.RequestException:
                status = "error"
            with lock:
                counts[status] = counts.get(status, 0) + 1
            if status == "503":
                time.sleep(0.05)  # a shed client backs off briefly, as Retry-After asks (shortened)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 60)
    return counts


def predict_p99(url: str, row: dict[str, t.Any], duration: float, workdir: Path) -> dict[str, t.Any]:
    counters = run_wrk(f"{url}/predict", {"instances": [row]}, 8, duration, workdir)
    return {"p99_ms": counters["p99_us"] / 1000, "p50_ms": counters["p50_us"] / 1000,
            "rps": counters["requests"] / max(counters["duration_us"] / 1e6, 1e-3), "non_2xx": counters["status"]}


def server_spec(label: str, model_uri: str, tracking_uri: str, workers: int, env: dict[str, str]) -> ServerSpec:
    return ServerSpec(
        key="explain-" + label.split()[0].lower(), label=label,
        command=lambda port: [sys.executable, "-m", "service", "serve", "--port", str(port), "--model-uri",
                              model_uri, "--workers", str(workers)],
        ready_path="/readyz", endpoints=[],
        env={"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true", **env},
    )


def markdown(meta: dict[str, t.Any], latency: dict[str, dict[str, float]], contention: dict[str, t.Any]) -> str:
    lines = [f"# /explain benchmark ({meta['date']})", "", f"Machine: {meta['machine']}; {meta['workers']} "
             f"server worker(s), one explainer process each; {meta['calls']} sequential one-row calls per kind.", "",
             "| model kind | explainer ready after (s) | /explain p50 (ms) | /explain p99 (ms) | answered 503 |",
             "|---|---|---|---|---|"]
    for label, row in latency.items():
        lines.append(f"| {label} | {row['ready_s']:.1f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
                     f"{row['answered_503']} |")
    alone, loaded = contention["alone_p99_ms"], contention["loaded_p99_ms"]
    verdict = "met" if contention["increase"] <= TARGET_P99_INCREASE else "NOT met"
    lines += ["", f"/predict at c=8 on the churn server, {contention['duration_s']:g} s runs, median of "
              f"{contention['repeats']} alternated pairs:", "",
              "| | /predict p50 (ms) | /predict p99 (ms) | /predict req/s |", "|---|---|---|---|",
              f"| alone | {contention['alone_p50_ms']:.2f} | {alone:.2f} | {contention['alone_rps']:.0f} |",
              f"| with {contention['clients']} /explain clients | {contention['loaded_p50_ms']:.2f} | {loaded:.2f} | "
              f"{contention['loaded_rps']:.0f} |", "",
              f"p99 change: {100 * contention['increase']:+.1f}% (target: at most +{100 * TARGET_P99_INCREASE:.0f}%: "
              f"{verdict}). /explain answers during the loaded runs: {contention['explain_statuses']}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.explain", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run; writes explain-quick.*")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench: Debian's wrk is not installed (make setup installs it)", file=sys.stderr)
        return 2
    duration = float(os.environ.get("BENCH_DURATION") or (3 if args.quick else 10))
    repeats = int(os.environ.get("BENCH_REPEATS") or (1 if args.quick else 3))
    calls = int(os.environ.get("BENCH_EXPLAIN_CALLS") or (10 if args.quick else 50))
    clients = int(os.environ.get("BENCH_EXPLAIN_CLIENTS") or 4)
    workers = os.cpu_count() or 1
    load_at_start = os.getloadavg()[0]  # the machine is shared: the load others put on it belongs with the result
    RESULTS.mkdir(parents=True, exist_ok=True)
    workdir = BUILD / "explain-run"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    tracking_uri, kinds = register_models(BUILD / "explain-home")
    latency: dict[str, dict[str, float]] = {}
    contention: dict[str, t.Any] = {}
    for label, (model_uri, rows, env) in kinds.items():
        spec = server_spec(label, model_uri, tracking_uri, workers, env)
        with running(spec, workdir) as (url, _process, _startup):
            ready_s = wait_for_explainer(url, rows[0])
            # Both workers' explainers: a request lands on either; warm the other one too.
            for _ in range(2 * workers):
                wait_for_explainer(url, rows[0])
            latency[label] = {"ready_s": ready_s, **time_explain(url, rows[0], calls)}
            print(f"  {label}: /explain p50 {latency[label]['p50_ms']:.1f} ms, p99 {latency[label]['p99_ms']:.1f} ms",
                  flush=True)
            if contention:
                continue
            alone_runs, loaded_runs, statuses = [], [], {}
            predict_p99(url, rows[0], 1, workdir)  # warm-up
            for _ in range(repeats):
                alone_runs.append(predict_p99(url, rows[0], duration, workdir))
                load = threading.Thread(target=lambda: statuses.update(
                    {k: statuses.get(k, 0) + v for k, v in explain_load(url, rows[0], clients, duration + 1).items()}))
                load.start()
                time.sleep(0.5)  # the explain load is under way before /predict is measured
                loaded_runs.append(predict_p99(url, rows[0], duration, workdir))
                load.join(timeout=duration + 90)
            contention = {
                "duration_s": duration, "repeats": repeats, "clients": clients,
                **{f"alone_{key}": statistics.median(run[key] for run in alone_runs) for key in ("p50_ms", "p99_ms",
                                                                                               "rps")},
                **{f"loaded_{key}": statistics.median(run[key] for run in loaded_runs) for key in ("p50_ms", "p99_ms",
                                                                                                 "rps")},
                "explain_statuses": statuses,
            }
            contention["increase"] = contention["loaded_p99_ms"] / contention["alone_p99_ms"] - 1
            print(f"  /predict c=8 p99 alone {contention['alone_p99_ms']:.2f} ms, with /explain load "
                  f"{contention['loaded_p99_ms']:.2f} ms ({100 * contention['increase']:+.1f}%)", flush=True)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
                   f"{platform.system()} {platform.release()}, Python {platform.python_version()}, load average "
                   f"{load_at_start:.1f} at the start and {os.getloadavg()[0]:.1f} at the end",
        "workers": workers, "calls": calls, "quick": args.quick,
    }
    stem = "explain-quick" if args.quick else "explain"
    (RESULTS / f"{stem}.json").write_text(json.dumps(
        {"meta": meta, "latency": latency, "predict_under_explain_load": contention}, indent=2) + "\n")
    report = markdown(meta, latency, contention)
    (RESULTS / f"{stem}.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

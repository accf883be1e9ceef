"""The serving benchmark's own logic, without starting servers: target verdicts, the report, the wrk script."""

from __future__ import annotations

import re

import pytest

from bench.serving import (
    OUR_PROTOCOLS,
    WRK_SCRIPT,
    Point,
    Startup,
    evaluate_targets,
    failures,
    markdown_report,
    overload_summary,
)


def point(endpoint: str, concurrency: int, rps: float, p99_ms: float = 1.0, errors: int = 0,
          cold_start_s: float = 2.0) -> Point:
    return Point(endpoint=endpoint, label=endpoint, concurrency=concurrency, rps=rps, p50_ms=p99_ms / 2,
                 p99_ms=p99_ms, errors=errors, non_2xx=errors, socket_errors=0, requests=int(rps * 10),
                 cold_start_s=cold_start_s, rss_mb=100.0)


ANCHORS64 = {"mlflow": 250.0, "mlserver": 200.0, "kserve": 300.0, "reference": 400.0}


def run(ours64: float = 1200, p99_c64: float = 60, mlflow_p99: float = 600, errors: int = 0, growth: float = 1.0,
        cold: float = 2.0, shed_p99: float = 20, accepted_p99: float = 100, no_retry_after: int = 0) -> dict[str, bool]:
    points = [point(key, 64, ours64, p99_c64 if key == "mlserve_predict" else 50) for key in OUR_PROTOCOLS]
    points += [point(key, 64, rps, mlflow_p99 if key == "mlflow" else 300) for key, rps in ANCHORS64.items()]
    points.append(point("mlserve_grpc", 1, 400, 3, errors))
    rss = {"duration_s": 120, "growth_percent": growth}
    overload = {"requests": 1000, "accepted": 600, "shed": 400, "other": 0, "shed_without_retry_after": no_retry_after,
                "shed_p99_ms": shed_p99, "accepted_p99_ms": accepted_p99, "baseline_p99_ms": p99_c64,
                "rss_growth_percent": 0.5}
    startups = {"mlserve (BentoML)": Startup(cold, 1.0), "mlflow models serve": Startup(3.0, 1.0),
                "reference": Startup(2.5, None)}
    return {re.sub(r" \([^)]*\)", "", target["target"]): target["met"]
            for target in evaluate_targets(points, rss, overload, startups)}


def test_every_target_met_when_the_numbers_are_good():
    verdicts = run()
    # 4 protocols x 4 anchors, the p99 against mlflow's, errors, 3 overload targets, RSS, cold start.
    assert len(verdicts) == 16 + 7 and all(verdicts.values()), verdicts


@pytest.mark.parametrize(
    ("change", "failed_targets"),
    [
        ({"ours64": 900}, 4),  # 3.6x mlflow on each of the four protocols (and still 2x or more the others)
        ({"p99_c64": 250}, 1),  # more than a third of mlflow's 600 ms (and 100 <= 2 x 250 still holds)
        ({"errors": 3}, 1),
        ({"growth": 7.5}, 1),
        ({"cold": 2.6}, 1),  # slower than the reference's 2.5 s
        ({"shed_p99": 150}, 1),
        ({"no_retry_after": 1}, 1),
        ({"accepted_p99": 130}, 1),  # over twice the c=64 p99 of 60 ms
    ],
)
def test_a_missed_target_is_reported_as_missed(change, failed_targets):
    verdicts = run(**change)
    assert sum(not met for met in verdicts.values()) == failed_targets, verdicts


def test_no_ratio_is_computed_against_an_anchor_that_answered_errors():
    points = [point("mlserve_predict", 64, 1200), point("mlflow", 64, 250, errors=12)]
    ratios = [target for target in evaluate_targets(points, None) if target["target"].startswith("c=64 throughput")]

    assert [(target["measured"], target["met"]) for target in ratios] == [(None, None)]
    assert failures(points, {"KServe": "answered 500"}) == [
        "KServe refused the benchmark request: answered 500", "mlflow at c=64: 12 errors (12 non-2xx, 0 socket)"]


def test_overload_results_split_into_accepted_shed_and_other():
    results = [{"code": 200, "latency": 80e6, "headers": {}}, {"code": 200, "latency": 120e6, "headers": {}},
               {"code": 503, "latency": 2e6, "headers": {"Retry-After": ["1"]}},
               {"code": 503, "latency": 150e6, "headers": {}}, {"code": 0, "latency": 10e9, "headers": {}}]

    summary = overload_summary(results)

    assert (summary["accepted"], summary["shed"], summary["other"]) == (2, 2, 1)
    assert summary["shed_without_retry_after"] == 1 and summary["shed_over_target"] == 1
    assert summary["accepted_p99_ms"] == 120.0


def test_report_has_a_row_per_point_and_names_skipped_servers():
    points = [point("mlserve_predict", 1, 900), point("reference", 1, 1800)]
    meta = {"date": "today", "machine": "2 cores", "duration_s": 10, "warmup_s": 3, "workers": 2}
    report = markdown_report(meta, points, evaluate_targets(points, None), None, {"MLServer": "cannot install"})

    assert "| mlserve_predict | 1 | 900 |" in report and "| reference | 1 | 1800 |" in report
    assert "skipped: cannot install" in report


def test_report_splits_each_cold_start_at_the_first_worker_and_shows_the_models_own_cost():
    from bench.serving import Startup

    points = [point("mlserve_predict", 1, 900)]
    meta = {"date": "today", "machine": "2 cores", "duration_s": 10, "warmup_s": 3, "workers": 2}
    report = markdown_report(meta, points, evaluate_targets(points, None), None, {},
                             startups={"mlserve": Startup(6.25, 2.75), "reference": Startup(4.0, None)},
                             model_alone={"calls": 2000, "p50_ms": 3.9, "p99_ms": 5.2})

    assert "| mlserve | 6.25 | 2.75 | 3.50 |" in report
    assert "| reference | 4.00 | (no workers) | |" in report
    assert "p50 3.90 ms, p99 5.20 ms" in report


def test_wrk_script_posts_json_and_prints_one_summary_line():
    assert 'wrk.method = "POST"' in WRK_SCRIPT and "application/json" in WRK_SCRIPT
    assert "BENCH_JSON" in WRK_SCRIPT and "e.status" in WRK_SCRIPT


def test_ghz_report_becomes_the_wrk_counters():
    from bench.serving import ghz_counters

    report = {"count": 1200, "total": 10_000_000_000, "slowest": 30_000_000,
              "latencyDistribution": [{"percentage": 50, "latency": 2_500_000}, {"percentage": 99, "latency": 9_000_000}],
              "statusCodeDistribution": {"OK": 1195, "Unavailable": 3, "DeadlineExceeded": 2}}

    assert ghz_counters(report) == {"requests": 1200, "duration_us": 10_000_000, "p50_us": 2500, "p99_us": 9000,
                                    "max_us": 30000, "connect": 0, "read": 0, "write": 0, "timeout": 2, "status": 3}


def test_the_grpc_body_is_the_benchmark_row_as_a_model_infer_request():
    from google.protobuf import json_format
    from tritonclient.grpc import service_pb2 as pb

    from bench.serving import ROW, model_infer_body
    from service.grpc_tensors import infer_request_body

    request = json_format.ParseDict(model_infer_body(), pb.ModelInferRequest())

    assert {tensor["name"]: tensor["data"] for tensor in infer_request_body(request)["inputs"]} == {
        name: [value] for name, value in ROW.items()}


def test_protoset_names_the_model_infer_rpc(tmp_path):
    from google.protobuf import descriptor_pb2

    from bench.serving import MODEL_INFER, protoset

    files = descriptor_pb2.FileDescriptorSet.FromString(protoset(tmp_path / "oip.protoset").read_bytes())
    service, _, method = MODEL_INFER.rpartition(".")
    services = {f"{f.package}.{s.name}": [m.name for m in s.method] for f in files.file for s in f.service}
    assert method in services[service]


def test_rss_is_sampled_from_a_real_process_tree_and_growth_needs_enough_samples():
    import subprocess
    import sys

    from bench.serving import rss_growth, sampling_rss

    # A process that holds ~40 MiB more after two seconds: the sampler sees its tree grow.
    code = "import time; time.sleep(2); b = bytearray(40 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(3)"
    process = subprocess.Popen([sys.executable, "-c", code])
    try:
        with sampling_rss(process) as samples:
            process.wait(timeout=30)
    finally:
        process.kill()
    assert len(samples) >= 4
    assert max(rss for _, rss in samples) - min(rss for _, rss in samples) > 30 * 2**20
    baseline, final = rss_growth([(0.0, 100), (1.0, 100), (2.0, 100), (3.0, 150), (4.0, 150), (5.0, 150)], 1.0)
    assert (baseline, final) == (100, 150)
    assert rss_growth([(0.0, 1), (1.0, 1)], 0.0) is None

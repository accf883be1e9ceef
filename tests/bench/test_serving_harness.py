"""The serving benchmark's own logic, without starting servers: target verdicts, the report, the wrk script."""

from __future__ import annotations

import re

import pytest

from bench.serving import WRK_SCRIPT, Point, evaluate_targets, markdown_report


def point(endpoint: str, concurrency: int, rps: float, p99_ms: float = 1.0, errors: int = 0,
          cold_start_s: float = 2.0) -> Point:
    return Point(endpoint=endpoint, label=endpoint, concurrency=concurrency, rps=rps, p50_ms=p99_ms / 2,
                 p99_ms=p99_ms, errors=errors, non_2xx=errors, socket_errors=0, requests=int(rps * 10),
                 cold_start_s=cold_start_s, rss_mb=100.0)


def run(ours64: float = 4000, p99_c1: float = 3, p99_c64: float = 40, errors: int = 0, growth: float = 1.0,
        cold: float = 2.0) -> dict[str, bool]:
    points = [
        point("mlserve_predict", 1, 900, p99_c1, cold_start_s=cold),
        point("mlserve_predict", 64, ours64 / 2, 90, cold_start_s=cold),
        point("mlserve_predict_batch", 1, 800, 4, cold_start_s=cold),
        point("mlserve_predict_batch", 64, ours64, p99_c64, errors, cold_start_s=cold),
        point("reference", 64, 1900), point("mlflow", 64, 130), point("mlserver", 64, 1000),
    ]
    rss = {"duration_s": 120, "growth_percent": growth}
    return {re.sub(r" \([^)]*\)", "", target["target"]): target["met"] for target in evaluate_targets(points, rss)}


def test_every_target_met_when_the_numbers_are_good():
    verdicts = run()
    assert len(verdicts) == 8 and all(verdicts.values()), verdicts


@pytest.mark.parametrize(
    ("change", "failed_target"),
    [
        ({"ours64": 3000}, "c=64 throughput / bare reference"),  # 1.6x the reference
        ({"p99_c1": 6}, "p99 at c=1, mlserve /predict"),
        ({"p99_c64": 80}, "p99 at c=64, mlserve_predict_batch"),
        ({"errors": 3}, "errors, mlserve"),
        ({"growth": 7.5}, "RSS growth after warm-up over 120s"),
        ({"cold": 4.0}, "cold start to ready, mlserve"),
    ],
)
def test_a_missed_target_is_reported_as_missed(change, failed_target):
    verdicts = run(**change)
    assert verdicts[failed_target] is False
    assert sum(not met for met in verdicts.values()) == 1, verdicts


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

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


def test_wrk_script_posts_json_and_prints_one_summary_line():
    assert 'wrk.method = "POST"' in WRK_SCRIPT and "application/json" in WRK_SCRIPT
    assert "BENCH_JSON" in WRK_SCRIPT and "e.status" in WRK_SCRIPT

"""Rollout reports: the run as JSON (every step, every measurement, the verdict) and a PNG chart beside it.

The chart has three panels over time since the rollout started: the challenger's weight, the error
rate of each variant, and the p95 latency of each variant; a fourth, when ground truth reached the
rollout through `/feedback`, shows each variant's quality (accuracy, or the mean loss it was judged on); another, when
the label-free gate judged, shows how much the challenger's predictions differ from the champion's (the largest share
difference with its always-valid range, and the minimum effect that may act). It uses matplotlib's Agg backend, so it
renders on machines without a display.
"""

from __future__ import annotations

import json
from pathlib import Path

from rollout.scheduler import RolloutResult


def chart_path(report_path: Path) -> Path:
    """The PNG that sits beside a report: `run.json` -> `run.png`."""
    return Path(report_path).with_suffix(".png")


def write_report(result: RolloutResult, report_path: Path, context: dict | None = None) -> tuple[Path, Path]:
    """Write the JSON report and its chart; returns both paths."""
    report_path = Path(report_path)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    data = {**result.to_dict(), **({"context": context} if context else {})}
    report_path.write_text(json.dumps(data, indent=2) + "\n")
    png = chart_path(report_path)
    render_chart(result, png)
    return report_path, png


def _series(result: RolloutResult, role: str, key: str):
    times, values = [], []
    start = result.records[0].time
    for record in result.records:
        sample = getattr(record.measurement, role, None) if record.measurement else None
        if sample is None:
            continue
        value = sample.error_rate if key == "error_rate" else sample.p95_seconds
        if value is None:
            continue
        times.append(record.time - start)
        values.append(value * 100 if key == "error_rate" else value * 1000)
    return times, values


def _quality_series(result: RolloutResult) -> tuple[str | None, dict[str, tuple[list[float], list[float]]]]:
    """Per variant, (seconds since start, score) of every measurement that judged feedback; and the metric."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    metric = None
    start = result.records[0].time if result.records else 0.0
    for record in result.records:
        for sample in (record.measurement.quality if record.measurement else ()):
            if sample.score is None:
                continue
            metric = sample.metric
            times, values = series.setdefault(sample.variant, ([], []))
            times.append(record.time - start)
            values.append(sample.score * 100 if metric == "accuracy" else sample.score)
    return metric, series


def _divergence_series(result: RolloutResult) -> dict[str, list[float]]:
    """Seconds since start, and the largest share difference (points) with its bounds, of every look the gate judged."""
    series: dict[str, list[float]] = {"times": [], "estimate": [], "lower": [], "upper": []}
    start = result.records[0].time if result.records else 0.0
    for record in result.records:
        divergence = record.measurement.divergence if record.measurement else None
        largest = divergence.largest if divergence is not None else None
        if largest is None:
            continue
        series["times"].append(record.time - start)
        for key in ("estimate", "lower", "upper"):
            series[key].append(getattr(largest, key) * 100)
    return series


def render_chart(result: RolloutResult, png_path: Path) -> None:
    """Draw weight, error rate and p95 latency per variant over time into `png_path`, and quality when judged."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    metric, quality = _quality_series(result)
    divergence = _divergence_series(result)
    rows = 3 + bool(quality) + bool(divergence["times"])
    fig, axes = plt.subplots(rows, 1, figsize=(9, 2.7 * rows), sharex=True)
    ax_weight, ax_errors, ax_latency = axes[:3]
    if divergence["times"]:
        ax_divergence = axes[-1]
        ax_divergence.plot(divergence["times"], divergence["estimate"], marker="o", color="tab:red",
                           label="challenger - champion")
        ax_divergence.fill_between(divergence["times"], divergence["lower"], divergence["upper"], color="tab:red",
                                   alpha=0.2, label="always-valid range")
        ax_divergence.axhline(0, color="grey", linewidth=0.8)
        ax_divergence.set_ylabel("prediction share\ndifference (points)")
        ax_divergence.legend(loc="upper left")
    if quality:
        ax_quality = axes[3]
        for role, color in (("champion", "tab:blue"), ("challenger", "tab:orange")):
            if role in quality:
                ax_quality.plot(*quality[role], marker="o", label=role, color=color)
        ax_quality.set_ylabel("accuracy (%)" if metric == "accuracy" else f"mean {metric}")
        ax_quality.legend(loc="upper left")
    if result.records:
        start = result.records[0].time
        times = [record.time - start for record in result.records]
        ax_weight.step(times, [record.weight for record in result.records], where="post", color="tab:purple")
        for role, color in (("champion", "tab:blue"), ("challenger", "tab:orange")):
            ax_errors.plot(*_series(result, role, "error_rate"), marker="o", label=role, color=color)
            ax_latency.plot(*_series(result, role, "p95"), marker="o", label=role, color=color)
    verdict = result.verdict.value if result.verdict else "in progress"
    ax_weight.set_title(f"rollout: {verdict}")
    ax_weight.set_ylabel("challenger weight (%)")
    ax_weight.set_ylim(-5, 105)
    ax_errors.set_ylabel("error rate (%)")
    ax_errors.set_ylim(bottom=0)
    ax_latency.set_ylabel("p95 latency (ms)")
    axes[-1].set_xlabel("seconds since start")
    for axis in axes:
        axis.grid(alpha=0.3)
    if ax_errors.get_legend_handles_labels()[0]:
        ax_errors.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)

"""Live profiles of what the server predicts: how often each variant answers each output, as Prometheus counters.

`model_prediction_outputs_total{model_name, model_version, variant, output}` counts every scored row by the output it
got: the predicted class for classifiers (the label, the positive class when its probability is at least 0.5, or the
most probable class), so Prometheus can sum it over replicas and any window. The rollout's label-free gate
(`rollout.divergence`) compares these counts between champion and challenger. Regression values are not counted yet
(their bins need the model's reference profile).

`model_input_bin_rows_total{..., column, bin}` counts every valid input row into the bins of the served version's
reference profile (`service.profiles`), and `model_input_reference_share{..., column, bin}` exports the profile's
shares, so Prometheus computes each column's drift score (`infra.drift`). No row data is kept: one counter per (variant, output), a bounded
number of outputs per worker (`MAX_OUTPUTS`; the rest count as `other`).

This module imports nothing heavy: the rollout reads its metric names from here.
"""

from __future__ import annotations

import logging
import typing as t

logger = logging.getLogger("mlserve.service")

OUTPUTS_METRIC = "model_prediction_outputs_total"
OUTPUT_LABEL = "output"
INPUT_BINS_METRIC = "model_input_bin_rows_total"
REFERENCE_SHARE_METRIC = "model_input_reference_share"
# A classifier with more classes than this (or a model answering free text) would make a series per answer.
MAX_OUTPUTS = 50
OTHER_OUTPUT = "other"
# Output modes of service.predictor (kept as strings so this module stays light).
_PREDICT, _POSITIVE_PROBABILITY, _CLASS_PROBABILITIES = "predict", "probability", "predict_proba"


def output_name(value: t.Any) -> str:
    """How a predicted class is written in the `output` label: 1, 1.0 and True are all "1"."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def predicted_outputs(output: str, raw: t.Any, classes: tuple[t.Any, ...]) -> dict[str, int] | None:
    """{output: rows} for one prediction, or None when its outputs are not classes (a regressor's values)."""
    import numpy as np

    values = np.asarray(raw)
    if output == _POSITIVE_PROBABILITY and len(classes) == 2:
        positive = int(np.count_nonzero(values >= 0.5))
        counts = {output_name(classes[1]): positive, output_name(classes[0]): int(values.size) - positive}
        return {name: rows for name, rows in counts.items() if rows}
    if output == _CLASS_PROBABILITIES and values.ndim == 2 and classes:
        labels = np.asarray(classes, dtype=object)[values.argmax(axis=1)]
    elif output == _PREDICT and values.ndim == 1:
        if values.dtype.kind == "f" and not np.all(np.mod(values, 1) == 0):
            return None  # continuous values: a regressor
        if values.dtype.kind not in "biufUSOb":
            return None
        labels = values
    else:
        return None
    try:
        names, rows = np.unique(labels, return_counts=True)
    except TypeError:  # labels of mixed types do not sort: name them first
        names, rows = np.unique(np.asarray([output_name(label) for label in labels], dtype=str), return_counts=True)
    counts: dict[str, int] = {}
    for name, count in zip(names, rows):
        counts[output_name(name)] = counts.get(output_name(name), 0) + int(count)
    return counts


class OutputMetrics:
    """The outputs counter, created through a metrics module such as `bentoml.metrics` (multiprocess-safe)."""

    def __init__(self, metrics: t.Any, labelnames: list[str]):
        self.counter = metrics.Counter(
            name=OUTPUTS_METRIC,
            documentation="Scored rows by the output the model gave them (the predicted class), per variant",
            labelnames=[*labelnames, OUTPUT_LABEL],
        )
        self._seen: set[str] = set()

    def start(self, labels: dict[str, str], classes: t.Iterable[t.Any]) -> None:
        """Create each known class's series at 0, so "never predicted" reads as 0 rather than as missing."""
        for value in classes:
            self._count(labels, output_name(value), 0)

    def record(self, labels: dict[str, str], output: str, raw: t.Any, classes: tuple[t.Any, ...]) -> None:
        """Count one prediction's rows by output; nothing for outputs that are not classes."""
        counts = predicted_outputs(output, raw, classes)
        for name, rows in (counts or {}).items():
            self._count(labels, name, rows)

    def observer(self, labels: dict[str, str]) -> t.Callable[[t.Any, t.Any], None]:
        """A `ServedModel.on_prediction` hook counting each answer's rows; counting never fails a prediction."""

        def observe(model_input: t.Any, prediction: t.Any) -> None:
            try:
                self.record(labels, prediction.output, prediction.raw, prediction.classes)
            except Exception:  # an output we cannot name is not worth a failed request
                logger.debug("could not count the outputs of a prediction", exc_info=True)

        return observe

    def _count(self, labels: dict[str, str], name: str, rows: int) -> None:
        if name not in self._seen:
            if len(self._seen) >= MAX_OUTPUTS:
                name = OTHER_OUTPUT
            else:
                self._seen.add(name)
        self.counter.labels(**labels, **{OUTPUT_LABEL: name}).inc(rows)


class InputMetrics:
    """Live input profiles: every valid row counted into its reference bin, per variant and column, and the
    reference shares themselves as gauges, so Prometheus can compare the two (`infra.drift`)."""

    def __init__(self, metrics: t.Any, labelnames: list[str]):
        self.rows = metrics.Counter(
            name=INPUT_BINS_METRIC,
            documentation="Valid input rows by column and reference-profile bin (numeric quantile bin or category)",
            labelnames=[*labelnames, "column", "bin"],
        )
        self.reference = metrics.Gauge(
            name=REFERENCE_SHARE_METRIC,
            documentation="Share of the model's reference rows in each column's bin (the reference profile)",
            labelnames=[*labelnames, "column", "bin"],
            multiprocess_mode="max",
        )

    def start(self, labels: dict[str, str], profile: t.Any) -> None:
        """Export the profile's shares and create every live bin's series at 0."""
        for column in profile.columns:
            for name, share in column.shares.items():
                self.reference.labels(**labels, column=column.name, bin=name).set(share)
                self.rows.labels(**labels, column=column.name, bin=name)

    def observer(self, labels: dict[str, str], profile: t.Any) -> t.Callable[[t.Any, t.Any], None]:
        """A `ServedModel.on_prediction` hook counting each valid input row's columns into the profile's bins."""
        columns = profile.columns

        def observe(model_input: t.Any, prediction: t.Any) -> None:
            if not hasattr(model_input, "columns"):
                return  # tensors: no columns to profile
            try:
                # One conversion of the whole frame: pandas' per-column access costs more than the binning.
                positions = {str(name): index for index, name in enumerate(model_input.columns)}
                values = model_input.to_numpy(dtype=object)
                for column in columns:
                    if (index := positions.get(column.name)) is not None:
                        for name, rows in column.bin_counts(values[:, index]).items():
                            self.rows.labels(**labels, column=column.name, bin=name).inc(rows)
            except Exception:  # a column we cannot bin is not worth a failed request
                logger.debug("could not count the input bins of a request", exc_info=True)

        return observe

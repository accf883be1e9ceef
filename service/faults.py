"""A deliberately broken pipeline step, for demonstrating rollbacks with a challenger that fails in production.

``RowHashFault`` passes rows through unchanged but raises ``InjectedModelFault`` for any row whose content
hashes into a fixed fraction of the hash space. The choice depends only on the row's values, so the same
customer always fails and every process agrees, which makes a faulty challenger's error rate reproducible.
"""

from __future__ import annotations

import hashlib
import numbers
import typing as t

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin


class InjectedModelFault(RuntimeError):
    """Raised by a faulty demo model for rows it was built to fail on."""


def row_fingerprint(row: t.Sequence[t.Any]) -> float:
    """A stable number in [0, 1) for a row's values (ints and floats of equal value hash alike)."""
    parts = [repr(float(value)) if isinstance(value, numbers.Number) else str(value) for value in row]
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class RowHashFault(TransformerMixin, BaseEstimator):
    """Identity transform that raises for the ``fraction`` of rows whose fingerprint falls below it."""

    def __init__(self, fraction: float = 0.08) -> None:
        self.fraction = fraction

    def fit(self, X: t.Any, y: t.Any = None) -> RowHashFault:
        return self

    def fit_transform(self, X: t.Any, y: t.Any = None, **fit_params: t.Any) -> t.Any:
        # Training must succeed; the fault only shows when the model serves.
        return X

    def fails_on(self, row: t.Sequence[t.Any]) -> bool:
        """Whether this step raises for a row given in feature order."""
        return row_fingerprint(row) < self.fraction

    def transform(self, X: t.Any) -> t.Any:
        rows = np.asarray(X, dtype=object)
        failing = [index for index, row in enumerate(rows) if self.fails_on(row)]
        if failing:
            raise InjectedModelFault(
                f"injected fault: this model version fails on {len(failing)} of {len(rows)} rows "
                f"(first at row {failing[0]})"
            )
        return X

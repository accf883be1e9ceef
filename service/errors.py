"""The model server's exceptions: a model that cannot be served, a request that cannot be answered.

``InvalidInput`` carries the HTTP status (4xx) and the message every protocol returns, so the REST routes, the
MLflow scoring protocol and a gRPC server give a client the same words for the same mistake.
"""

from __future__ import annotations

import typing as t


class ModelLoadError(RuntimeError):
    """The configured model could not be resolved or loaded; the server must not start."""


class InvalidInput(ValueError):
    """A client's request cannot be scored: ``status`` (4xx), a message naming the problem, optional details.

    ``detail`` lists ``{"row", "feature", "problem"}`` entries when rows or columns are at fault.
    """

    def __init__(self, message: str, status: int = 400, detail: list[dict[str, t.Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.detail = detail or []

    def body(self) -> dict[str, t.Any]:
        """The JSON error body: ``{"error": message, "detail": [...]}`` (detail only when there is one)."""
        body: dict[str, t.Any] = {"error": self.message}
        if self.detail:
            body["detail"] = self.detail
        return body


class ModelFailure(RuntimeError):
    """The model raised while scoring valid input: the server's fault, answered 5xx."""

"""The model server's exceptions: a model that cannot be served, a request that cannot be answered.

``InvalidInput`` carries the HTTP status (4xx) and the message every protocol returns, so the REST routes, the
MLflow scoring protocol and a gRPC server give a client the same words for the same mistake.
"""

from __future__ import annotations

import typing as t


class ModelLoadError(RuntimeError):
    """The configured model could not be resolved or loaded; the server must not start."""


# MLflow's error code for an HTTP status, as mlflow/exceptions.py's HTTP_STATUS_TO_ERROR_CODE has it (MLflow 3.17.2);
# a 4xx it has no code for (408, 413, 415, 422) is the client's request at fault: BAD_REQUEST.
MLFLOW_ERROR_CODES = {400: "BAD_REQUEST", 404: "ENDPOINT_NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL_ERROR",
                      503: "TEMPORARILY_UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def mlflow_error_code(status: int) -> str:
    """The ``error_code`` MLflow's scoring server would give an answer of ``status``."""
    return MLFLOW_ERROR_CODES.get(status, "BAD_REQUEST" if 400 <= status < 500 else "INTERNAL_ERROR")


def mlflow_error_body(message: str, status: int, error_code: str | None = None,
                      detail: list[dict[str, t.Any]] | None = None) -> dict[str, t.Any]:
    """An ``/invocations`` error body: MLflow's ``{"error_code", "message"}`` (what its clients read, see
    ``MlflowException.serialize_as_json``), plus our ``error`` and ``detail`` (the rows and features at fault)."""
    body: dict[str, t.Any] = {"error_code": error_code or mlflow_error_code(status), "message": message,
                              "error": message}
    if detail:
        body["detail"] = detail
    return body


def route_error_body(path: str, message: str, status: int) -> dict[str, t.Any]:
    """The body of an error a middleware answers (415, 413, 408, 503): with MLflow's fields on ``/invocations``, so
    that every error of that route reads like ``mlflow models serve``'s; ``{"error": message}`` elsewhere."""
    return mlflow_error_body(message, status) if path == "/invocations" else {"error": message}


class InvalidInput(ValueError):
    """A client's request cannot be scored: ``status`` (4xx), a message naming the problem, optional details.

    ``detail`` lists ``{"row", "feature", "problem"}`` entries when rows or columns are at fault. ``error_code`` is
    the code MLflow's scoring server gives the same mistake when it is not the one for the status (a column the
    signature requires is ``INVALID_PARAMETER_VALUE`` in MLflow, a 400 nonetheless).
    """

    def __init__(self, message: str, status: int = 400, detail: list[dict[str, t.Any]] | None = None,
                 error_code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.detail = detail or []
        self.error_code = error_code or mlflow_error_code(status)

    def body(self) -> dict[str, t.Any]:
        """The JSON error body: ``{"error": message, "detail": [...]}`` (detail only when there is one)."""
        body: dict[str, t.Any] = {"error": self.message}
        if self.detail:
            body["detail"] = self.detail
        return body

    def mlflow_body(self) -> dict[str, t.Any]:
        """The error body of ``/invocations``: MLflow's fields and ours (``mlflow_error_body``)."""
        return mlflow_error_body(self.message, self.status, self.error_code, self.detail)


class ModelFailure(RuntimeError):
    """The model raised while scoring valid input: the server's fault, answered 5xx."""

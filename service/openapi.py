"""The OpenAPI document as the server really answers: every error a prediction route can give, with its body.

BentoML generates ``/docs.json`` from the service (``_bentoml_sdk/service/openapi.py``: ``generate_spec``) and
documents only 200, 400, 404 and 500 for its own routes, with ``detail`` as a string, and FastAPI documents 200 and
422 for the mounted OIP and scoring apps. The server also answers 400 (a body that is not JSON), 404 (a model name it
does not serve), 408 (a body too slow), 413 (too large), 415 (a content type it cannot read), 422 (rows the model
refuses), 500 (the model failed) and 503 with ``Retry-After`` (overload). This ASGI middleware rewrites the document
on its way out so that a generated client, a gateway validating against it, or schemathesis sees those answers.
"""

from __future__ import annotations

import json
import typing as t

from service.admission import App, Message, Receive, Scope, Send, accepted_media_types

DOCUMENT_PATH = "/docs.json"
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "what was wrong and what would be accepted"},
        "detail": {"description": "per row and column problems, when there are several"},
        "error_code": {"type": "string", "description": "on /invocations: MLflow's error code (BAD_REQUEST, ...)"},
        "message": {"type": "string", "description": "on /invocations: the error, where MLflow's clients read it"},
    },
}
ERRORS = {
    "400": "the body is not what the route reads (not JSON, wrong shape, invalid rows)",
    "404": "no such model: the server serves one, named in the path's enum",
    "408": "the body did not arrive in time (MLSERVE_BODY_TIMEOUT_SECONDS)",
    "413": "the body or the number of rows is over the limit",
    "415": "the Content-Type is not one the route reads",
    "422": "the model refused the rows",
    "500": "the model failed",
    "503": "overloaded: retry after the Retry-After header's seconds",
}

# /explain and /v2/models/{name}/explain (service.explain_pool) answer 409 when the model has no background data.
EXPLAIN_CONFLICT = "no background data to explain against: set explain.backgroundUri or log an input example"

ERROR_REF = {"$ref": "#/components/schemas/MlserveError"}
# A row the model refuses fails the whole merged batch of /predict_batch, and BentoML's batching answers each request
# of that batch with the error in a one-element list (the shape of a batched output).
BATCH_FAILURES = ("422", "500")


def error_responses(batched: bool = False) -> dict[str, t.Any]:
    """The documented error answers of a prediction route (``batched``: an adaptive-batching route)."""
    responses: dict[str, t.Any] = {
        code: {"description": text, "content": {"application/json": {"schema": ERROR_REF}}}
        for code, text in ERRORS.items()
    }
    if batched:
        for code in BATCH_FAILURES:
            responses[code]["content"]["application/json"]["schema"] = {
                "anyOf": [ERROR_REF, {"type": "array", "items": ERROR_REF, "minItems": 1}]}
    responses["503"]["headers"] = {"Retry-After": {"schema": {"type": "integer", "minimum": 1},
                                                   "description": "seconds to wait before retrying"}}
    return responses


def document_errors(document: dict[str, t.Any]) -> dict[str, t.Any]:
    """``document`` with every prediction and model route documenting the errors it answers."""
    document.setdefault("components", {}).setdefault("schemas", {})["MlserveError"] = ERROR_SCHEMA
    for path, item in document.get("paths", {}).items():
        prediction = accepted_media_types(path.replace("{name}", "m")) is not None
        if not (prediction or path.startswith("/v2/models/")):
            continue
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            errors = error_responses(batched=path == "/predict_batch") if prediction else {
                "404": error_responses()["404"]}
            if path.endswith("/explain"):
                errors = {**errors, "409": {"description": EXPLAIN_CONFLICT,
                                            "content": {"application/json": {"schema": ERROR_REF}}}}
            operation["responses"].update(errors)
    return document


class DocumentedErrorsMiddleware:
    """Rewrite ``GET /docs.json`` with :func:`document_errors`; every other request passes through untouched."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != DOCUMENT_PATH:
            await self.app(scope, receive, send)
            return
        start: Message = {}
        chunks: list[bytes] = []

        async def collect(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, collect)
        body = b"".join(chunks)
        if start.get("status") == 200:
            body = json.dumps(document_errors(json.loads(body))).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

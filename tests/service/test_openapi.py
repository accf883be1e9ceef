"""The published OpenAPI document: every error a prediction route answers is documented, with its body."""

from __future__ import annotations

import asyncio
import json

import pytest

from service.openapi import ERRORS, DocumentedErrorsMiddleware, document_errors

BENTOML_ERROR = {"description": "Bad Request", "content": {"application/json": {"schema": {"$ref": "#/x/BadRequest"}}}}
DOCUMENT = {
    "paths": {
        "/predict": {"post": {"responses": {"200": {"description": "ok"}, "400": BENTOML_ERROR}}},
        "/predict_batch": {"post": {"responses": {"200": {"description": "ok"}}}},
        "/invocations": {"post": {"responses": {"200": {"description": "ok"}}}},
        "/v2/models/{name}/infer": {"post": {"responses": {"200": {"description": "ok"}}}},
        "/v2/models/{name}": {"get": {"responses": {"200": {"description": "ok"}}}},
        "/readyz": {"get": {"responses": {"200": {"description": "ok"}}}},
    },
}


@pytest.mark.parametrize("path", ["/predict", "/invocations", "/v2/models/{name}/infer"])
def test_prediction_routes_document_every_error_with_the_body_the_server_sends(path):
    responses = document_errors(json.loads(json.dumps(DOCUMENT)))["paths"][path]["post"]["responses"]

    assert set(responses) == {"200", *ERRORS}
    assert responses["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/MlserveError"}
    assert "Retry-After" in responses["503"]["headers"]


def test_a_batch_the_model_refuses_is_documented_as_the_list_bentoml_answers_with():
    responses = document_errors(json.loads(json.dumps(DOCUMENT)))["paths"]["/predict_batch"]["post"]["responses"]

    assert responses["422"]["content"]["application/json"]["schema"]["anyOf"][1]["type"] == "array"
    assert responses["415"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/MlserveError"}


def test_model_routes_document_404_and_health_routes_stay_as_they_are():
    document = document_errors(json.loads(json.dumps(DOCUMENT)))

    assert set(document["paths"]["/v2/models/{name}"]["get"]["responses"]) == {"200", "404"}
    assert document["paths"]["/readyz"] == DOCUMENT["paths"]["/readyz"]
    assert document["components"]["schemas"]["MlserveError"]["required"] == ["error"]


def test_the_middleware_rewrites_only_the_document():
    async def app(scope, receive, send):
        body = json.dumps(DOCUMENT if scope["path"] == "/docs.json" else {"x": 1}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def get(path):
        sent = []

        async def send(message):
            sent.append(message)

        await DocumentedErrorsMiddleware(app)({"type": "http", "path": path}, None, send)
        headers = dict(sent[0]["headers"])
        body = sent[1]["body"]
        assert int(headers[b"content-length"]) == len(body)
        return json.loads(body)

    assert "415" in asyncio.run(get("/docs.json"))["paths"]["/predict"]["post"]["responses"]
    assert asyncio.run(get("/metrics")) == {"x": 1}

"""The floor of per-request Python HTTP serving: one uvicorn process, Starlette, ``predict_proba`` per request.

No batching, no validation beyond what JSON parsing gives, no metrics, no tracing: the cheapest honest way to
answer ``POST /predict`` (``{"instances": [{feature: value, ...}]}`` -> ``{"predictions": [...]}``) from the same
registered model, loaded with the native sklearn flavour and handed a DataFrame (the demo pipeline selects its
columns by name, as users' pipelines do). ``bench.serving`` measures every server against it.

Usage: ``python -m bench.reference_server --port P --model-uri models:/NAME@ALIAS`` (registry from
``MLFLOW_TRACKING_URI``); ``GET /ping`` answers 200 once the model is loaded, which happens before the socket
is bound.
"""

from __future__ import annotations

import argparse
import json
import os

import pandas as pd
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

FEATURES = ("tenure", "monthly_charges", "total_charges", "contract_type", "payment_method")


def build_app(estimator) -> Starlette:
    """A Starlette app scoring ``instances`` with ``estimator.predict_proba`` on a DataFrame of them."""

    async def predict(request: Request) -> Response:
        try:
            instances = json.loads(await request.body())["instances"]
            frame = pd.DataFrame(instances, columns=list(FEATURES))
        except (ValueError, KeyError, TypeError) as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        return JSONResponse({"predictions": estimator.predict_proba(frame)[:, 1].tolist()})

    async def ping(_: Request) -> Response:
        return Response(b"ok")

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/ping", ping)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reference_server", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--model-uri", required=True, help="models:/NAME@ALIAS or models:/NAME/VERSION")
    args = parser.parse_args(argv)
    import mlflow.sklearn

    if tracking_uri := os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    estimator = mlflow.sklearn.load_model(args.model_uri)
    uvicorn.run(build_app(estimator), host=args.host, port=args.port, workers=1, log_level="warning",
                access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""KServe's Python model server with the few-line scikit-learn ``Model`` subclass its sklearnserver uses, for
``bench.serving`` only (run with ``build/venv-kserve``, pins in ``bench/requirements-kserve.txt``).

As kserve/python/sklearnserver/sklearnserver/model.py does: ``load`` reads the one joblib file in ``--model_dir`` and
``predict`` (synchronous, so KServe calls it on its event loop: kserve/model.py ``Model.__call__``) scores the V1
``{"instances": [...]}`` body, answering ``{"predictions": [...]}`` with the positive class's probability. The
demo pipeline selects its columns by name, so the rows become a DataFrame (sklearnserver's ``get_predict_input``
builds one DataFrame per row for object rows, which fails on rows of scalars). ``--workers N`` forks N uvicorn
workers (``kserve.ModelServer``). KServe's per-request latency log line is off, as mlserve's access log is.

Usage: ``python bench/kserve_server.py --model_dir DIR --model_name churn --http_port P --workers N``; ready when
``GET /v1/models/churn`` answers 200; predictions at ``POST /v1/models/churn:predict``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import joblib
import pandas as pd
from kserve import Model, ModelServer, model_server


class SKLearnModel(Model):
    """A joblib-saved scikit-learn estimator answering V1 predict requests with ``predict_proba``."""

    def __init__(self, name: str, model_dir: str) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.ready = False

    def load(self) -> bool:
        self._model = joblib.load(pathlib.Path(self.model_dir) / "model.joblib")
        self.ready = True
        return self.ready

    def predict(self, payload: dict, headers: dict[str, str] | None = None) -> dict:
        frame = pd.DataFrame(payload["instances"])
        return {"predictions": self._model.predict_proba(frame)[:, 1].tolist()}


def main() -> int:
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_dir", required=True, help="the folder holding model.joblib")
    args, _ = parser.parse_known_args()
    model = SKLearnModel(args.model_name, args.model_dir)
    model.load()
    ModelServer(enable_latency_logging=False).start([model])
    return 0


if __name__ == "__main__":
    sys.exit(main())

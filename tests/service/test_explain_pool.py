"""The explain pool's timeout with real explainer processes: an explanation that outlasts
``MLSERVE_EXPLAIN_TIMEOUT_SECONDS`` is answered 503 with ``Retry-After``, its explainer process is killed and a new one
started at once, and once that one has loaded the model the next request is explained.

The model is a custom pyfunc (tests/service/explain_models.StallingScore) saved to a folder and served through
``ExplainProtocol`` exactly as a server worker does, without BentoML: only the explainer processes are real.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from service.explain import ADDITIVITY_TOLERANCE, ExplainSettings
from service.explain_pool import ExplainProtocol
from service.loading import ModelSource, load_model
from service.settings import Settings

from . import explain_models

TIMEOUT_SECONDS = 2.0
START_SECONDS = 180  # an explainer process imports mlflow and shap and loads the model: slow on a busy machine


@pytest.fixture
def protocol(tmp_path):
    from mlflow.models import Model

    path = tmp_path / "stalling"
    explain_models.stalling_pyfunc(path)
    meta = Model.load(path)
    source = ModelSource(name="explain-stall", version="1", source_uri=path.as_uri(), local_path=path,
                         flavors=meta.flavors, signature_inputs=meta.signature.inputs.to_dict(),
                         signature_outputs=meta.signature.outputs.to_dict())
    settings = Settings.from_env()
    limits = ExplainSettings(**{**ExplainSettings.DEFAULTS, "max_concurrency": 1, "max_queue": 0,
                                "timeout_seconds": TIMEOUT_SECONDS})
    protocol = ExplainProtocol(load_model(settings, source), settings, source, limits)
    protocol.start()
    yield protocol
    protocol.stop()


def body(x: float) -> bytes:
    return json.dumps({"instances": [{"x": x, "y": 1.0}]}).encode()


async def explained_once_started(protocol: ExplainProtocol, x: float):
    """The first answer that is not 503 "starting", waiting (bounded) for the explainer process to load the model."""
    deadline = time.monotonic() + START_SECONDS
    while True:
        answer = await protocol.rest(body(x))
        if answer.status != 503 or "starting" not in answer.body["error"] or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.5)


def test_a_timed_out_explanation_gets_503_and_its_process_is_replaced(protocol):
    worker = protocol.pool._idle[0]

    async def scenario():
        ready = await explained_once_started(protocol, 5.0)
        assert ready.status == 200, ready.body
        stalled_process = worker._process
        started = time.monotonic()
        timed_out = await protocol.rest(body(explain_models.StallingScore.STALL_AT))
        waited = time.monotonic() - started
        replacement = worker._process
        after = await explained_once_started(protocol, 7.0)
        return stalled_process, timed_out, waited, replacement, after

    stalled_process, timed_out, waited, replacement, after = asyncio.run(scenario())

    assert timed_out.status == 503, timed_out.body
    assert "took longer than 2s" in timed_out.body["error"]
    assert int(timed_out.headers["Retry-After"]) >= 1
    assert TIMEOUT_SECONDS <= waited < TIMEOUT_SECONDS + 10, "answered at the timeout, not when the model woke up"
    assert not stalled_process.is_alive() and stalled_process.exitcode is not None, "the stalled process was killed"
    assert replacement is not None and replacement.pid != stalled_process.pid, "a new process started at once"
    assert after.status == 200, after.body
    explanation = after.body["explanations"][0]
    assert explanation["prediction"] == pytest.approx(2 * 7.0 + 1.0)
    total = explanation["base_value"] + sum(explanation["attributions"].values())
    assert abs(total - explanation["prediction"]) <= ADDITIVITY_TOLERANCE * max(1.0, abs(explanation["prediction"]))

"""The adaptive batcher on its own (service.batching): merging, its bounds, and failures that stay with their request.

A real ``ServedModel`` over a stand-in scikit-learn-like scorer, driven with plain asyncio. The scorer can be held
(a threading.Event) so that requests pile up behind a model call in progress, as they do under load; nothing here
depends on the machine's speed. ``tests/service/test_batching_protocols.py`` drives every protocol of the real
service through the same batcher.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pandas as pd
import pytest

from service.admission import AdmissionLimits
from service.batching import ModelRunner
from service.errors import InvalidInput, ModelFailure
from service.predictor import ModelIdentity, ServedModel, split_rows
from service.schema import InputSchema
from service.settings import BatchLimits

SCHEMA = InputSchema.from_signature([{"name": "x", "type": "double"}])
IDENTITY = ModelIdentity("m", "1", "champion", "models:/m/1")
REFUSED, BROKEN = -1.0, 1000.0  # a value the model refuses (ValueError: 422), one that breaks it (500)


class HeldScorer:
    """Doubles ``x``; records every call's row count; the first call waits for ``release`` when ``hold`` is set."""

    def __init__(self, hold: bool = False) -> None:
        self.calls: list[int] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, frame: pd.DataFrame) -> np.ndarray:
        self.calls.append(len(frame))
        self.started.set()
        self.release.wait(10)
        if (frame["x"] == REFUSED).any():
            raise ValueError("x must not be -1")
        if (frame["x"] == BROKEN).any():
            raise RuntimeError("the model broke")
        return frame["x"].to_numpy() * 2


def runner_for(scorer: HeldScorer, max_batch_size: int = 64, max_wait_ms: float = 0.0,
               expected=None) -> ModelRunner:
    model = ServedModel(IDENTITY, SCHEMA, {"predict": scorer})
    return ModelRunner(model, BatchLimits(max_batch_size, max_wait_ms), expected=expected)


async def ask(runner: ModelRunner, *values: float):
    """One request of ``values`` rows; its predictions, or the error it got."""
    try:
        return (await runner.predict(runner.model.check_rows([{"x": value} for value in values]))).values
    except (InvalidInput, ModelFailure) as err:
        return err


async def until(condition, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


async def behind_a_busy_model(runner: ModelRunner, scorer: HeldScorer, requests: list[tuple[float, ...]]):
    """Start one request and hold the model on it, queue ``requests`` behind it, then let the model go on."""
    first = asyncio.create_task(ask(runner, 0.5))
    await until(scorer.started.is_set)
    queued = [asyncio.create_task(ask(runner, *values)) for values in requests]
    await until(lambda: runner.queued == len(requests))
    scorer.release.set()
    return await first, await asyncio.gather(*queued)


def test_requests_queued_while_the_model_is_busy_share_one_model_call():
    scorer = HeldScorer(hold=True)
    runner = runner_for(scorer)

    first, answers = asyncio.run(behind_a_busy_model(runner, scorer, [(float(i),) for i in range(20)]))

    assert first == [1.0]
    assert answers == [[2.0 * i] for i in range(20)]
    assert scorer.calls == [1, 20]
    assert runner.model_calls == 2


def test_a_batch_never_holds_more_rows_than_max_batch_size():
    scorer = HeldScorer(hold=True)
    runner = runner_for(scorer, max_batch_size=8)

    _, answers = asyncio.run(behind_a_busy_model(runner, scorer, [(1.0, 2.0, 3.0)] * 6 + [(4.0,) * 20]))

    assert answers[:6] == [[2.0, 4.0, 6.0]] * 6 and answers[6] == [8.0] * 20
    # 3 + 3 rows per batch (a third request would make 9), and the 20-row request alone.
    assert scorer.calls == [1, 6, 6, 6, 20]


@pytest.mark.parametrize(("bad", "status"), [(REFUSED, 422), (BROKEN, None)])
def test_a_request_the_model_fails_on_fails_alone_and_its_neighbours_get_their_answers(bad, status):
    scorer = HeldScorer(hold=True)
    runner = runner_for(scorer)
    requests = [(float(i),) for i in range(1, 9)]
    requests[5] = (2.0, bad)

    _, answers = asyncio.run(behind_a_busy_model(runner, scorer, requests))

    error = answers.pop(5)
    if status is None:
        assert isinstance(error, ModelFailure) and "the model broke" in str(error)
    else:
        assert isinstance(error, InvalidInput) and error.status == 422
        assert "row 1" in error.message and "x must not be -1" in error.message  # the row of its own request
    assert answers == [[2.0 * i] for i in (1, 2, 3, 4, 5, 7, 8)]
    assert runner.model_calls == 2  # one merged call; scored again in halves inside it


def test_a_request_refused_by_its_checks_never_reaches_the_model():
    runner = runner_for(HeldScorer())

    with pytest.raises(InvalidInput, match="row 0, feature 'x'"):
        runner.model.check_rows([{"x": "twelve"}])
    assert runner.model_calls == 0


def test_a_lone_request_goes_to_an_idle_model_at_once_even_with_a_wait_configured():
    async def scenario():
        runner = runner_for(HeldScorer(), max_wait_ms=60_000, expected=lambda: 1)
        return await asyncio.wait_for(ask(runner, 3.0), 5)

    assert asyncio.run(scenario()) == [6.0]


def test_an_idle_model_waits_for_requests_the_worker_has_admitted_and_takes_them_together():
    scorer = HeldScorer()

    async def scenario():
        runner = runner_for(scorer, max_wait_ms=60_000, expected=lambda: 3)
        tasks = [asyncio.create_task(ask(runner, float(i))) for i in range(3)]
        return await asyncio.wait_for(asyncio.gather(*tasks), 5), runner

    answers, runner = asyncio.run(scenario())

    assert answers == [[0.0], [2.0], [4.0]]
    assert scorer.calls == [3]


def test_the_wait_for_more_requests_is_bounded_by_max_wait():
    scorer = HeldScorer()

    async def scenario():
        runner = runner_for(scorer, max_wait_ms=20, expected=lambda: 50)  # 49 never come
        return await asyncio.wait_for(ask(runner, 1.0), 5)

    assert asyncio.run(scenario()) == [2.0]
    assert scorer.calls == [1]


def test_the_model_runs_off_the_event_loop():
    scorer = HeldScorer(hold=True)

    async def scenario():
        runner = runner_for(scorer)
        busy = asyncio.create_task(ask(runner, 1.0))
        await until(scorer.started.is_set)
        ticks = 0
        for _ in range(5):  # the loop turns while the model call is held
            await asyncio.sleep(0.001)
            ticks += 1
        scorer.release.set()
        return ticks, await busy

    assert asyncio.run(scenario()) == (5, [2.0])


@pytest.mark.parametrize(
    ("raw", "pieces"),
    [
        (np.arange(5), [[0, 1], [2, 3, 4]]),
        (pd.Series([1, 2, 3, 4, 5]), [[1, 2], [3, 4, 5]]),
        (pd.DataFrame({"a": range(5)}), [[{"a": 0}, {"a": 1}], [{"a": 2}, {"a": 3}, {"a": 4}]]),
        ({"p": np.arange(5), "q": [5, 6, 7, 8, 9]}, [{"p": [0, 1], "q": [5, 6]}, {"p": [2, 3, 4], "q": [7, 8, 9]}]),
    ],
    ids=["array", "series", "frame", "dict"],
)
def test_a_merged_answer_is_cut_back_per_request(raw, pieces):
    from service.predictor import to_json_values

    assert [to_json_values(piece) for piece in split_rows(raw, [2, 3])] == pieces


@pytest.mark.parametrize("raw", [np.float64(1.0), np.arange(4), "text"], ids=["scalar", "too-short", "text"])
def test_an_answer_without_one_entry_per_row_cannot_be_cut(raw):
    with pytest.raises(ValueError):
        split_rows(raw, [2, 3])


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"MLSERVE_MAX_BATCH_SIZE": "0"}, "MLSERVE_MAX_BATCH_SIZE='0' must be an integer of at least 1"),
        ({"MLSERVE_MAX_BATCH_WAIT_MS": "-1"}, "MLSERVE_MAX_BATCH_WAIT_MS='-1' must be a number of milliseconds"),
        ({"MLSERVE_MAX_BATCH_WAIT_MS": "soon"}, "MLSERVE_MAX_BATCH_WAIT_MS='soon'"),
    ],
)
def test_bad_batch_limits_are_reported_by_variable_and_value(environ, problem):
    with pytest.raises(ValueError, match=problem):
        BatchLimits.from_env(environ)


def test_batch_limits_default_without_a_deployment_and_accept_no_wait():
    assert BatchLimits.from_env({}) == BatchLimits(**BatchLimits.DEFAULTS)
    assert BatchLimits.from_env({"MLSERVE_MAX_BATCH_WAIT_MS": "0"}).max_wait_ms == 0
    assert AdmissionLimits.from_env({}) == AdmissionLimits(**AdmissionLimits.DEFAULTS)

"""Adaptive batching of prediction requests, and the one thread per worker that runs the model.

Every prediction protocol (``/predict``, ``/predict_batch``, ``/invocations``, OIP v2 over REST and over gRPC) parses
and checks its request on the worker's event loop (``ServedModel.check_rows``: a bad request is refused there, alone)
and then awaits ``ModelRunner.predict(checked, output)``. The runner queues the request and hands queued requests to
the model together, ``ServedModel.score`` merging them into one model call and cutting the answer back into one
answer per request:

- **Off the event loop.** Model calls run in a dedicated thread (one per worker, so the model is never called twice
  at once), so while the model works the loop keeps accepting connections, parsing and checking requests, shedding
  overload (``service.admission``) and answering ``/livez``. A native scikit-learn call holds the GIL for most of its
  time, but CPython hands the GIL to the waiting loop thread every switch interval (``sys.getswitchinterval()``,
  5 ms), so the loop is never shut out for longer than that.
- **Adaptive.** A batch goes to the model as soon as the model is free: requests that arrive while it is busy wait
  for the next call, so batches grow with the load and a lone request never waits for company. When the model is
  free but more requests are on their way (admitted by the worker but not yet queued: ``expected()``), the first
  queued request waits up to ``max_wait_ms`` for them; a batch holds at most ``max_batch_size`` rows (a request
  with more rows is scored alone).

Limits come from the environment the deployment fills from stack config ``serving.maxBatchSize`` and
``serving.maxBatchWaitMs`` (``BatchLimits.from_env``). ``model_calls`` counts the model calls, which the tests read.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import typing as t

from service.errors import ModelFailure
from service.predictor import Prediction, ServedModel
from service.schema import Checked
from service.settings import BatchLimits


@dataclasses.dataclass
class _Waiting:
    part: Checked
    output: str | None
    answer: asyncio.Future


class ModelRunner:
    """One worker's model thread and the queue in front of it (see the module docstring).

    ``expected`` says how many prediction requests the worker has admitted and not finished (the admission slots'
    count); without it the runner never waits for company.
    """

    def __init__(self, model: ServedModel, limits: BatchLimits,
                 expected: t.Callable[[], int] | None = None) -> None:
        self.model = model
        self.limits = limits
        self.expected = expected
        self.model_calls = 0
        self._queue: collections.deque[_Waiting] = collections.deque()
        self._queued_rows = 0
        self._running = 0  # requests in the model call now
        self._inside = 0  # requests between entering predict() and leaving it
        self._timer: asyncio.TimerHandle | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlserve-model")

    async def predict(self, part: Checked, output: str | None = None) -> Prediction:
        """The model's answer to one checked request, scored together with whatever else is queued; raises the
        InvalidInput or ModelFailure that request alone would raise."""
        waiting = _Waiting(part, output, asyncio.get_running_loop().create_future())
        self._queue.append(waiting)
        self._queued_rows += part.rows
        self._inside += 1
        try:
            self._dispatch_when_due()
            answer = await waiting.answer
        finally:
            self._inside -= 1
        if isinstance(answer, Exception):
            raise answer
        return answer

    @property
    def queued(self) -> int:
        """Requests waiting for the model (not those in the call in progress)."""
        return len(self._queue)

    def close(self) -> None:
        """Stop the model thread once the call in progress, if any, is done."""
        self._thread.shutdown(wait=False, cancel_futures=True)

    # ---- the queue (runs on the event loop only, so it needs no lock)

    def _dispatch_when_due(self) -> None:
        if self._running or not self._queue:
            return
        # Admitted requests that have not reached the runner yet (still being read or checked).
        arriving = (self.expected() - self._inside) if self.expected is not None else 0
        if self._queued_rows < self.limits.max_batch_size and arriving > 0 and self.limits.max_wait_ms > 0:
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self.limits.max_wait_ms / 1000, self._waited)
            return
        self._dispatch()

    def _waited(self) -> None:
        self._timer = None
        if not self._running and self._queue:
            self._dispatch()

    def _dispatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = self._take_batch()
        if not batch:
            return
        self._running = len(batch)
        self.model_calls += 1
        parts = [waiting.part for waiting in batch]
        call = asyncio.get_running_loop().run_in_executor(self._thread, self.model.score, parts, batch[0].output)
        call.add_done_callback(lambda done: self._answer(batch, done))

    def _take_batch(self) -> list[_Waiting]:
        """The first queued request and the queued requests after it that ask for the same output, up to
        ``max_batch_size`` rows (the first one is taken whatever its size); requests whose client has gone (their
        handler was cancelled) are dropped."""
        batch: list[_Waiting] = []
        kept: collections.deque[_Waiting] = collections.deque()
        rows = 0
        while self._queue:
            waiting = self._queue.popleft()
            if waiting.answer.done():
                self._queued_rows -= waiting.part.rows
                continue
            if batch and (waiting.output != batch[0].output or rows + waiting.part.rows > self.limits.max_batch_size):
                kept.append(waiting)
                if rows >= self.limits.max_batch_size:
                    break
                continue
            batch.append(waiting)
            rows += waiting.part.rows
        kept.extend(self._queue)
        self._queue = kept
        self._queued_rows -= rows
        return batch

    def _answer(self, batch: list[_Waiting], done: asyncio.Future) -> None:
        self._running = 0
        error = done.exception() if not done.cancelled() else RuntimeError("the model thread stopped")
        if error is None:
            answers = done.result()
        else:  # score() answers every request; this is a bug or a stopping worker, still the server's fault
            answers = [ModelFailure(f"model {self.model.identity.name} failed: {error!r}")] * len(batch)
        for waiting, answer in zip(batch, answers):
            if not waiting.answer.done():  # its client may have gone (the handler was cancelled)
                waiting.answer.set_result(answer)
        self._dispatch_when_due()

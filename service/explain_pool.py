"""Explanations without slowing predictions: a bounded pool of explainer processes, and the ``/explain`` protocol.

Explaining a row costs hundreds of model calls, so it never runs in a server worker: each worker owns
``max_concurrency`` explainer processes (``service.explain``), started when the worker starts (they load the model
on their own time; ``/explain`` answers 503 until then), at the lowest CPU priority from their first instruction
(``SCHED_IDLE``, else ``nice`` +19) with one BLAS/OpenMP thread, so that under contention the kernel schedules
predictions first. At most ``max_queue`` requests wait for a process, each for at most ``timeout_seconds``; anything
beyond is answered 503 with ``Retry-After`` at once. An explanation that takes longer than ``timeout_seconds`` is
answered 503 too, and its process is killed and a new one started at once.

``ExplainProtocol.rest(body)`` answers ``POST /explain`` (``{"instances": [rows], "class"?}``, rows validated by the
same ``RowValidator`` as ``/predict``); ``ExplainProtocol.oip(body)`` answers ``POST /v2/models/{name}/explain``
(OIP v2 input tensors, ``parameters.class``). Both return ``(status, body, headers)``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import threading
import time
import typing as t

import anyio.to_thread

from service.errors import InvalidInput, ModelLoadError
from service.explain import ExplainSettings, lowest_priority, serve_explanations
from service.metrics import start_explain_series, track_explain
from service.protocols import parse_json
from service.schema import rows_from_tensors

logger = logging.getLogger("mlserve.explain")

# How long a new explainer process may take to load the model and compile shap's numba code before it is given up.
START_TIMEOUT_SECONDS = 180.0


def explain_openapi(row_schema: dict[str, t.Any], max_rows: int) -> dict[str, t.Any]:
    """The OpenAPI request body of ``POST /explain``: the rows ``/predict`` takes, and an optional class."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["instances"],
        "properties": {
            "instances": {"type": "array", "items": row_schema, "minItems": 1, "maxItems": max_rows},
            "class": {"type": "string", "description": "the class to explain (classifiers); default: the positive "
                                                       "class of a binary classifier, every class of a multi-class one"},
        },
    }}}}}


class Busy(Exception):
    """Every explainer is in use and the queue is full (or the wait ran out): answer 503 with Retry-After."""


class TimedOut(Exception):
    """An explanation took longer than the limit; its process was killed."""


class Starting(Exception):
    """The explainer process is still loading the model: answer 503 with Retry-After."""


class _ExplainerProcess:
    """One explainer process and the pipe to it; used by one request at a time."""

    def __init__(self, settings: t.Any, source: t.Any, limits: ExplainSettings) -> None:
        self._args = (settings, source, limits)
        self._process: t.Any = None
        self._connection: t.Any = None
        self._started_at = 0.0
        self._startup: tuple[str, t.Any] | None = None

    def start(self) -> None:
        """Start the process if it is not running; it loads the model and warms shap up on its own time."""
        if self._process is not None and self._process.is_alive():
            return
        self.stop()
        # spawn, not fork: the server worker has threads and an event loop a forked child must not inherit.
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self._process = context.Process(target=serve_explanations, args=(child, *self._args), daemon=True,
                                        name="mlserve-explainer")
        # Started from a thread of its own that first drops to the lowest CPU priority: the child inherits it from
        # the forking thread, so its interpreter start, imports and model load (seconds of CPU, again after every
        # timeout) never compete with predictions; the worker's own threads keep their priority.
        starter = threading.Thread(target=_start_idle, args=(self._process,), name="mlserve-explainer-start")
        starter.start()
        starter.join()
        child.close()
        self._connection = parent
        self._started_at = time.monotonic()

    def _ready(self) -> tuple[str, t.Any]:
        """The process's first reply (ready, or why it cannot explain); Starting while it has not come yet."""
        if self._startup is None:
            if not self._connection.poll(0):
                if time.monotonic() - self._started_at > START_TIMEOUT_SECONDS:
                    self.stop()
                    raise ModelLoadError(f"the explainer process did not start within {START_TIMEOUT_SECONDS:g}s")
                raise Starting("the explainer is starting (it loads the model and compiles shap's code)")
            self._startup = self._connection.recv()
        return self._startup

    def call(self, frame: t.Any, output_class: str | None, timeout: float) -> tuple[str, t.Any]:
        """The reply to one request (blocking; run in a thread); TimedOut kills the process, Starting waits."""
        self.start()
        try:
            startup = self._ready()
            if startup[0] != "ready":
                return startup
            self._connection.send((frame, output_class))
            if not self._connection.poll(timeout):
                self.stop()
                self.start()  # the replacement loads the model while the client waits out Retry-After
                raise TimedOut(f"the explanation took longer than {timeout:g}s")
            return self._connection.recv()
        except (EOFError, OSError) as err:
            self.stop()
            return "failed", f"the explainer process ended: {err}"

    def stop(self) -> None:
        if self._connection is not None:
            self._connection.close()
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=10)
        self._process = self._connection = self._startup = None


def _start_idle(process: t.Any) -> None:
    """Start ``process`` from this (throwaway) thread after dropping the thread to ``lowest_priority``."""
    lowest_priority()
    process.start()


class ExplainPool:
    """At most ``max_concurrency`` explanations at once per server worker, ``max_queue`` waiting."""

    def __init__(self, settings: t.Any, source: t.Any, limits: ExplainSettings) -> None:
        self.limits = limits
        self._idle = [_ExplainerProcess(settings, source, limits) for _ in range(limits.max_concurrency)]
        self._freed = asyncio.Event()
        self.waiting = 0

    @property
    def in_flight(self) -> int:
        return self.limits.max_concurrency - len(self._idle)

    async def _acquire(self) -> _ExplainerProcess:
        if self._idle and self.waiting == 0:
            return self._idle.pop()
        if self.waiting >= self.limits.max_queue:
            raise Busy(f"{self.limits.max_concurrency} explanation(s) in progress and {self.waiting} waiting")
        self.waiting += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.timeout_seconds
        try:
            while not self._idle:
                remaining = deadline - loop.time()
                self._freed.clear()
                try:
                    await asyncio.wait_for(self._freed.wait(), max(0.0, remaining))
                except asyncio.TimeoutError:
                    raise Busy(f"no explainer came free within {self.limits.timeout_seconds:g}s") from None
            return self._idle.pop()
        finally:
            self.waiting -= 1

    async def explain(self, frame: t.Any, output_class: str | None) -> tuple[str, t.Any]:
        """The explainer's reply for ``frame``; raises Busy or TimedOut."""
        worker = await self._acquire()
        try:
            return await anyio.to_thread.run_sync(worker.call, frame, output_class, self.limits.timeout_seconds)
        finally:
            self._idle.append(worker)
            self._freed.set()

    def start(self) -> None:
        """Start every explainer process, so the first requests find them ready."""
        for worker in self._idle:
            worker.start()

    def stop(self) -> None:
        """Kill every explainer process (the server is stopping)."""
        for worker in self._idle:
            worker.stop()


@dataclasses.dataclass
class ExplainAnswer:
    """An answer of the explain protocol: status, JSON body, extra headers, and the metric's error type."""

    status: int
    body: dict[str, t.Any]
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    error_type: str | None = None
    rows: int = 0


class ExplainProtocol:
    """``/explain`` and ``/v2/models/{name}/explain`` for one served model (``service.predictor.ServedModel``)."""

    def __init__(self, model: t.Any, settings: t.Any, source: t.Any, limits: ExplainSettings) -> None:
        self.model = model
        self.limits = limits
        self.max_body_bytes = settings.max_body_bytes
        self.pool = ExplainPool(settings, source, limits) if limits.enabled else None
        start_explain_series(model.identity)

    async def rest(self, body: bytes) -> ExplainAnswer:
        """``{"instances": [rows], "class"?}`` -> ``{"explanations", "model_name", "model_version", "variant"}``."""
        return await self._measured(self._rest, body)

    async def oip(self, body: bytes) -> ExplainAnswer:
        """OIP v2 input tensors in; ``prediction``, ``base_value``, ``attributions`` (and ``class``) tensors out."""
        return await self._measured(self._oip, body)

    async def _measured(self, handle: t.Callable[[bytes], t.Awaitable[ExplainAnswer]], body: bytes) -> ExplainAnswer:
        with track_explain(self.model.identity) as outcome:
            answer = await handle(body)
            outcome["error_type"] = answer.error_type if answer.status >= 400 else None
            outcome["rows"] = answer.rows
            answer.headers.update(self.model.identity.headers)
            return answer

    async def _rest(self, body: bytes) -> ExplainAnswer:
        try:
            payload = self._payload(body)
            instances = payload.get("instances")
        except InvalidInput as err:
            return _refusal(err)
        answer = await self._explain(instances, payload.get("class"))
        if answer.status == 200:
            identity = self.model.identity
            answer.body = {"explanations": answer.body["explanations"], "model_name": identity.name,
                           "model_version": identity.version, "variant": identity.variant}
        return answer

    async def _oip(self, body: bytes) -> ExplainAnswer:
        try:
            payload = self._payload(body, key="inputs")
            rows = rows_from_tensors(self.model.schema, payload.get("inputs"))
            parameters = payload.get("parameters") or {}
            if not isinstance(parameters, dict):
                raise InvalidInput("'parameters' must be an object")
        except InvalidInput as err:
            return _refusal(err)
        answer = await self._explain(rows, parameters.get("class"))
        if answer.status != 200:
            return answer
        explanations = answer.body["explanations"]
        columns = list(explanations[0]["attributions"]) if explanations else []
        outputs = [
            {"name": "prediction", "datatype": "FP64", "shape": [len(explanations)],
             "data": [item["prediction"] for item in explanations]},
            {"name": "base_value", "datatype": "FP64", "shape": [len(explanations)],
             "data": [item["base_value"] for item in explanations]},
            {"name": "attributions", "datatype": "FP64", "shape": [len(explanations), len(columns)],
             "data": [item["attributions"][name] for item in explanations for name in columns],
             "parameters": {"columns": columns}},
            {"name": "row", "datatype": "INT64", "shape": [len(explanations)],
             "data": [item["row"] for item in explanations]},
        ]
        if explanations and "class" in explanations[0]:
            outputs.append({"name": "class", "datatype": "BYTES", "shape": [len(explanations)],
                            "data": [item["class"] for item in explanations]})
        identity = self.model.identity
        body = {"model_name": identity.name, "model_version": identity.version, "outputs": outputs,
                "parameters": {"variant": identity.variant}}
        if isinstance(payload.get("id"), str):
            body["id"] = payload["id"]
        return ExplainAnswer(200, body, rows=answer.rows)

    def _payload(self, body: bytes, key: str = "instances") -> dict[str, t.Any]:
        if len(body) > self.max_body_bytes:
            raise InvalidInput(f"request body exceeds the maximum of {self.max_body_bytes} bytes "
                               "(MLSERVE_MAX_BODY_BYTES)", status=413)
        payload = parse_json(body)
        if not isinstance(payload, dict) or key not in payload:
            raise InvalidInput(f"the body must be a JSON object with {key!r}"
                               + (" (rows, as for /predict) and optionally 'class'" if key == "instances" else ""))
        return payload

    async def _explain(self, instances: t.Any, output_class: t.Any) -> ExplainAnswer:
        if self.pool is None:
            return ExplainAnswer(404, {"error": "explanations are off on this server (stack config "
                                                "mlserve:explain.enabled, env MLSERVE_EXPLAIN_ENABLED)"},
                                 error_type="disabled")
        try:
            if output_class is not None and not isinstance(output_class, str):
                raise InvalidInput(f"'class' must be a class name (a string), got {output_class!r}")
            frame = self.model.validator.validate_rows(instances)
            if not hasattr(frame, "columns"):
                raise InvalidInput("this model takes tensors, not named columns: its explanations would have no "
                                   "columns to name, so /explain is not offered for it", status=422)
            if len(frame) > self.limits.max_rows:
                raise InvalidInput(f"{len(frame)} rows exceeds the maximum of {self.limits.max_rows} rows per "
                                   "explanation request (MLSERVE_EXPLAIN_MAX_ROWS, stack config "
                                   "mlserve:explain.maxRows)", status=413)
        except InvalidInput as err:
            return _refusal(err)
        retry = {"Retry-After": str(self.limits.retry_after)}
        try:
            kind, result = await self.pool.explain(frame, output_class)
        except Busy as err:
            return ExplainAnswer(503, {"error": f"explainers busy: {err}; retry after {self.limits.retry_after}s"},
                                 retry, "unavailable")
        except TimedOut as err:
            return ExplainAnswer(503, {"error": f"{err} (MLSERVE_EXPLAIN_TIMEOUT_SECONDS); send fewer rows or retry "
                                                f"after {self.limits.retry_after}s"}, retry, "timeout")
        except Starting as err:
            return ExplainAnswer(503, {"error": f"{err}; retry after {self.limits.retry_after}s"}, retry, "unavailable")
        except ModelLoadError as err:
            logger.error("%s", err)
            return ExplainAnswer(503, {"error": str(err)}, retry, "unavailable")
        if kind == "ok":
            return ExplainAnswer(200, {"explanations": result}, rows=len(frame))
        if kind == "invalid":
            message, status, detail = result
            return _refusal(InvalidInput(message, status=status, detail=detail))
        logger.error("explanation failed: %s", result)
        return ExplainAnswer(500, {"error": f"the explanation failed: {result}"}, error_type="model_error")

    def start(self) -> None:
        """Start the explainer processes; a failure is logged, never fatal: predictions do not depend on them."""
        if self.pool is None:
            return
        try:
            self.pool.start()
        except Exception:  # noqa: BLE001
            logger.exception("cannot start the explainer processes; /explain will try again on its next request")

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.stop()


def _refusal(err: InvalidInput) -> ExplainAnswer:
    error_type = "no_background" if err.status == 409 else "invalid_input"
    return ExplainAnswer(err.status, err.body(), error_type=error_type)

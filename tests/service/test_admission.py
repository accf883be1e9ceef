"""The admission middleware on its own: 415 for unreadable bodies, 503 + Retry-After on overload, 408 for slow bodies.

Driven with plain ASGI coroutines (no server), with events instead of sleeps so nothing depends on machine speed.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from service.admission import (
    AdmissionLimits,
    AdmissionMiddleware,
    Slots,
    accepted_media_types,
    content_type_problem,
)

LIMITS = AdmissionLimits(max_concurrency=2, max_queue=1, queue_timeout=30.0, body_timeout=30.0)


def http_scope(path: str = "/predict", content_type: bytes | None = b"application/json", method: str = "POST") -> dict:
    headers = [(b"content-type", content_type)] if content_type is not None else []
    return {"type": "http", "method": method, "path": path, "headers": headers}


class Recorder:
    """An ASGI send that keeps the response."""

    def __init__(self) -> None:
        self.messages: list[dict] = []

    async def __call__(self, message: dict) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return next(m["status"] for m in self.messages if m["type"] == "http.response.start")

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(next(m["headers"] for m in self.messages if m["type"] == "http.response.start"))

    @property
    def error(self) -> str:
        return json.loads(b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body"))[
            "error"]


async def whole_body(body: bytes = b"{}") -> dict:
    return {"type": "http.request", "body": body, "more_body": False}


async def echo_app(scope: dict, receive, send) -> None:
    """Reads the body like a route does and answers 200, or returns silently when the client went away."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


@pytest.mark.parametrize(
    ("path", "content_type", "problem"),
    [
        ("/predict", b"application/json", None),
        ("/predict", b"application/json; charset=utf-8", None),
        ("/predict", b"Application/JSON", None),
        ("/predict", None, None),
        ("/predict", b"multipart/form-data", "unsupported Content-Type 'multipart/form-data'; send application/json"),
        ("/predict_batch", b"text/plain", "unsupported Content-Type 'text/plain'; send application/json"),
        ("/v2/models/m/infer", b"application/x-www-form-urlencoded", "unsupported Content-Type"),
        ("/invocations", b"text/csv", None),
        ("/invocations", b"text/html", "send application/json or text/csv or application/csv"),
        ("/predict", b"json", "malformed Content-Type 'json'"),
        ("/predict", b"", "malformed Content-Type ''"),
        ("/predict", b"application/json/x", "malformed Content-Type"),
    ],
)
def test_content_type_is_checked_against_the_route(path, content_type, problem):
    found = content_type_problem(content_type, accepted_media_types(path))

    assert (found is None) if problem is None else (problem in found), found


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/metrics", "/docs.json", "/v2/health/ready", "/v2/models/m"])
def test_paths_that_are_not_prediction_routes_are_not_guarded(path):
    assert accepted_media_types(path) is None


def test_unsupported_content_type_is_answered_415_without_calling_the_route():
    called, rejected = [], []

    async def app(scope, receive, send):
        called.append(scope["path"])

    middleware = AdmissionMiddleware(app, LIMITS, on_reject=lambda scope, status: rejected.append(status))
    send = Recorder()
    asyncio.run(middleware(http_scope(content_type=b"multipart/form-data"), whole_body, send))

    assert send.status == 415 and "multipart/form-data" in send.error and "application/json" in send.error
    assert called == [] and rejected == [415]


def test_requests_beyond_concurrency_and_queue_are_shed_with_503_and_retry_after():
    limits = AdmissionLimits(max_concurrency=2, max_queue=1, queue_timeout=2.5, body_timeout=30.0)

    async def scenario():
        release = asyncio.Event()
        entered = []

        async def blocking_app(scope, receive, send):
            entered.append(scope["path"])
            await release.wait()
            await echo_app(scope, receive, send)

        rejected: list[int] = []
        middleware = AdmissionMiddleware(blocking_app, limits, on_reject=lambda scope, status: rejected.append(status))
        sends = [Recorder() for _ in range(5)]
        tasks = [asyncio.create_task(middleware(http_scope(), whole_body, send)) for send in sends]
        while len(entered) < 2 or middleware.waiting < 1 or len(rejected) < 2:
            await asyncio.sleep(0)
        assert len(entered) == 2, "two run, one waits, two are shed before the held ones finish"
        release.set()
        await asyncio.gather(*tasks)
        return sends, rejected, middleware

    sends, rejected, middleware = asyncio.run(scenario())

    assert sorted(send.status for send in sends) == [200, 200, 200, 503, 503]
    shed = [send for send in sends if send.status == 503]
    assert all(send.headers[b"retry-after"] == b"3" for send in shed)
    assert "overloaded" in shed[0].error
    assert rejected == [503, 503]
    assert (middleware.in_flight, middleware.waiting) == (0, 0)


def test_a_queued_request_is_shed_when_no_slot_frees_within_the_queue_budget():
    limits = AdmissionLimits(max_concurrency=1, max_queue=5, queue_timeout=0.05, body_timeout=30.0)

    async def scenario():
        release = asyncio.Event()

        async def blocking_app(scope, receive, send):
            await release.wait()
            await echo_app(scope, receive, send)

        middleware = AdmissionMiddleware(blocking_app, limits)
        held, queued = Recorder(), Recorder()
        first = asyncio.create_task(middleware(http_scope(), whole_body, held))
        while middleware.in_flight < 1:
            await asyncio.sleep(0)
        await middleware(http_scope(), whole_body, queued)  # waits 50 ms, then is shed
        release.set()
        await first
        return held, queued

    held, queued = asyncio.run(scenario())

    assert (held.status, queued.status) == (200, 503)
    assert queued.headers[b"retry-after"] == b"1"


def test_a_stalled_body_is_cut_off_with_408_and_frees_its_slot():
    limits = AdmissionLimits(max_concurrency=1, max_queue=0, queue_timeout=1.0, body_timeout=0.05)

    async def scenario():
        async def one_byte_then_nothing():
            if not getattr(one_byte_then_nothing, "sent", False):
                one_byte_then_nothing.sent = True
                return {"type": "http.request", "body": b"{", "more_body": True}
            await asyncio.Event().wait()  # a client that never sends the rest

        rejected: list[int] = []
        middleware = AdmissionMiddleware(echo_app, limits, on_reject=lambda scope, status: rejected.append(status))
        slow, after = Recorder(), Recorder()
        await middleware(http_scope(), one_byte_then_nothing, slow)
        await middleware(http_scope(), whole_body, after)
        return slow, after, rejected

    slow, after, rejected = asyncio.run(scenario())

    assert slow.status == 408 and slow.headers[b"connection"] == b"close" and "not received within" in slow.error
    assert after.status == 200, "the slot of the cut-off client is free again"
    assert rejected == [408]


def test_a_body_that_arrives_in_time_in_many_chunks_is_read_whole():
    chunks = [b'{"instances"', b": []", b"}"]

    async def scenario():
        received = []

        async def chunked():
            body = chunks.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(chunks)}

        async def app(scope, receive, send):
            while True:
                message = await receive()
                received.append(message["body"])
                if not message["more_body"]:
                    break
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        send = Recorder()
        await AdmissionMiddleware(app, LIMITS)(http_scope(), chunked, send)
        return send, received

    send, received = asyncio.run(scenario())

    assert send.status == 200 and b"".join(received) == b'{"instances": []}'


def test_health_and_metrics_bypass_even_when_every_slot_is_taken():
    limits = AdmissionLimits(max_concurrency=1, max_queue=0, queue_timeout=1.0, body_timeout=1.0)

    async def scenario():
        release = asyncio.Event()

        async def app(scope, receive, send):
            if scope["path"] == "/predict":
                await release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        middleware = AdmissionMiddleware(app, limits)
        busy = asyncio.create_task(middleware(http_scope(), whole_body, Recorder()))
        while middleware.in_flight < 1:
            await asyncio.sleep(0)
        probes = {path: Recorder() for path in ("/readyz", "/livez", "/metrics")}
        for path, send in probes.items():
            await middleware(http_scope(path, content_type=None, method="GET"), whole_body, send)
        shed = Recorder()
        await middleware(http_scope(), whole_body, shed)
        release.set()
        await busy
        return probes, shed

    probes, shed = asyncio.run(scenario())

    assert {path: send.status for path, send in probes.items()} == {"/readyz": 200, "/livez": 200, "/metrics": 200}
    assert shed.status == 503


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"MLSERVE_MAX_CONCURRENCY": "0"}, "MLSERVE_MAX_CONCURRENCY='0' must be an integer of at least 1"),
        ({"MLSERVE_MAX_QUEUE": "-1"}, "MLSERVE_MAX_QUEUE='-1' must be an integer of at least 0"),
        ({"MLSERVE_QUEUE_TIMEOUT_SECONDS": "soon"}, "MLSERVE_QUEUE_TIMEOUT_SECONDS='soon' must be a number of seconds"),
        ({"MLSERVE_BODY_TIMEOUT_SECONDS": "inf"}, "MLSERVE_BODY_TIMEOUT_SECONDS='inf'"),
    ],
)
def test_bad_limits_are_reported_by_variable_and_value(environ, problem):
    with pytest.raises(ValueError, match=problem.replace("(", r"\(")):
        AdmissionLimits.from_env(environ)


def test_every_bad_limit_is_reported_at_once_and_defaults_fill_the_rest():
    with pytest.raises(ValueError) as err:
        AdmissionLimits.from_env({"MLSERVE_MAX_CONCURRENCY": "x", "MLSERVE_BODY_TIMEOUT_SECONDS": "0"})
    assert "MLSERVE_MAX_CONCURRENCY" in str(err.value) and "MLSERVE_BODY_TIMEOUT_SECONDS" in str(err.value)

    limits = AdmissionLimits.from_env({"MLSERVE_MAX_QUEUE": "0", "MLSERVE_QUEUE_TIMEOUT_SECONDS": "0.5"})
    assert (limits.max_queue, limits.queue_timeout, limits.retry_after) == (0, 0.5, 1)
    assert limits.max_concurrency == AdmissionLimits.DEFAULTS["max_concurrency"]


def test_requests_are_shed_at_once_while_the_event_loop_runs_later_than_the_budget():
    """A saturated loop (here: blocked for 0.3 s) sheds new requests without queueing them; once the loop keeps up
    again, requests are admitted. The margins are wide: the budget is 0.1 s, the block three times that."""
    slots = Slots(AdmissionLimits(max_concurrency=8, max_queue=8, queue_timeout=0.1, body_timeout=30.0))

    async def scenario() -> tuple[bool, str, bool]:
        assert await slots.acquire()
        slots.release()
        time.sleep(0.3)  # the loop is busy: the lag timer fires 0.3 s late
        await asyncio.sleep(0.001)  # the late timer runs first (it was due first)
        saturated = await slots.acquire()
        told = slots.overloaded()
        await asyncio.sleep(0.5)  # quiet ticks: the measured lag decays
        recovered = await slots.acquire()
        return saturated, told, recovered

    saturated, told, recovered = asyncio.run(scenario())

    assert saturated is False and "over the 0.1s budget" in told
    assert recovered is True


def test_a_standing_queue_sheds_after_a_short_wait_and_a_burst_gets_the_whole_budget():
    """Slots full for longer than Slots.STANDING is overload, not a burst: a request queued then waits only
    STANDING_WAIT (instead of the 30 s budget); once a slot has been free, the next burst gets the whole budget."""
    slots = Slots(AdmissionLimits(max_concurrency=1, max_queue=5, queue_timeout=30.0, body_timeout=30.0))

    async def scenario() -> tuple[float, bool, float, float, float]:
        loop = asyncio.get_running_loop()
        assert await slots.acquire()
        burst_budget = slots.queue_budget(loop.time())
        await asyncio.sleep(Slots.STANDING * 2)  # the one slot stays taken
        started = loop.time()
        standing = await slots.acquire()
        waited = loop.time() - started
        slots.release()  # nobody waits: the slot is free
        assert await slots.acquire()
        return burst_budget, standing, waited, slots.queue_budget(loop.time()), slots.STANDING_WAIT

    burst_budget, standing, waited, after_free, short = asyncio.run(scenario())

    assert burst_budget == 30.0
    assert standing is False and waited < 5.0, f"shed after {waited:.3f}s"
    assert short < 0.1 and after_free == 30.0

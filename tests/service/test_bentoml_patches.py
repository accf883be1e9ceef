"""The two BentoML 1.4.39 fixes service.patches applies (service.service.build_model_server calls it) (see bench/BENTOML_FINDINGS.md).

TimeoutMiddleware must still answer 504 when a request is too slow, but must not keep a timer (and with it
the request's objects) alive after the request is answered, and must not hang on an app that fails before
responding. IO media types must be the same as BentoML computes them, computed once per IO class.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from bentoml._internal.server.http.traffic import TimeoutMiddleware

from service import patches

patches.apply()


def run_request(app, timeout: float) -> tuple[list[dict], asyncio.AbstractEventLoop]:
    """One HTTP request through TimeoutMiddleware(app); the ASGI messages sent, and the loop it ran on."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    async def send(message: dict) -> None:
        sent.append(message)

    async def main() -> asyncio.AbstractEventLoop:
        await TimeoutMiddleware(app, timeout=timeout)({"type": "http", "path": "/"}, receive, send)
        return asyncio.get_running_loop()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
        live_timers = [handle for handle in loop._scheduled if not handle.cancelled()]
    finally:
        loop.close()
    return sent, live_timers


async def ok_app(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_answered_request_leaves_no_timer_behind():
    sent, live_timers = run_request(ok_app, timeout=60)

    assert [message["type"] for message in sent] == ["http.response.start", "http.response.body"]
    assert live_timers == [], "the 60 s timer would keep this request's objects alive"


def test_slow_request_still_gets_504():
    async def slow_app(scope, receive, send) -> None:
        await asyncio.sleep(5)

    started = time.monotonic()
    sent, _ = run_request(slow_app, timeout=0.1)

    assert time.monotonic() - started < 2
    assert sent[0]["status"] == 504


def test_app_failing_before_responding_raises_at_once_instead_of_hanging():
    async def failing_app(scope, receive, send) -> None:
        raise RuntimeError("handler failed")

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="handler failed"):
        run_request(failing_app, timeout=30)
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("annotation", [list[float], dict[str, int], str])
def test_media_type_is_bentomls_answer_computed_once(annotation, monkeypatch):
    from _bentoml_sdk.io_models import IOMixin, IORootModel

    class Output(IORootModel):
        root: annotation  # type: ignore[valid-type]

    expected = IOMixin.mime_type.__func__.__wrapped__(Output)
    calls = []
    original = Output.model_json_schema
    monkeypatch.setattr(Output, "model_json_schema", classmethod(lambda cls, *a, **k: calls.append(1) or original(*a, **k)))

    assert [Output.mime_type() for _ in range(3)] == [expected] * 3
    assert len(calls) <= 1

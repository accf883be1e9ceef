"""Admission control for prediction requests: content types, overload shedding and slow request bodies.

One pure ASGI middleware (no BentoML import, so it is unit-tested with plain coroutines) that decides, before any
parsing or scoring, whether a prediction request gets in:

- **Content type.** A body that is not one of the route's media types is answered 415 naming what is accepted
  (BentoML answers a ``multipart/form-data`` body without a boundary with a 500). A missing type is let through:
  the route parses the body as JSON and says so when it is not.
- **Overload.** At most ``max_concurrency`` requests are handled at once per worker and at most ``max_queue`` wait
  for a slot, each for at most ``queue_timeout`` seconds (the latency budget). Anything beyond that is answered
  at once with 503 and ``Retry-After`` instead of being left to time out; so is every request that arrives while
  the worker's event loop itself runs later than ``queue_timeout`` (``LoopLag``: the backlog no count sees). BentoML's own ``traffic.max_concurrency``
  (bentoml/_internal/server/http/traffic.py, ``MaxConcurrencyMiddleware``) answers 429 with no ``Retry-After`` and
  no queue: 429 tells the client *it* sent too many requests (RFC 6585), while overload is the server's state,
  which RFC 9110 section 15.6.4 spells 503 + ``Retry-After``; gateways and clients retry 503 on another replica,
  and the model_* metrics count it as ``unavailable``, a server-side error the rollout analysis sees.
- **Slow bodies.** Reading a request body takes at most ``body_timeout`` seconds; a client that sends a byte a
  second (or stops) is answered 408 with ``Connection: close`` and frees its slot. Handlers below see the cut-off
  client as disconnected.

Requests this middleware answers itself are reported to ``on_reject(scope, status)`` so the service counts them
in its metrics. Paths that are not prediction routes (health, metrics, docs) pass straight through.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import re
import typing as t

from service.errors import route_error_body
from service.settings import limits_from_env

# Paths this middleware guards and the media types each accepts; the MLflow scoring protocol also takes CSV.
JSON_TYPES = ("application/json",)
CSV_TYPES = ("text/csv", "application/csv")
MEDIA_TYPES_BY_PATH: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = (
    (re.compile(r"^/invocations$"), JSON_TYPES + CSV_TYPES),
    (re.compile(r"^/(predict|predict_batch|explain|v2/models/[^/]+(/versions/[^/]+)?/(infer|explain))$"), JSON_TYPES),
)
# A token as RFC 9110 section 5.6.2 defines it, for the type and subtype of a media type.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(rf"^\s*({_TOKEN}/{_TOKEN})\s*(;.*)?$")

Scope = dict[str, t.Any]
Message = dict[str, t.Any]
Receive = t.Callable[[], t.Awaitable[Message]]
Send = t.Callable[[Message], t.Awaitable[None]]
App = t.Callable[[Scope, Receive, Send], t.Awaitable[None]]
OnReject = t.Callable[[Scope, int], None]


@dataclasses.dataclass(frozen=True)
class AdmissionLimits:
    """Per-worker limits, read from the environment the deployment fills from stack config ``serving.*``."""

    max_concurrency: int
    max_queue: int
    queue_timeout: float
    body_timeout: float

    ENV: t.ClassVar[dict[str, str]] = {
        "max_concurrency": "MLSERVE_MAX_CONCURRENCY",
        "max_queue": "MLSERVE_MAX_QUEUE",
        "queue_timeout": "MLSERVE_QUEUE_TIMEOUT_SECONDS",
        "body_timeout": "MLSERVE_BODY_TIMEOUT_SECONDS",
    }
    # The same defaults as Pulumi.yaml's serving.* keys, for a server started without a deployment.
    DEFAULTS: t.ClassVar[dict[str, float]] = {
        "max_concurrency": 64, "max_queue": 16, "queue_timeout": 1.0, "body_timeout": 10.0,
    }

    @classmethod
    def from_env(cls, environ: t.Mapping[str, str] | None = None) -> AdmissionLimits:
        """Read the limits; every bad variable is reported at once, with its value and what is allowed."""
        return limits_from_env(cls, environ, minimums={"max_queue": 0})

    @property
    def retry_after(self) -> int:
        """Seconds a shed client should wait: one queue budget, so the queue has turned over."""
        return max(1, math.ceil(self.queue_timeout))


def accepted_media_types(path: str) -> tuple[str, ...] | None:
    """The media types a guarded path accepts, or None when the path is not a prediction route."""
    for pattern, media_types in MEDIA_TYPES_BY_PATH:
        if pattern.match(path):
            return media_types
    return None


def content_type_problem(content_type: bytes | None, accepted: tuple[str, ...]) -> str | None:
    """Why ``content_type`` cannot be read by a route accepting ``accepted``; None when it can (or is absent)."""
    if content_type is None:
        return None
    text = content_type.decode("latin-1")
    match = _MEDIA_TYPE.match(text)
    if not match:
        return f"malformed Content-Type {text!r}; send {' or '.join(accepted)}"
    media_type = match.group(1).lower()
    if media_type not in accepted:
        return f"unsupported Content-Type {media_type!r}; send {' or '.join(accepted)}"
    return None


class LoopLag:
    """How late the worker's event loop runs a callback due now: how long a request that has just arrived waits for
    the loop before any of our code sees it. Measured every ``INTERVAL`` by a timer on the loop itself (no task, no
    thread); it rises at once and decays by half per tick, so one quiet tick does not reopen a saturated loop."""

    INTERVAL = 0.01

    def __init__(self) -> None:
        self.seconds = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch(self) -> None:
        """Start measuring on the running loop (again, if the loop changed)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            loop.call_later(self.INTERVAL, self._tick, loop, loop.time() + self.INTERVAL)

    def _tick(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        if loop is not self._loop:
            return
        now = loop.time()
        late = max(0.0, now - due)
        self.seconds = late if late > self.seconds else (self.seconds + late) / 2
        loop.call_later(self.INTERVAL, self._tick, loop, now + self.INTERVAL)


class Slots:
    """A worker's prediction slots, shared by its HTTP routes and its gRPC server (one model, one event loop): at
    most ``max_concurrency`` predictions in progress, at most ``max_queue`` waiting, each at most ``queue_timeout``.

    Counting slots is not enough once the model runs off the loop and requests are batched: a CPU-bound worker at 2x
    its capacity spends its loop reading requests, and the excess waits in the socket and the loop's ready queue,
    where no count sees it (the 10-minute soak shed nothing at 2x and its p99 reached 9 s). So a request is also
    shed at once while the loop itself runs later than the latency budget (``LoopLag``): a 503 costs the loop a
    fraction of a prediction, so shedding drains the backlog and the lag falls back under the budget.

    A queue absorbs bursts; under sustained overload it only adds its whole budget to every accepted request (the
    2x overload of ``make bench`` accepted requests with a p99 of 1.8 s, the queue budget plus the work). So the
    queue tells a burst from overload, after CoDel (Nichols and Jacobson, "Controlling Queue Delay", ACM Queue 2012)
    in the form Facebook applies it to request queues ("Fail at Scale", ACM Queue 2015): when no slot has been free
    for ``STANDING`` seconds, the queue is standing, not absorbing a burst, and a request then waits at most
    ``STANDING_WAIT`` seconds for a slot. Once a slot is free again, a burst gets the whole ``queue_timeout``.
    """

    STANDING = 0.1
    STANDING_WAIT = 0.005

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self.in_flight = 0
        self.waiting = 0
        self.lag = LoopLag()
        # Set whenever a slot frees up; queued requests re-check the count (no FIFO promise, none needed).
        self._slot_freed = asyncio.Event()
        self._slot_free_at = 0.0  # loop time when a slot was last free with nobody waiting for it (see STANDING)

    async def acquire(self) -> bool:
        """Take a slot now, or wait in the bounded queue for at most the latency budget; False means shed."""
        self.lag.watch()
        if self.lag.seconds > self.limits.queue_timeout:
            return False
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.in_flight < self.limits.max_concurrency and self.waiting == 0:
            self._slot_free_at = now
            self.in_flight += 1
            return True
        if self.waiting >= self.limits.max_queue:
            return False
        self.waiting += 1
        deadline = now + self.queue_budget(now)
        try:
            while self.in_flight >= self.limits.max_concurrency:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                self._slot_freed.clear()
                try:
                    await asyncio.wait_for(self._slot_freed.wait(), remaining)
                except asyncio.TimeoutError:
                    return False
            self.in_flight += 1
            return True
        finally:
            self.waiting -= 1

    def queue_budget(self, now: float) -> float:
        """How long a request queued at ``now`` may wait for a slot: the whole budget in a burst, ``STANDING_WAIT``
        while the queue stands."""
        if now - self._slot_free_at > self.STANDING:
            return min(self.limits.queue_timeout, self.STANDING_WAIT)
        return self.limits.queue_timeout

    def release(self) -> None:
        """Give back a slot taken by ``acquire``."""
        self.in_flight -= 1
        if self.waiting == 0:
            self._slot_free_at = asyncio.get_running_loop().time()
        self._slot_freed.set()

    def overloaded(self) -> str:
        """What a shed request is told."""
        if self.lag.seconds > self.limits.queue_timeout:
            return (f"server overloaded: requests wait {self.lag.seconds:.2f}s for the worker, over the "
                    f"{self.limits.queue_timeout:g}s budget; retry after {self.limits.retry_after}s")
        return (f"server overloaded: {self.limits.max_concurrency} requests in progress and {self.waiting} waiting; "
                f"retry after {self.limits.retry_after}s")


class AdmissionMiddleware:
    """Refuse what a prediction route cannot read (415), shed overload (503) and cut off slow bodies (408).

    ``slots`` is the worker's ``Slots``, shared with its gRPC server; a middleware given none keeps its own.
    """

    def __init__(self, app: App, limits: AdmissionLimits, on_reject: OnReject | None = None,
                 slots: Slots | None = None) -> None:
        self.app = app
        self.limits = limits
        self.on_reject = on_reject
        self.slots = slots if slots is not None else Slots(limits)

    @property
    def in_flight(self) -> int:
        return self.slots.in_flight

    @property
    def waiting(self) -> int:
        return self.slots.waiting

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        accepted = accepted_media_types(scope.get("path", "")) if scope["type"] == "http" else None
        if accepted is None:
            await self.app(scope, receive, send)
            return
        if scope.get("method") == "POST":
            headers = dict(scope.get("headers") or [])
            problem = content_type_problem(headers.get(b"content-type"), accepted)
            if problem:
                await self._reject(scope, send, 415, problem)
                return
        if not await self.slots.acquire():
            await self._reject(scope, send, 503, self.slots.overloaded(),
                               [(b"retry-after", str(self.limits.retry_after).encode())])
            return
        try:
            await self._call_with_body_deadline(scope, receive, send)
        finally:
            self.slots.release()

    async def _call_with_body_deadline(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.body_timeout
        body_done = False
        timed_out = False
        started = False

        async def receive_before_deadline() -> Message:
            nonlocal body_done, timed_out
            if body_done or timed_out:
                return await receive() if not timed_out else {"type": "http.disconnect"}
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                # The app below sees a client that went away; this middleware answers it with 408.
                timed_out = True
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def send_unless_timed_out(message: Message) -> None:
            nonlocal started
            if timed_out:
                return  # the 408 below is this request's answer
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, receive_before_deadline, send_unless_timed_out)
        if timed_out and not started:
            await self._reject(
                scope, send, 408,
                f"request body not received within {self.limits.body_timeout:g}s (MLSERVE_BODY_TIMEOUT_SECONDS)",
                [(b"connection", b"close")],
            )

    async def _reject(
        self, scope: Scope, send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] = (),
    ) -> None:
        body = json.dumps(route_error_body(scope.get("path", ""), message, status)).encode()
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers,
            ],
        })
        await send({"type": "http.response.body", "body": body})
        if self.on_reject is not None:
            self.on_reject(scope, status)

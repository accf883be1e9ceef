"""Two BentoML 1.4.39 problems routed around: ``apply()`` patches them (idempotent), the service calls it.

bench/BENTOML_FINDINGS.md describes them for upstream and tests/service/test_bentoml_patches.py checks them.
Each is small enough to drop once BentoML ships a fix. Nothing is patched at import time of this module.
"""

from __future__ import annotations

import typing as t

def cancel_timeout_timers() -> None:
    """Make BentoML's TimeoutMiddleware cancel its timer once the request is answered.

    Upstream (bentoml/_internal/server/http/traffic.py:29) schedules ``loop.call_later(timeout, ...)`` for
    every request and never cancels it, so each request's future, send closure and ASGI scope (with its
    OpenTelemetry span) stay referenced by the event loop for ``traffic.timeout`` seconds. Under load that is
    hundreds of thousands of live objects, slow full collections (p99 spikes) and RSS that follows the request
    rate. Upstream also waits only on that timer, so an app that raises before responding leaves the client
    hanging for the whole timeout and the error unreported. Here: the same 504 when no response has started in
    time, the timer cancelled when the request is done, and an early failure raised at once (a 500).
    """
    import asyncio

    from bentoml._internal.server.http import traffic
    from starlette.responses import JSONResponse as StarletteJSONResponse

    if getattr(traffic.TimeoutMiddleware, "_mlserve_patched", False):
        return

    async def call(self: t.Any, scope: dict, receive: t.Callable, send: t.Callable) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message: dict) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
        # An app that fails (or returns) before responding wakes the waiter too, instead of leaving the
        # client hanging for the whole timeout and the exception unreported.
        fut.add_done_callback(lambda _: None if waiter.done() else waiter.set_result(None))
        try:
            await waiter
        except asyncio.TimeoutError:
            if fut.cancel():
                response = StarletteJSONResponse(
                    {"error": f"Not able to process the request in {self.timeout} seconds"}, status_code=504
                )
                await response(scope, receive, send)
        else:
            await fut
        finally:
            timer.cancel()

    traffic.TimeoutMiddleware.__call__ = call
    traffic.TimeoutMiddleware._mlserve_patched = True


def cache_io_media_types() -> None:
    """Compute each API output's media type once instead of building its JSON schema on every response.

    Upstream ``IOMixin.mime_type`` (_bentoml_sdk/io_models.py:125) calls ``model_json_schema()`` each time
    ``to_http_response`` runs; for a JSON API that is about 5% of a worker's CPU. The answer depends only
    on the (immutable) IO model class, so a per-class cache gives the same result.
    """
    import functools

    from _bentoml_sdk import io_models

    if getattr(io_models.IOMixin, "_mlserve_patched", False):
        return
    uncached = io_models.IOMixin.mime_type.__func__
    io_models.IOMixin.mime_type = classmethod(functools.cache(uncached))
    io_models.IOMixin._mlserve_patched = True


def apply() -> None:
    """Apply both fixes to the BentoML in this process."""
    cancel_timeout_timers()
    cache_io_media_types()

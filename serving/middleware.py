"""ASGI middlewares of the HTTP gateway (added to the BentoML service in `serving/service.py`).

- `BodyLimit`: refuses bodies over a limit with 413 before reading them all.
- `ArrivalTime`: notes when a request reached the app, on the monotonic and the wall clock, so
  the latency the gateway reports (and the policy learns) includes the time before the handler
  ran (body parsing, validation), and X-Request-Start is compared with the wall clock of arrival.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.responses import JSONResponse

ARRIVAL = "flexserve_arrival"  # the key in the ASGI scope's `state` (Starlette's `request.state`)


@dataclass(frozen=True, slots=True)
class Arrival:
    perf_s: float  # time.perf_counter() when the request reached the app
    unix_s: float  # time.time() at the same moment


def arrival_of(scope: dict) -> Arrival | None:
    return scope.get("state", {}).get(ARRIVAL)


class ArrivalTime:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            scope.setdefault("state", {})[ARRIVAL] = Arrival(time.perf_counter(), time.time())
        return await self.app(scope, receive, send)


class BodyLimit:
    """Refuse request bodies over `max_bytes` (a number, or a function read per request) with 413: at
    once from Content-Length, else as they stream in."""

    def __init__(self, app, max_bytes: int | Callable[[], int]):
        self.app = app
        self._max_bytes = max_bytes

    @property
    def max_bytes(self) -> int:
        return self._max_bytes() if callable(self._max_bytes) else self._max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_bytes
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await self._refuse(scope, receive, send, limit)
        seen, too_large = 0, False

        async def counted():
            nonlocal seen, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # the app sees the client leave; its answer, if any, is dropped
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def unless_refused(message):
            if not too_large:
                await send(message)

        try:
            await self.app(scope, counted, unless_refused)
        except Exception:
            if not too_large:
                raise
        if too_large:
            await self._refuse(scope, receive, send, limit)

    async def _refuse(self, scope, receive, send, limit: int):
        problem, accepted = "the request body is too large", f"at most {limit} bytes"
        body = {
            "error": {
                "field": "body",
                "problem": problem,
                "accepted": accepted,
                "message": f"body: {problem}; accepted: {accepted}",
            }
        }
        await JSONResponse(body, status_code=413)(scope, receive, send)

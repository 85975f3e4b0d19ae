"""ASGI middlewares of the HTTP gateway (added to the BentoML service in `serving/service.py`).

- `JsonOnly`: a POST whose Content-Type is not JSON gets 415 (400 if the header is malformed)
  before anything reads its body (BentoML would try a form parser, and answer 500 to a multipart
  type without a boundary).
- `ConcurrencyLimit`: past a number of requests in the process at once, 429 + Retry-After.
- `RequestTimeout`: 504 when no answer has started within the service's traffic timeout (BentoML's
  `TimeoutMiddleware`, with its timer cancelled once the request is answered).
- `ErrorBody`: BentoML's own 400 for a request its endpoint's schema refuses, and the router's
  plain-text 404 for a path no route takes, rewritten into FlexServe's one error body
  (`serving.schemas.ErrorBody`).
- `BodyLimit`: refuses bodies over a limit with 413 before reading them all.
- `ArrivalTime`: notes when a request reached the app, on the monotonic and the wall clock, so
  the latency the gateway reports (and the policy learns) includes the time before the handler
  ran (body parsing, validation), and X-Request-Start is compared with the wall clock of arrival.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.responses import JSONResponse

from serving.errors import FlexServeError, InvalidRequestError, OverloadError

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
        error = InvalidRequestError("body", "the request body is too large", f"at most {limit} bytes")
        await refuse(413, error)(scope, receive, send)


def refuse(status: int, error: FlexServeError, headers: dict | None = None) -> JSONResponse:
    """FlexServe's one error body, from a middleware."""
    return JSONResponse(error.body(), status_code=status, headers=headers)


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
# The parameters' loop is atomic and possessive: a header of spaces and semicolons cannot make it
# backtrack (it runs on the event loop, before anything else).
_MEDIA_TYPE = re.compile(rf"\s*({_TOKEN})/({_TOKEN})\s*(?>;\s*(?:{_TOKEN}=(?:{_TOKEN}|{_QUOTED}))?\s*)*+")
JSON_TYPES = ("application/json",)
BODY_METHODS = (b"POST", b"PUT", b"PATCH")


def media_type(header: str) -> str:
    """The media type of a Content-Type header, lower-cased and without parameters (RFC 9110 8.3.1);
    ValueError if it is not one."""
    match = _MEDIA_TYPE.fullmatch(header)
    if match is None:
        raise ValueError(header)
    return f"{match[1]}/{match[2]}".lower()


class JsonOnly:
    """415 for a request body that is not JSON (no Content-Type counts as JSON), 400 for a malformed
    Content-Type: nothing behind it ever parses a form."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"].encode() in BODY_METHODS:
            header = dict(scope.get("headers") or []).get(b"content-type")
            if header is not None:
                accepted = "application/json (optionally with a charset)"
                try:
                    kind = media_type(header.decode("latin-1"))
                except ValueError:
                    error = InvalidRequestError("Content-Type", f"{header.decode('latin-1')!r} is malformed", accepted)
                    return await refuse(400, error)(scope, receive, send)
                if kind not in JSON_TYPES:
                    error = InvalidRequestError("Content-Type", f"{kind} is not supported", accepted)
                    return await refuse(415, error)(scope, receive, send)
        return await self.app(scope, receive, send)


class ConcurrencyLimit:
    """429 + Retry-After past `max_requests` requests in this process at once (BentoML's own limit
    answers in another body); health, readiness and metrics are never refused."""

    EXEMPT = frozenset({"/metrics", "/healthz", "/livez", "/readyz"})

    def __init__(self, app, max_requests: int):
        self.app = app
        self.max_requests = max_requests
        self._slots = asyncio.Semaphore(max_requests)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.EXEMPT:
            return await self.app(scope, receive, send)
        if self._slots.locked():
            message = f"more than {self.max_requests} requests at once in this gateway process: retry shortly"
            return await refuse(429, OverloadError(message, 1.0), {"Retry-After": "1"})(scope, receive, send)
        async with self._slots:
            await self.app(scope, receive, send)


class RequestTimeout:
    """504 when no response has started within `timeout` seconds: BentoML's `TimeoutMiddleware`
    (`traffic={"timeout": ...}`), which `serving/service.py` replaces with this one, with two changes.
    Its timer is cancelled as soon as the answer starts: BentoML's stays scheduled for the whole
    timeout and holds the request's context (its tracing span) alive, so that at 300 req/s and a 30 s
    timeout ~9,000 dead requests (~100k objects) sat in each worker's heap, and every full garbage
    collection walked them (measured here: 40-110 ms pauses every few seconds in each worker under
    load, each one a burst of missed budgets). And an app that fails before answering is not waited
    on until the timeout: its error propagates at once (a 500)."""

    def __init__(self, app, timeout: float):
        self.app, self.timeout = app, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        started = loop.create_future()

        def expire() -> None:
            if not started.done():
                started.set_exception(TimeoutError())

        async def send_started(message) -> None:
            if not started.done():
                started.set_result(None)
            await send(message)

        timer = loop.call_later(self.timeout, expire)
        task = asyncio.ensure_future(self.app(scope, receive, send_started))
        task.add_done_callback(lambda _: started.done() or started.set_result(None))
        try:
            await started
        except TimeoutError:
            if task.cancel():
                error = FlexServeError(f"no answer within the server's {self.timeout:g} s request timeout")
                await refuse(504, error)(scope, receive, send)
            return
        finally:
            timer.cancel()
        await task


class ErrorBody:
    """BentoML answers a request its endpoint's schema refuses with its own 400 (`{"error": "1
    validation error for ...", "detail": [pydantic's errors]}`), and a path no route takes with a
    plain-text 404: both rewritten here into FlexServe's one error body (the first names the first
    field, its problem and what it accepts). Other answers pass as they are."""

    def __init__(
        self,
        app,
        rewrite: Callable[[list[dict]], InvalidRequestError],
        refused: Callable[[str], None] | None = None,
    ):
        """`rewrite`: pydantic's errors -> the error; `refused(path)`: told of each one (metrics)."""
        self.app = app
        self.rewrite = rewrite
        self.refused = refused

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, chunks = None, []

        async def intercept(message):
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] in (400, 404):
                start = message
                return None
            if start is None or message["type"] != "http.response.body":
                return await send(message)
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return None
            original = b"".join(chunks)
            body = self._rewritten(start["status"], original, scope["path"])
            drop = (b"content-length", b"content-type") if body is not original else (b"content-length",)
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in drop]
            headers.append((b"content-length", str(len(body)).encode()))
            if body is not original:
                headers.append((b"content-type", b"application/json"))
            await send({**start, "headers": headers})
            return await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, intercept)

    def _rewritten(self, status: int, body: bytes, path: str) -> bytes:
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if status == 404:
            if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
                return body  # already FlexServe's
            error = InvalidRequestError("path", f"{path!r} is not a route of this gateway", "the routes at /docs.json")
            return refuse(404, error).body
        if answer is None:
            return body
        if not (isinstance(answer, dict) and isinstance(answer.get("error"), str) and "detail" in answer):
            return body  # already FlexServe's
        detail = answer["detail"] if isinstance(answer["detail"], list) else []
        error = self.rewrite(detail)
        if self.refused is not None:
            self.refused(path)
        return refuse(400, error).body

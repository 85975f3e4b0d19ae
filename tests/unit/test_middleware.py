"""The gateway's ASGI middlewares alone, on a tiny app (no BentoML, no server)."""

import asyncio
import json
import time

from serving.middleware import Arrival, ArrivalTime, BodyLimit, arrival_of


class EchoLength:
    """An ASGI app that reads the whole body and answers its length (and records what it saw)."""

    def __init__(self):
        self.calls, self.scopes = 0, []

    async def __call__(self, scope, receive, send):
        self.calls += 1
        self.scopes.append(scope)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})


def call(app, chunks: list[bytes], headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, bytes]:
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers or []}
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_a_body_within_the_limit_reaches_the_app():
    app = EchoLength()
    assert call(BodyLimit(app, max_bytes=10), [b"12345", b"67890"]) == (200, b"10")


def test_a_declared_length_over_the_limit_is_refused_before_the_app_runs():
    app = EchoLength()
    status, body = call(BodyLimit(app, max_bytes=10), [b"x" * 11], headers=[(b"content-length", b"11")])
    assert status == 413 and app.calls == 0
    error = json.loads(body)["error"]
    assert error["field"] == "body" and error["accepted"] == "at most 10 bytes"


def test_a_streamed_body_over_the_limit_is_refused_once_it_passes_the_limit():
    app = EchoLength()
    status, body = call(BodyLimit(app, max_bytes=10), [b"x" * 6, b"x" * 6, b"x" * 6])  # no Content-Length
    assert status == 413 and json.loads(body)["error"]["problem"] == "the request body is too large"


def test_non_http_scopes_pass_through_both_middlewares():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope)

    for middleware in (BodyLimit(app, max_bytes=1), ArrivalTime(app)):
        asyncio.run(middleware({"type": "lifespan"}, None, None))
    assert len(seen) == 2 and all("state" not in s for s in seen)


def test_arrival_time_stamps_both_clocks_before_the_app_runs():
    app = EchoLength()
    before_mono, before_unix = time.perf_counter(), time.time()
    call(ArrivalTime(app), [b"{}"])
    arrival = arrival_of(app.scopes[0])
    assert isinstance(arrival, Arrival)
    assert before_mono <= arrival.perf_s <= time.perf_counter()
    assert before_unix - 1 <= arrival.unix_s <= time.time() + 1
    assert arrival_of({"type": "http"}) is None  # a request that did not pass the middleware


def test_media_types_are_parsed_as_rfc_9110_has_them():
    from serving.middleware import media_type

    assert media_type("application/json") == "application/json"
    assert media_type("Application/JSON; charset=utf-8") == "application/json"
    assert media_type("application/json;") == "application/json"  # an empty parameter is allowed
    assert media_type('multipart/form-data; boundary="a \\" b"') == "multipart/form-data"
    for malformed in ("json", "", "a/b; c", "a/b; c=", "a/b c"):
        try:
            media_type(malformed)
        except ValueError:
            continue
        raise AssertionError(f"{malformed!r} was accepted")


def test_a_header_of_semicolons_does_not_stall_the_parser():
    # With a backtracking parameter loop, 40 of these took longer than the test suite (it doubles
    # per pair); the atomic loop answers at once.
    from serving.middleware import media_type

    try:
        media_type("application/json" + "; " * 40 + ",")
    except ValueError:
        pass
    else:
        raise AssertionError("a trailing comma is not a media type")


def test_json_only_refuses_other_content_types_before_the_app_reads_them():
    from serving.middleware import JsonOnly

    app = EchoLength()
    only = JsonOnly(app)
    assert call(only, [b"{}"], [(b"content-type", b"application/json; charset=utf-8")])[0] == 200
    assert call(only, [b"{}"])[0] == 200  # no Content-Type: JSON
    status, body = call(only, [b"{}"], [(b"content-type", b"multipart/form-data")])
    assert status == 415 and json.loads(body)["error"]["field"] == "Content-Type"
    status, body = call(only, [b"{}"], [(b"content-type", b"garbage")])
    assert status == 400 and "malformed" in json.loads(body)["error"]["problem"]
    assert app.calls == 2  # the refused ones never reached it


def answering(status: int, body: bytes, content_type: bytes = b"application/json"):
    async def app(scope, receive, send):
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def headers_and_body(app) -> tuple[dict, dict]:
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.disconnect"}

    asyncio.run(app({"type": "http", "method": "POST", "path": "/v1/x", "headers": []}, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    headers = dict(start["headers"])
    assert int(headers[b"content-length"]) == len(body)
    return headers, json.loads(body)


def test_error_body_rewrites_bentomls_schema_refusal_and_plain_404s_only():
    from serving.edge import schema_error
    from serving.middleware import ErrorBody

    seen = []
    bentoml_400 = json.dumps(
        {"error": "1 validation error for Input", "detail": [{"type": "missing", "loc": ["user_id"], "msg": "x"}]}
    ).encode()
    headers, body = headers_and_body(ErrorBody(answering(400, bentoml_400), schema_error, seen.append))
    assert body["error"]["field"] == "user_id" and body["error"]["problem"] == "is missing" and seen == ["/v1/x"]
    headers, body = headers_and_body(ErrorBody(answering(404, b"Not Found", b"text/plain"), schema_error))
    assert headers[b"content-type"] == b"application/json" and body["error"]["field"] == "path"
    ours = json.dumps({"error": {"field": "k", "problem": "p", "accepted": "a", "message": "m"}}).encode()
    for status in (400, 404):  # FlexServe's own refusals pass as they are
        assert headers_and_body(ErrorBody(answering(status, ours), schema_error))[1]["error"]["field"] == "k"


def _request_with_timeout(app, timeout: float) -> tuple[list[dict], bool]:
    """`app` behind `RequestTimeout`, called on uvloop (BentoML's loop) from a task whose context holds
    an object (as BentoML's tracing span is when its timeout middleware runs): the messages sent, and
    whether that object could be freed once the request was over, with the loop still running."""
    import contextvars
    import gc
    import weakref

    import uvloop

    from serving.middleware import RequestTimeout

    class Span:
        pass

    span = contextvars.ContextVar("span")
    sent: list[dict] = []
    alive: list[weakref.ref] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    async def request():  # in a task of its own: its own copy of the context, as a server's request has
        thing = Span()
        alive.append(weakref.ref(thing))
        span.set(thing)
        del thing
        scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
        await asyncio.wait_for(RequestTimeout(app, timeout=timeout)(scope, receive, send), 5)

    async def serve():
        await asyncio.create_task(request())

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        try:
            runner.run(serve())
        finally:
            gc.collect()
            freed = alive[0]() is None  # only a timer still scheduled could hold the request's context now
    return sent, freed


async def _answer(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_request_timeout_lets_an_answered_requests_context_go_at_once():
    """BentoML's own middleware keeps every request's timer (and the context it captured) for the whole
    timeout; FlexServe's cancels it when the answer starts, so the request's objects can be freed."""
    sent, freed = _request_with_timeout(_answer, timeout=30.0)
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [200]
    assert freed


def test_request_timeout_answers_504_in_flexserves_error_body_when_nothing_started_in_time():
    cancelled = []

    async def stuck(scope, receive, send):
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    started = time.perf_counter()
    sent, _ = _request_with_timeout(stuck, timeout=0.05)
    assert time.perf_counter() - started < 2
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [504]
    body = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
    assert "0.05 s request timeout" in body["error"]["message"]
    assert cancelled == [True]


def test_request_timeout_lets_an_app_that_fails_before_answering_fail_at_once():
    """BentoML's waits out the whole timeout when the app raises before answering; this one does not."""
    import pytest

    async def broken(scope, receive, send):
        raise RuntimeError("the app failed")

    started = time.perf_counter()
    with pytest.raises(RuntimeError, match="the app failed"):
        _request_with_timeout(broken, timeout=30.0)
    assert time.perf_counter() - started < 2

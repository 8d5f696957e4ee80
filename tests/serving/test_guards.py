import asyncio

from relevance.serving.guards import HttpGuard


def call(guard: HttpGuard, length: bytes | None, chunks: tuple[bytes, ...] = (b"",)) -> list[dict]:
    sent, reached = [], []
    pending = list(chunks)

    async def app(scope, receive, send):
        reached.append(scope["path"])
        while (await receive()).get("more_body"):  # reads the whole body, as KServe does
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive():
        body = pending.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    async def send(message):
        sent.append(message)

    headers = [(b"content-length", length)] if length is not None else []
    scope = {"type": "http", "method": "POST", "path": "/v1/models/m:predict", "headers": headers,
             "query_string": b""}
    guard.app = app
    asyncio.run(guard(scope, receive, send))
    return [m for m in sent if m["type"] == "http.response.start"], reached


def test_bodies_over_the_limit_are_refused_before_the_app_sees_them():
    guard = HttpGuard(None, max_request_bytes=100)
    (start,), reached = call(guard, b"101")
    assert start["status"] == 413 and not reached
    (start,), reached = call(guard, b"not a number")
    assert start["status"] == 413 and not reached
    (start,), reached = call(guard, b"100")
    assert start["status"] == 200 and reached == ["/v1/models/m:predict"]


def test_a_streamed_body_over_the_limit_is_refused_too():
    counted = []
    guard = HttpGuard(None, max_request_bytes=100, count=counted.append)
    (start,), _ = call(guard, None, (b"x" * 60, b"x" * 60))  # chunked: no content-length
    assert start["status"] == 413 and counted == [413]
    (start,), _ = call(guard, None, (b"x" * 60, b"x" * 40))
    assert start["status"] == 200 and counted == [413, 200]

import asyncio

from relevance.serving.guards import HttpGuard


def call(guard: HttpGuard, length: bytes | None) -> list[dict]:
    sent, reached = [], []

    async def app(scope, receive, send):
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

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

"""What the rerank server's HTTP layer answers around the model (relevance.serving.server installs these on
KServe's FastAPI app): bodies over the limit refused before they are read (413), every response counted by
status, a 400 naming each bad field of a V2 body, and a 503 when the feature store's online store is down."""

from __future__ import annotations

import functools

from relevance.serving.metrics import metrics


@functools.cache
def _body_too_large():
    """What a streamed body over the limit raises: an HTTPException(413), so that FastAPI, which turns any other
    error while it reads a body into a 400, passes it on; the guard answers it where the app does not. Made once
    (starlette imported on first use): a class made per request cost each request ~8 µs."""
    from starlette.exceptions import HTTPException

    class BodyTooLarge(HTTPException):
        pass

    return BodyTooLarge


def _count_status(status: int) -> None:
    metrics().http_responses.labels(str(status)).inc()


class HttpGuard:
    """ASGI middleware: refuse bodies over the limit (413) — by Content-Length before they are read, and while
    they stream when there is none (chunked) — and count every response by status code (``count``; the rerank
    server's relevance_http_responses by default), including the ones KServe gives before a model is reached.
    Plain ASGI rather than @app.middleware("http"), which costs a task switch per request. The traffic sink
    (relevance.serving.traffic_sink) guards its events with it too."""

    def __init__(self, app, max_request_bytes: int, count=_count_status):
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.count = count

    async def _refuse(self, scope, receive, send, what: str) -> None:
        from starlette.responses import JSONResponse

        self.count(413)
        response = JSONResponse({"error": f"request body over the {self.max_request_bytes}-byte limit ({what})"},
                                status_code=413)
        await response(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None:
            text = length.decode("latin-1")
            if not text.isdigit() or int(text) > self.max_request_bytes:
                return await self._refuse(scope, receive, send, f"content-length {text[:20]}")
        received, started = 0, False
        too_large = _body_too_large()

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_request_bytes:
                    raise too_large(413, f"request body over the {self.max_request_bytes}-byte limit")
            return message

        async def counted(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                self.count(message["status"])
            await send(message)

        try:
            await self.app(scope, limited if length is None else receive, counted)
        except too_large:
            if started:  # the app answered before it read the whole body: nothing more to say
                return
            await self._refuse(scope, receive, send, "a streamed body")


async def invalid_request_body(request, error):
    """A body that isn't a V2 InferenceRequest: 400 naming each bad field. FastAPI's default handler echoes the
    offending values back, and fails with a 500 on the ones JSON can't hold (NaN, Infinity)."""
    from starlette.responses import JSONResponse

    problems = "; ".join(f"{'.'.join(str(part) for part in e.get('loc', ()))}: {e.get('msg', '')}"
                         for e in error.errors()[:10])
    return JSONResponse({"error": f"invalid V2 inference request: {problems}"}, status_code=400)


async def item_source_unavailable(request, error):
    """The feature store's online store did not answer: 503 with one line saying so, and one log line (KServe's
    catch-all would answer 500 and log a traceback for what is an outage of another service, not a bug here).
    The server stays up, and the next request reads the store again."""
    from kserve.logging import logger
    from starlette.responses import JSONResponse

    logger.warning("503 %s %s: %s", request.method, request.url.path, error)
    return JSONResponse({"error": f"{error}; retry"}, status_code=503, headers={"Retry-After": "1"})

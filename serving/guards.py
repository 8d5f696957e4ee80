"""What the rerank server's HTTP layer answers around the model (relevance.serving.server installs these on
KServe's FastAPI app): bodies over the limit refused before they are read (413), every response counted by
status, a 400 naming each bad field of a V2 body, and a 503 when the feature store's online store is down."""

from __future__ import annotations

from relevance.serving.metrics import metrics


class HttpGuard:
    """ASGI middleware: refuse bodies over the limit before they are read (413), and count every response by
    status code, including the ones KServe gives before a model is reached. Plain ASGI rather than
    @app.middleware("http"), which costs a task switch per request."""

    def __init__(self, app, max_request_bytes: int):
        self.app = app
        self.max_request_bytes = max_request_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0").decode("latin-1")
        if not length.isdigit() or int(length) > self.max_request_bytes:
            from starlette.responses import JSONResponse

            metrics().http_responses.labels("413").inc()
            response = JSONResponse({"error": f"request body over the {self.max_request_bytes}-byte limit "
                                              f"(content-length {length[:20]})"}, status_code=413)
            return await response(scope, receive, send)

        async def counted(message):
            if message["type"] == "http.response.start":
                metrics().http_responses.labels(str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counted)


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

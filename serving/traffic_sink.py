"""`relevance traffic-sink`: where KServe's payload logger sends the rerank server's traffic.

An InferenceService whose transformer has ``logger: {mode: response, url: <this service>}`` (``all`` also posts
the requests) posts a CloudEvent per response (binary mode; ``ce-id`` is the request id, ``ce-type`` ends in
``.request`` or ``.response``). The
response alone holds everything a traffic record needs (relevance.serving.traffic reads it, as the server does
when it writes its own records), so request events are counted and acknowledged, and each response event
becomes records in a :class:`relevance.traffic.TrafficLog`.

Faults: an event over ``max_event_bytes`` is refused (413) before it is read; one that is not a CloudEvent, not
JSON or not a rerank response gets a 400 naming what is wrong; each is counted in
``relevance_traffic_events_total{outcome}`` and the sink carries on. An event is acknowledged (202) only once
its records are in the write-ahead log, so a sink killed at any point loses none it acknowledged, and the
logger's retries are de-duplicated by request id when the traffic is read.
"""

from __future__ import annotations

import contextlib
import json
import collections
from datetime import datetime, timezone

from relevance.serving.traffic import response_records
from relevance.traffic import TrafficLog, TrafficRecordError

OUTCOMES = ("stored", "request_event", "oversized", "malformed", "not_a_response", "rejected_record")


def sink_app(log: TrafficLog, max_event_bytes: int, model_name: str):
    """The sink's ASGI app: POST / (CloudEvents), GET /healthz, GET /metrics (Prometheus, its own registry)."""
    from cloudevents.http import from_http
    from prometheus_client import CollectorRegistry, Counter, generate_latest
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from relevance.serving.guards import HttpGuard

    registry = CollectorRegistry()
    events = Counter("relevance_traffic_events", "Payload-logger events the traffic sink received, by outcome",
                     ["outcome"], registry=registry)
    records = Counter("relevance_traffic_records", "Traffic records the sink stored", registry=registry)
    for outcome in OUTCOMES:
        events.labels(outcome)

    def refuse(outcome: str, status: int, message: str) -> Response:
        events.labels(outcome).inc()
        return JSONResponse({"error": message}, status_code=status)

    async def receive(request) -> Response:
        body = await request.body()  # within the limit: HttpGuard refused (413) anything larger
        try:
            event = from_http(dict(request.headers), body, data_unmarshaller=lambda data: data)
        except Exception as error:  # the SDK's own errors, and what it lets through (bad UTF-8, deep JSON)
            return refuse("malformed", 400, f"not a CloudEvent: {type(error).__name__}: {str(error)[:300]}")
        kind = str(event["type"])
        if kind.endswith(".request"):  # the response carries what a record needs
            events.labels("request_event").inc()
            return Response(status_code=202)
        if not kind.endswith(".response"):
            return refuse("not_a_response", 400, f"ce-type {kind[:100]!r}: expected a payload logger's "
                                                 "….request or ….response event")
        moment = event.get("time")  # RFC 3339 text, parsed and checked with the record (relevance.traffic)
        if moment is not None and not isinstance(moment, str):
            return refuse("malformed", 400, f"event time: expected RFC 3339 text, got {type(moment).__name__}")
        try:
            data = json.loads(event.data) if isinstance(event.data, (bytes, str)) else event.data
        except (ValueError, TypeError, RecursionError) as error:
            return refuse("malformed", 400, f"event data is not JSON: {type(error).__name__}: {str(error)[:200]}")
        name = str(event.get("inferenceservicename") or model_name)
        try:
            found = response_records(data, str(event["id"]), moment or datetime.now(timezone.utc), name, "logger")
        except TrafficRecordError as error:
            return refuse("malformed", 400, f"not a rerank response: {error}")
        before = collections.Counter(log.rejected)
        stored = sum(log.append(record) for record in found)
        records.inc(stored)
        if stored < len(found):
            reasons = dict((log.rejected - before).most_common(3))
            return refuse("rejected_record", 400, f"{len(found) - stored} of {len(found)} record(s) refused: "
                                                  f"{reasons}")
        events.labels("stored").inc()
        return Response(status_code=202)

    async def healthz(request) -> Response:
        return JSONResponse({"status": "ok", "appended": log.appended, "compacted": log.compacted,
                             "rejected": dict(log.rejected), "compaction_errors": log.compaction_errors,
                             "last_error": log.last_error})

    async def metrics(request) -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        # Here, not after uvicorn.run returns: uvicorn re-raises the SIGTERM it caught once it has shut down,
        # which ends the process before any code after it.
        log.close()

    def counted(status: int) -> None:
        if status == 413:
            events.labels("oversized").inc()

    return Starlette(routes=[Route("/", receive, methods=["POST"]), Route("/healthz", healthz),
                             Route("/metrics", metrics)], lifespan=lifespan,
                     middleware=[Middleware(HttpGuard, max_request_bytes=max_event_bytes, count=counted)])


def run_sink(directory: str, port: int, host: str, max_event_bytes: int, segment_seconds: float, fsync: bool,
             model_name: str) -> None:
    """Serve the sink until SIGTERM / Ctrl-C; on the way out every record is compacted (readable)."""
    import uvicorn

    log = TrafficLog(directory, segment_seconds=segment_seconds, fsync=fsync, background=True)
    uvicorn.run(sink_app(log, max_event_bytes, model_name), host=host, port=port, log_level="warning",
                timeout_graceful_shutdown=10)

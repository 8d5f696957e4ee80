"""`relevance traffic-sink`: where KServe's payload logger sends the rerank server's traffic.

An InferenceService whose transformer has ``logger: {mode: all, url: <this service>}`` posts two CloudEvents per
request (binary mode; ``ce-id`` is the request id, ``ce-type`` ends in ``.request`` or ``.response``). The
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
from datetime import datetime, timezone

from relevance.serving.traffic import response_records
from relevance.traffic import TrafficLog, TrafficRecordError

OUTCOMES = ("stored", "request_event", "oversized", "malformed", "not_a_response", "rejected_record")


class _TooLarge(Exception):
    pass


async def _body(request, limit: int) -> bytes:
    """The request body, refusing (before reading it all) one over ``limit`` bytes, with or without a length."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise _TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def sink_app(log: TrafficLog, max_event_bytes: int, model_name: str):
    """The sink's ASGI app: POST / (CloudEvents), GET /healthz, GET /metrics (Prometheus, its own registry)."""
    from cloudevents.exceptions import GenericException
    from cloudevents.http import from_http
    from prometheus_client import CollectorRegistry, Counter, generate_latest
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

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
        try:
            body = await _body(request, max_event_bytes)
        except _TooLarge:
            return refuse("oversized", 413, f"event over the {max_event_bytes}-byte limit")
        try:
            event = from_http(dict(request.headers), body, data_unmarshaller=lambda data: data)
        except GenericException as error:
            return refuse("malformed", 400, f"not a CloudEvent: {str(error)[:300]}")
        kind = str(event["type"])
        if kind.endswith(".request"):  # the response carries what a record needs
            events.labels("request_event").inc()
            return Response(status_code=202)
        if not kind.endswith(".response"):
            return refuse("not_a_response", 400, f"ce-type {kind[:100]!r}: expected a payload logger's "
                                                 "….request or ….response event")
        try:
            data = json.loads(event.data) if isinstance(event.data, (bytes, str)) else event.data
            moment = datetime.fromisoformat(event["time"].replace("Z", "+00:00")) if event.get("time") else None
        except (ValueError, TypeError) as error:
            return refuse("malformed", 400, f"event data or time is not valid: {str(error)[:200]}")
        name = str(event.get("inferenceservicename") or model_name)
        try:
            found = response_records(data, str(event["id"]), moment or datetime.now(timezone.utc), name, "logger")
        except TrafficRecordError as error:
            return refuse("malformed", 400, f"not a rerank response: {error}")
        stored = sum(log.append(record) for record in found)
        records.inc(stored)
        if stored < len(found):
            return refuse("rejected_record", 400, f"{len(found) - stored} of {len(found)} record(s) refused: "
                                                  f"{dict(log.rejected.most_common(3))}")
        events.labels("stored").inc()
        return Response(status_code=202)

    async def healthz(request) -> Response:
        return JSONResponse({"status": "ok", "appended": log.appended, "compacted": log.compacted})

    async def metrics(request) -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        # Here, not after uvicorn.run returns: uvicorn re-raises the SIGTERM it caught once it has shut down,
        # which ends the process before any code after it.
        log.close()

    return Starlette(routes=[Route("/", receive, methods=["POST"]), Route("/healthz", healthz),
                             Route("/metrics", metrics)], lifespan=lifespan)


def run_sink(directory: str, port: int, host: str, max_event_bytes: int, segment_seconds: float, fsync: bool,
             model_name: str) -> None:
    """Serve the sink until SIGTERM / Ctrl-C; on the way out every record is compacted (readable)."""
    import uvicorn

    log = TrafficLog(directory, segment_seconds=segment_seconds, fsync=fsync, background=True)
    uvicorn.run(sink_app(log, max_event_bytes, model_name), host=host, port=port, log_level="warning",
                timeout_graceful_shutdown=10)

"""The model server's Prometheus collectors, on KServe's /metrics (the default registry).

What the canary analysis (relevance.serving.canary.analysis) reads off a replica: request latency and outcomes
per protocol, HTTP responses by status code (including those refused before a model is reached), the query
cache's hits and misses, unknown items, candidates per request, and which process the counters belong to.
Kept apart from the request handling so that the metric names and buckets, which dashboards and the canary's
proxies (relevance.serving.canary.local) depend on, live in one short module. Importing it registers nothing:
the collectors are created on first use (:func:`metrics`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

# Buckets from 0.5 ms: the student's latency budget is single-digit milliseconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class ServerMetrics:
    """The server's Prometheus collectors (on KServe's /metrics, in the default registry)."""

    request_seconds: object
    requests: object
    http_responses: object
    cache_hits: object
    cache_misses: object
    cache_hit_rate: object
    unknown_items: object
    candidates: object
    capture_failures: object
    server: object


@functools.cache
def metrics() -> ServerMetrics:
    """The collectors, registered once per process on first use (registering them at import would make a second
    import, or a test that builds two servers, fail with duplicated time series)."""
    import socket

    from prometheus_client import Counter, Gauge, Histogram, Info

    # Which process these counters belong to (the pod's hostname, next to the default registry's
    # process_start_time_seconds): the canary analysis tells a restart (same instance, later start) from scrapes
    # that reached two replicas (another instance), which must never read as a restart.
    server = Info("relevance_server", "The serving process the counters belong to")
    server.info({"instance": socket.gethostname()})
    return ServerMetrics(server=server,
        request_seconds=Histogram("relevance_request_seconds", "Model latency of a rerank request (preprocess → "
                                  "predict → postprocess)", ["model_name", "protocol"], buckets=LATENCY_BUCKETS),
        requests=Counter("relevance_requests", "Rerank requests by outcome (ok, bad_request, error)",
                         ["model_name", "protocol", "outcome"]),
        capture_failures=Counter("relevance_traffic_capture_failures", "Responses whose traffic records could not be "
                                 "written (the request was answered)", ["model_name"]),
        http_responses=Counter("relevance_http_responses", "HTTP responses by status code, including requests "
                               "refused before reaching a model (malformed JSON, oversized body)", ["code"]),
        cache_hits=Counter("relevance_query_cache_hits", "Query-embedding cache hits", ["model_name"]),
        cache_misses=Counter("relevance_query_cache_misses", "Query-embedding cache misses", ["model_name"]),
        cache_hit_rate=Gauge("relevance_query_cache_hit_rate", "Query-embedding cache hits / lookups since start",
                             ["model_name"]),
        unknown_items=Counter("relevance_unknown_items", "Candidates not in the online store (scored with "
                              "defaults)", ["model_name"]),
        candidates=Histogram("relevance_candidates_per_request", "Candidates per rerank request", ["model_name"],
                             buckets=(1, 10, 50, 100, 200, 500, 1000, 5000)),
    )

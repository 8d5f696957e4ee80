"""What one served request leaves behind: the traffic record, its checks and its parquet schema.

A record is one query's reranking as the server answered it: which request (``request_id``, and ``instance`` for
the n-th query of a V1 request holding several), when, which student and embedding version, the query and locale,
the candidates in the order they were returned with their scores (expected grade), and which of them the
feature store did not know. The transformer writes records itself (``relevance serve --traffic-dir``); the sink
for KServe's payload logger builds the same records from the response events it receives
(relevance.serving.traffic_sink). Everything downstream (monitoring, selection for labelling) reads them.

Every record is checked here, whoever made it: a malformed one raises :class:`TrafficRecordError` naming the
field, and a writer counts and skips it instead of storing it.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

# The serving config's hard limits: a request the server may accept always fits a record.
from relevance.config.serving import CANDIDATES_LIMIT, ITEM_ID_CHARS_LIMIT, QUERY_CHARS_LIMIT

MAX_REQUEST_ID_CHARS = 256
MAX_VERSION_CHARS = 256
FLOAT32_MAX = float(np.finfo(np.float32).max)

SCHEMA = pa.schema([
    ("request_id", pa.string()),
    ("instance", pa.int32()),  # the query's position in its request (V1 requests may hold several)
    ("time", pa.timestamp("us", tz="UTC")),
    ("model_name", pa.string()),
    ("model_version", pa.string()),  # the student's content version (its serving bundle's student_version)
    ("embedding_version", pa.string()),  # the feature version it read item embeddings from (the Feast project)
    ("query", pa.string()),
    ("locale", pa.string()),
    ("item_ids", pa.list_(pa.string())),  # as returned: best first
    ("scores", pa.list_(pa.float32())),  # expected grade, aligned with item_ids
    ("unknown", pa.list_(pa.bool_())),  # the feature store had no features for the item
    ("query_cache_hit", pa.bool_()),  # null when the source does not say (the payload logger)
    ("source", pa.string()),  # "transformer" (written by the server) or "logger" (the payload logger's sink)
])
KEY = ("request_id", "instance")
SOURCES = ("transformer", "logger")


class TrafficRecordError(ValueError):
    """A traffic record that cannot be stored; the message names the field and what is wrong with it, and
    :attr:`field` is the field alone (a bounded set of names to count refusals by)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field or message.split(":")[0].split("[")[0]


def _text(record: dict, name: str, limit: int, required: bool = True) -> str:
    value = record.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise TrafficRecordError(f"{name}: expected a non-empty string, got {type(value).__name__}")
    if len(value) > limit:
        raise TrafficRecordError(f"{name}: at most {limit} characters, got {len(value)}")
    return value


def _time(value) -> datetime:
    try:
        return _parse_time(value)
    except (OverflowError, OSError):  # beyond what a datetime holds (year 1 with an offset, 1e20 seconds)
        raise TrafficRecordError(f"time: out of range, got {str(value)[:40]!r}") from None


def _parse_time(value) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        moment = datetime.fromtimestamp(value, timezone.utc)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise TrafficRecordError(f"time: expected an ISO 8601 time, got {value[:40]!r}") from None
    else:
        raise TrafficRecordError(f"time: expected an ISO 8601 time or seconds since the epoch, got "
                                 f"{type(value).__name__}")
    if moment.tzinfo is None:
        raise TrafficRecordError("time: expected a time with a UTC offset, got a naive one")
    return moment.astimezone(timezone.utc)


def traffic_record(record) -> dict:
    """``record`` checked and normalised to :data:`SCHEMA`'s columns; :class:`TrafficRecordError` if it is not a
    record. Unknown fields are an error too: a record that says something this schema cannot hold is refused,
    not silently cut down."""
    if not isinstance(record, dict):
        raise TrafficRecordError(f"expected an object, got {type(record).__name__}")
    unknown_fields = sorted(map(str, set(record) - set(SCHEMA.names)))
    if unknown_fields:
        raise TrafficRecordError(f"unknown field(s) {[f[:40] for f in unknown_fields[:5]]}", "unknown fields")
    instance = record.get("instance", 0)
    if isinstance(instance, bool) or not isinstance(instance, int) or not 0 <= instance < 1 << 31:
        raise TrafficRecordError(f"instance: expected a non-negative integer, got {instance!r}"[:120])
    items = record.get("item_ids")
    if not isinstance(items, list) or not items:
        raise TrafficRecordError("item_ids: expected a non-empty list of item ids")
    if len(items) > CANDIDATES_LIMIT:
        raise TrafficRecordError(f"item_ids: at most {CANDIDATES_LIMIT} items, got {len(items)}")
    for position, item_id in enumerate(items):
        if not isinstance(item_id, str) or not item_id or len(item_id) > ITEM_ID_CHARS_LIMIT:
            raise TrafficRecordError(f"item_ids[{position}]: expected a non-empty string of at most "
                                     f"{ITEM_ID_CHARS_LIMIT} characters, got {item_id!r}"[:160])
    scores = record.get("scores")
    if not isinstance(scores, list) or len(scores) != len(items):
        raise TrafficRecordError(f"scores: expected one number per item ({len(items)})")
    # Stored as float32: finite there, not only as a Python float (1e300 would be stored as inf).
    if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and abs(s) <= FLOAT32_MAX for s in scores):
        raise TrafficRecordError(f"scores: expected finite numbers of at most {FLOAT32_MAX:.4g} in magnitude")
    unknown = record.get("unknown")
    if unknown is None:
        unknown = [False] * len(items)
    if not isinstance(unknown, list) or len(unknown) != len(items) or not all(isinstance(u, bool) for u in unknown):
        raise TrafficRecordError(f"unknown: expected one true/false per item ({len(items)})")
    hit = record.get("query_cache_hit")
    if hit is not None and not isinstance(hit, bool):
        raise TrafficRecordError(f"query_cache_hit: expected true, false or null, got {type(hit).__name__}")
    source = record.get("source")
    if source not in SOURCES:
        raise TrafficRecordError(f"source: expected one of {list(SOURCES)}, got {str(source)[:40]!r}")
    return {
        "request_id": _text(record, "request_id", MAX_REQUEST_ID_CHARS),
        "instance": instance,
        "time": _time(record.get("time")),
        "model_name": _text(record, "model_name", MAX_VERSION_CHARS),
        "model_version": _text(record, "model_version", MAX_VERSION_CHARS),
        "embedding_version": _text(record, "embedding_version", MAX_VERSION_CHARS, required=False),
        "query": _text(record, "query", QUERY_CHARS_LIMIT),
        "locale": _text(record, "locale", 35, required=False),
        "item_ids": items,
        "scores": [float(s) for s in scores],
        "unknown": unknown,
        "query_cache_hit": hit,
        "source": source,
    }

from datetime import datetime, timezone

import pytest

from relevance.traffic import TrafficRecordError, traffic_record


def record(**changes) -> dict:
    base = {"request_id": "r-1", "instance": 0, "time": "2026-12-03T10:15:00Z", "model_name": "relevance-student",
            "model_version": "abc123", "embedding_version": "relevance_0f", "query": "cordless drill",
            "locale": "en-US", "item_ids": ["a", "b"], "scores": [2.5, 1.0], "unknown": [False, True],
            "query_cache_hit": True, "source": "transformer"}
    return {**base, **changes}


def test_a_record_is_normalised():
    normal = traffic_record(record(time=1_764_756_900.0, scores=[3, 1.5]))
    assert normal["time"] == datetime.fromtimestamp(1_764_756_900, timezone.utc)
    assert normal["scores"] == [3.0, 1.5] and isinstance(normal["scores"][0], float)
    assert traffic_record(record(unknown=None, locale=None, embedding_version=None))["unknown"] == [False, False]


@pytest.mark.parametrize("changes, field", [
    ({"request_id": ""}, "request_id"),
    ({"request_id": "x" * 300}, "request_id"),
    ({"instance": -1}, "instance"),
    ({"instance": True}, "instance"),
    ({"time": "yesterday"}, "time"),
    ({"time": "2026-12-03T10:15:00"}, "time"),  # naive: which zone?
    ({"time": float("nan")}, "time"),
    ({"item_ids": []}, "item_ids"),
    ({"item_ids": ["a", 7]}, "item_ids[1]"),
    ({"item_ids": ["a"] * 10_001, "scores": [1.0] * 10_001, "unknown": None}, "item_ids"),
    ({"scores": [1.0]}, "scores"),
    ({"scores": [1.0, float("inf")]}, "scores"),
    ({"scores": [1.0, "2"]}, "scores"),
    ({"unknown": [1, 0]}, "unknown"),
    ({"query": " "}, "query"),
    ({"query_cache_hit": "yes"}, "query_cache_hit"),
    ({"source": "elsewhere"}, "source"),
    ({"extra": 1}, "unknown field"),
])
def test_malformed_records_name_the_field(changes, field):
    with pytest.raises(TrafficRecordError, match=f"^{field.replace('[', '.').replace(']', '.')}"):
        traffic_record(record(**changes))
    with pytest.raises(TrafficRecordError, match="expected an object"):
        traffic_record(["not", "a", "record"])

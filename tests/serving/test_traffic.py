from datetime import datetime, timezone

import pytest

from relevance.serving.traffic import response_records
from relevance.traffic import TrafficRecordError, traffic_record

NOW = datetime(2026, 12, 3, 10, tzinfo=timezone.utc)
V1 = {"predictions": [
    {"query": "drill", "locale": "en-US", "model_version": "s1", "embedding_version": "relevance_ab",
     "query_cache_hit": True, "items": [{"item_id": "b", "score": 2.5, "probs": [0, 0, 0.5, 0.5, 0], "unknown": False},
                                        {"item_id": "a", "score": 1.0, "probs": [0, 1, 0, 0, 0], "unknown": True}]},
    {"query": "sofa", "locale": "", "model_version": "s1", "embedding_version": "relevance_ab",
     "query_cache_hit": False, "items": [{"item_id": "c", "score": 0.5, "probs": [0.5, 0.5, 0, 0, 0],
                                          "unknown": False}]}]}
V2 = {"model_name": "relevance-student", "id": "req-2", "parameters": {
    "query": "drill", "locale": "en-US", "model_version": "s1", "embedding_version": "relevance_ab",
    "query_cache_hit": True}, "outputs": [
    {"name": "item_id", "shape": [2], "datatype": "BYTES", "data": ["b", "a"]},
    {"name": "score", "shape": [2], "datatype": "FP32", "data": [2.5, 1.0]},
    {"name": "probs", "shape": [2, 5], "datatype": "FP32", "data": [0.0] * 10},
    {"name": "unknown", "shape": [2], "datatype": "BOOL", "data": [False, True]}]}


def test_v1_and_v2_responses_give_the_same_records():
    v1 = [traffic_record(r) for r in response_records(V1, "req-1", NOW, "relevance-student", "logger")]
    v2 = [traffic_record(r) for r in response_records(V2, "req-1", NOW, "relevance-student", "logger")]
    assert [r["instance"] for r in v1] == [0, 1] and v1[1]["query"] == "sofa" and v1[1]["item_ids"] == ["c"]
    assert v1[0] == v2[0]
    assert v1[0]["item_ids"] == ["b", "a"] and v1[0]["scores"] == [2.5, 1.0] and v1[0]["unknown"] == [False, True]
    assert v1[0]["model_version"] == "s1" and v1[0]["embedding_version"] == "relevance_ab"


@pytest.mark.parametrize("body, message", [
    ([], "expected a JSON object"),
    ({"predictions": []}, "predictions"),
    ({"predictions": [{"query": "q"}]}, r"predictions\[0\]"),
    ({"predictions": [{"items": [1]}]}, r"predictions\[0\].items"),
    ({"outputs": "x"}, "outputs"),
    ({"outputs": [{"name": "score", "data": [1.0]}]}, "item_id"),
    ({"outputs": [], "parameters": []}, "parameters"),
])
def test_what_is_not_a_rerank_response_is_named(body, message):
    with pytest.raises(TrafficRecordError, match=message):
        response_records(body, "r", NOW, "m", "logger")

"""Traffic records from the rerank server's responses: the one reading of a response that both the server
(``relevance serve --traffic-dir``, writing its own records) and the sink for KServe's payload logger
(relevance.serving.traffic_sink) use, so the two sources store the same rows.

A V1 response is ``{"predictions": [{"query", "locale", "model_version", "embedding_version", "query_cache_hit",
"items": [{"item_id", "score", "probs", "unknown"}, ...]}, ...]}`` (one prediction per instance); a V2 response
carries ``item_id`` / ``score`` / ``unknown`` outputs and the query, locale and versions in its parameters.
"""

from __future__ import annotations

from datetime import datetime

from relevance.traffic import TrafficRecordError


def _v1_records(body: dict) -> list[dict]:
    predictions = body.get("predictions")
    if not isinstance(predictions, list) or not predictions:
        raise TrafficRecordError("predictions: expected a non-empty list")
    records = []
    for instance, prediction in enumerate(predictions):
        if not isinstance(prediction, dict) or not isinstance(prediction.get("items"), list):
            raise TrafficRecordError(f"predictions[{instance}]: expected an object with items")
        items = prediction["items"]
        if not all(isinstance(item, dict) for item in items):
            raise TrafficRecordError(f"predictions[{instance}].items: expected objects")
        records.append({"instance": instance, "query": prediction.get("query"), "locale": prediction.get("locale"),
                        "model_version": prediction.get("model_version"),
                        "embedding_version": prediction.get("embedding_version"),
                        "query_cache_hit": prediction.get("query_cache_hit"),
                        "item_ids": [item.get("item_id") for item in items],
                        "scores": [item.get("score") for item in items],
                        "unknown": [item.get("unknown", False) for item in items]})
    return records


def _v2_records(body: dict) -> list[dict]:
    outputs = body.get("outputs")
    if not isinstance(outputs, list) or not all(isinstance(output, dict) for output in outputs):
        raise TrafficRecordError("outputs: expected a list of tensors")
    data = {output.get("name"): output.get("data") for output in outputs}
    parameters = body.get("parameters")
    parameters = {} if parameters is None else parameters
    if not isinstance(parameters, dict):
        raise TrafficRecordError("parameters: expected an object")
    for name in ("item_id", "score"):
        if not isinstance(data.get(name), list):
            raise TrafficRecordError(f"outputs: expected a {name} tensor in JSON form")
    unknown = data.get("unknown")
    return [{"instance": 0, "query": parameters.get("query"), "locale": parameters.get("locale"),
             "model_version": parameters.get("model_version") or body.get("model_version"),
             "embedding_version": parameters.get("embedding_version"),
             "query_cache_hit": parameters.get("query_cache_hit"),
             "item_ids": data["item_id"], "scores": data["score"],
             "unknown": unknown if isinstance(unknown, list) else None}]


def response_records(body, request_id: str, time: datetime | str, model_name: str, source: str) -> list[dict]:
    """The traffic records (unchecked: :class:`relevance.traffic.TrafficLog` checks them) of one rerank response
    in its JSON form; :class:`TrafficRecordError` if ``body`` is not one."""
    if not isinstance(body, dict):
        raise TrafficRecordError(f"response: expected a JSON object, got {type(body).__name__}")
    records = _v1_records(body) if "predictions" in body else _v2_records(body)
    return [{**record, "request_id": request_id, "time": time, "model_name": model_name, "source": source}
            for record in records]

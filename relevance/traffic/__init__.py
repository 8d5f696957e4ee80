"""Served traffic, captured: the record each reranked query leaves (:mod:`relevance.traffic.records`) and the
durable, partitioned store they are written to and read from (:mod:`relevance.traffic.log`)."""

from relevance.traffic.log import TrafficLog, read_traffic
from relevance.traffic.records import SCHEMA, TrafficRecordError, traffic_record

__all__ = ["SCHEMA", "TrafficLog", "TrafficRecordError", "read_traffic", "traffic_record"]

"""The unlabelled pool: BM25 candidates without judged pairs, and never a held-out query."""

from __future__ import annotations

import pandas as pd
import pytest

from relevance.config import build_config
from relevance.data.schema import DataContractError, Dataset, DatasetInfo
from relevance.pool import bm25_candidates, build_pool


def test_candidates_exclude_judged_pairs(index):
    queries = pd.DataFrame({"query_id": ["q1", "q2"], "query": ["drill", "red sofa"]})
    judged = pd.DataFrame({"query_id": ["q1"], "item_id": ["drill"]})
    candidates = bm25_candidates(index, queries, 5, exclude=judged)
    assert set(map(tuple, candidates[["query_id", "item_id"]].to_numpy())) == {("q1", "bits"), ("q2", "sofa")}


def _fully_judged_dataset() -> Dataset:
    items = pd.DataFrame({"item_id": ["a", "b", "c", "d"],
                          "title": ["red sofa", "blue sofa", "brass lamp", "floor lamp"]})
    queries = pd.DataFrame({"query_id": ["q1", "q2", "q3", "q4"],
                            "query": ["sofa", "lamp", "floor lamp", "Floor  Lamp"]})
    judgments = pd.DataFrame({"query_id": ["q1", "q2", "q3"], "item_id": ["a", "c", "d"], "grade": [2, 2, 1],
                              "split": ["train", "test", "valid"]})
    # q4 is unjudged but is the valid query q3 under another id: its impression must not reach the pool.
    impressions = pd.DataFrame({"query_id": ["q4"], "item_id": ["a"]})
    return Dataset(DatasetInfo("tiny", 3), items, queries, judgments, impressions).validated()


def test_pool_takes_train_query_candidates_and_never_held_out_queries(tmp_path):
    dataset = _fully_judged_dataset()
    no_candidates = {"workdir": str(tmp_path / "a"), "candidates": {"top_k": 0}}
    with pytest.raises(DataContractError, match="pool is empty"):
        build_pool(build_config("quick", no_candidates), dataset, tmp_path / "a.parquet")
    config = build_config("quick", {"workdir": str(tmp_path / "b"),
                                    "candidates": {"include_train_queries": True, "top_k": 10}})
    # (q4 gets BM25 candidates too, as an unjudged query, and loses them all to the held-out filter.)
    pool = pd.read_parquet(build_pool(config, dataset, tmp_path / "b.parquet"))
    # Only the train query's unjudged items: never a valid/test query, nor a judged pair.
    assert set(pool["query_id"]) == {"q1"} and set(pool["item_id"]) == {"b"}

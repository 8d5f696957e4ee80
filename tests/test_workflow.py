"""Workflow steps on hand-made datasets: what the pool may contain, and clear errors before any training."""

import pandas as pd
import pytest

from relevance import workflow
from relevance.config import build_config
from relevance.data.schema import Dataset, DataContractError, DatasetInfo


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
        workflow.step_pool(build_config("quick", no_candidates), dataset)
    config = build_config("quick", {"workdir": str(tmp_path / "b"),
                                    "candidates": {"include_train_queries": True, "top_k": 10}})
    # (q4 gets BM25 candidates too, as an unjudged query, and loses them all to the held-out filter.)
    pool = pd.read_parquet(workflow.step_pool(config, dataset))
    # Only the train query's unjudged items: never a valid/test query, nor a judged pair.
    assert set(pool["query_id"]) == {"q1"} and set(pool["item_id"]) == {"b"}


def test_an_empty_split_is_a_clear_error(tmp_path):
    from relevance import workflow
    from relevance.data.schema import Dataset, DataContractError, DatasetInfo

    items = pd.DataFrame({"item_id": ["a", "b"], "title": ["red sofa", "lamp"]})
    queries = pd.DataFrame({"query_id": ["q1", "q2"], "query": ["sofa", "lamp"]})
    judgments = pd.DataFrame({"query_id": ["q1", "q2"], "item_id": ["a", "b"], "grade": [2, 0],
                              "split": ["train", "test"]})
    dataset = Dataset(DatasetInfo("tiny", 3), items, queries, judgments).validated()
    with pytest.raises(DataContractError, match="split 'valid' is empty"):
        workflow.step_teacher(build_config("quick", {"workdir": str(tmp_path)}), dataset)
    assert not (tmp_path / "teacher").exists()


"""Grading from served traffic: which pairs are eligible, how strategies choose among them, and how queries first
seen in traffic join the dataset so that their grades import like any other."""

import json

import numpy as np
import pandas as pd
import pytest

from relevance.data.schema import Dataset, DatasetInfo
from relevance.labels.annotation import add_queries, merge_judgments, read_export
from relevance.labels.from_traffic import select_from_traffic, traffic_pairs, traffic_query_id

GRADES = ["irrelevant", "partial", "exact"]


def dataset(fraction: float | None = None) -> Dataset:
    items = pd.DataFrame({"item_id": ["i1", "i2", "i3", "i4", "i5"],
                          "title": ["red sofa", "blue lamp", "red couch", "sofa bed", "green rug"]})
    queries = pd.DataFrame({"query_id": ["q1", "q2"], "query": ["red sofa", "blue lamp"]})
    judgments = pd.DataFrame({"query_id": ["q1", "q2"], "item_id": ["i1", "i2"], "grade": [2, 2],
                              "split": ["train", "test"]})
    return Dataset(DatasetInfo("tiny", 3, GRADES, judge_holdout_fraction=fraction), items, queries,
                   judgments).validated()


def records() -> pd.DataFrame:
    rows = [("r1", "Red  Sofa", ["i1", "i3", "i4"], [2.5, 2.0, 1.0]),  # q1 by text; i1 judged; top-2 keeps i3
            ("r2", "blue lamp", ["i2", "i3"], [2.0, 1.0]),  # a test query: never graded into training
            ("r3", "green rug", ["i5", "ghost"], [1.5, 0.5]),  # new query; ghost is not in the catalog
            ("r4", "green rug", ["i5", "i4"], [0.5, 0.2])]
    return pd.DataFrame({"request_id": [r[0] for r in rows], "query": [r[1] for r in rows], "locale": "en-US",
                         "item_ids": [r[2] for r in rows], "scores": [r[3] for r in rows]})


def test_eligible_pairs_and_new_queries():
    pairs, new = traffic_pairs(records(), dataset(), top_k=2)
    rug = traffic_query_id("green rug")
    assert rug == traffic_query_id("  GREEN   rug ") and rug.startswith("traffic-")
    assert pairs[["query_id", "item_id"]].values.tolist() == [["q1", "i3"], [rug, "i4"], [rug, "i5"]]
    assert pairs.set_index("item_id").loc["i5", "student_grade"] == pytest.approx(1.0)  # mean of 1.5 and 0.5
    assert pairs.set_index("item_id").loc["i5", "served"] == 2
    assert new.to_dict("records") == [{"query_id": rug, "query": "green rug", "locale": "en-US"}]
    # The judge holdout's slice is refused too: with every text in it, nothing is eligible.
    assert traffic_pairs(records(), dataset(fraction=0.999999), top_k=2)[0].empty


def test_strategies_choose_among_traffic_pairs():
    data = dataset()
    teacher_calls = []

    def teacher(queries, texts):
        teacher_calls.append(list(zip(queries, texts)))
        # unsure about the couch, sure about the rest
        return np.array([[0.34, 0.33, 0.33] if "couch" in text else [0.9, 0.05, 0.05] for text in texts])

    texts = data.items.set_index("item_id")["title"]
    chosen, new = select_from_traffic(records(), data, "entropy", 1, 1, 0, 3, teacher, texts)
    assert chosen[["query_id", "item_id"]].values.tolist() == [["q1", "i3"]] and new.empty
    assert ("red sofa", "red couch") in teacher_calls[0]  # the dataset's text for a known query
    chosen, new = select_from_traffic(records(), data, "disagreement", 3, 5, 0, 2, teacher, texts)
    # |teacher's expected grade − served grade|: i3 |0.99 − 2.0|, i5 |0.15 − 1.0|, i4 |0.15 − 0.2|
    assert chosen["item_id"].tolist() == ["i3", "i5", "i4"] and new["query"].tolist() == ["green rug"]
    np.testing.assert_allclose(chosen["score"], [1.01, 0.85, 0.05], atol=1e-9)
    chosen, _ = select_from_traffic(records(), data, "random", 5, 1, 0, 3, None, texts)
    assert len(chosen) == 2 and chosen["query_id"].is_unique  # one per query
    with pytest.raises(ValueError, match="diverse"):
        select_from_traffic(records(), data, "diverse", 1, 1, 0, 3, teacher, texts)
    with pytest.raises(ValueError, match="needs the teacher"):
        select_from_traffic(records(), data, "entropy", 1, 1, 0, 3, None, texts)
    with pytest.raises(ValueError, match="no traffic pair is eligible"):
        select_from_traffic(records().iloc[[1]], data, "random", 1, 1, 0, 3, None, texts)


def test_new_queries_join_the_dataset_and_their_grades_import(tmp_path):
    directory = dataset().save(tmp_path / "data")
    _, new = traffic_pairs(records(), dataset(), top_k=3)
    assert add_queries(directory, new) == 1 and add_queries(directory, new) == 0
    queries = pd.read_parquet(directory / "queries.parquet")
    assert queries["query_id"].tolist()[:2] == ["q1", "q2"] and len(queries) == 3
    rug = traffic_query_id("green rug")
    export = tmp_path / "export.json"
    export.write_text(json.dumps([{"id": 1, "data": {"query": "green rug", "item": "green rug", "query_id": rug,
                                                      "item_id": "i5"},
                                   "annotations": [{"id": 1, "completed_by": 1, "was_cancelled": False, "result": [
                                       {"from_name": "grade", "to_name": "item", "type": "choices",
                                        "value": {"choices": ["exact"]}}]}]}]))
    outcome = merge_judgments(directory, read_export(export, GRADES).judgments, round_tag=1)
    judgments = Dataset.load(directory).judgments
    assert outcome["added"] == 1
    assert judgments.set_index("query_id").loc[rug, ["item_id", "grade", "split"]].tolist() == ["i5", 2, "train"]

"""The data-flywheel study's slicing (benchmarks/studies/loop.py) on a tiny catalog: the held-out family's
judgments and queries leave the first dataset and nothing else does, the released traffic is family queries only,
the simulated raters grade only what the data graded, and N is read off the windows as documented."""

from __future__ import annotations

import pandas as pd
import pytest

from benchmarks.studies import loop
from relevance.data.schema import Dataset, DatasetInfo

DOOR = loop.FAMILIES["door"]


@pytest.fixture
def shop() -> Dataset:
    items = pd.DataFrame({"item_id": ["i1", "i2", "i3", "i4", "i5", "i6"],
                          "title": ["Oak Door Slab", "Brass door knob", "LED light bulb", "Garden hose",
                                    "Paint roller", "Rubber doormat"]})
    queries = pd.DataFrame({"query_id": [f"q{n}" for n in range(1, 9)],
                            "query": ["interior door", "led bulb", "door knob", "garden hose", "door hinge",
                                      "hose nozzle", "Interior  Door", "doormat"]})
    judgments = pd.DataFrame([
        ("q1", "i1", 4, "train"), ("q1", "i2", 2, "train"), ("q1", "i3", 0, "train"),  # 2/3 doors: family
        ("q2", "i3", 4, "train"), ("q2", "i2", 1, "train"), ("q2", "i4", 0, "train"),  # 1/3: stays, minus i2
        ("q3", "i2", 4, "valid"), ("q3", "i1", 3, "valid"),                           # family, held-out split
        ("q4", "i4", 4, "test"), ("q4", "i5", 0, "test"),                             # no door at all
        ("q8", "i6", 4, "test"), ("q8", "i1", 1, "test"),                             # half doors: family (≥ 50%)
    ], columns=["query_id", "item_id", "grade", "split"])
    impressions = pd.DataFrame([
        ("q5", "i1"), ("q5", "i2"),                    # unjudged, all doors: family, released
        ("q6", "i4"), ("q6", "i5"), ("q6", "i1"),      # unjudged, 1/3 doors: stays, minus i1
        ("q7", "i4"), ("q7", "i5"),                    # no doors, but the text of q1: family by text
        ("q2", "i5"),                                  # a judged query's impression: its judgments decide
    ], columns=["query_id", "item_id"])
    return Dataset(DatasetInfo("shop", 5), items, queries, judgments, impressions)


def test_the_family_is_held_out_and_nothing_else(shop):
    cut = loop.slice_family(shop, DOOR)
    assert cut.family_items == {"i1", "i2"}  # "doormat" is not a door: whole words only
    assert cut.family_queries == {"q1", "q3", "q5", "q7", "q8"}
    first = cut.first

    def pairs(frame):
        return set(zip(frame["query_id"], frame["item_id"]))

    # The family's items' judgments and the family queries' judgments are gone; every other judgment is kept.
    expected = {(q, i) for q, i in pairs(shop.judgments) if i not in cut.family_items and q not in cut.family_queries}
    assert pairs(first.judgments) == expected == {("q2", "i3"), ("q2", "i4"), ("q4", "i4"), ("q4", "i5")}
    assert pairs(first.impressions) == {("q6", "i4"), ("q6", "i5"), ("q2", "i5")}
    assert set(first.queries["query_id"]) == {"q2", "q4", "q6"}
    pd.testing.assert_frame_equal(first.items, shop.items)  # the catalog keeps the family (the feature store)
    kept = first.judgments.merge(shop.judgments, on=["query_id", "item_id"], suffixes=("", "_source"))
    assert (kept["grade"] == kept["grade_source"]).all() and (kept["split"] == kept["split_source"]).all()
    assert cut.removed["judgments_of_family_items_in_other_queries"] == 1  # (q2, i2)

    # Released: family queries of train and unjudged ones; the held-out splits' family queries are evaluated.
    assert set(cut.release["query_id"]) == {"q1", "q5", "q7"}
    assert set(cut.release["query_id"]) <= cut.family_queries
    assert set(cut.evaluation["query_id"]) == {"q3", "q8"} and set(cut.evaluation["split"]) == {"valid", "test"}
    assert pairs(cut.evaluation) == pairs(shop.judgments[shop.judgments["query_id"].isin(["q3", "q8"])])


def test_released_traffic_is_family_queries_only(shop):
    cut = loop.slice_family(shop, DOOR)
    family_texts = set(loop.normalized(shop.queries.set_index("query_id").loc[sorted(cut.family_queries), "query"]))
    undrifted = sorted(cut.first.queries["query"])
    released = sorted(cut.release["query"])
    assert not set(loop.normalized(pd.Series(undrifted))) & family_texts
    for count in (0, 2, 7, 10):
        window = loop.traffic_window(undrifted, released, 10, count, seed=3)
        assert len(window) == 10 and sum(is_family for _, is_family in window) == count
        assert {q for q, is_family in window if is_family} <= set(released)
        assert set(loop.normalized(pd.Series([q for q, f in window if f] or [""]))) <= family_texts | {""}
        assert not {q for q, is_family in window if not is_family} & set(released)
    assert loop.traffic_window(undrifted, released, 10, 4, seed=1) == loop.traffic_window(undrifted, released, 10, 4,
                                                                                           seed=1)
    with pytest.raises(ValueError):
        loop.traffic_window(undrifted, released, 10, 11, seed=0)


def test_subsample_keeps_whole_queries_and_unnamed_groups(shop):
    groups = loop.query_groups(shop, loop.family_queries(shop, loop.family_items(shop.items, DOOR)))
    assert groups.to_dict() == {"q1": "family_train", "q2": "train", "q3": "family_eval", "q4": "test",
                                "q5": "family_unjudged", "q6": "unjudged", "q7": "family_unjudged",
                                "q8": "family_eval"}
    small = loop.subsample(shop, groups, {"family_eval": 1, "family_unjudged": 1, "items": 5})
    kept = set(small.queries["query_id"])
    assert {"q1", "q2", "q4", "q6"} <= kept and len(kept & {"q3", "q8"}) == 1 and len(kept & {"q5", "q7"}) == 1
    assert set(small.judgments["query_id"]) <= kept and set(small.impressions["query_id"]) <= kept
    for frame in (small.judgments, small.impressions):  # a kept query keeps all its pairs and their items
        source = shop.judgments if "grade" in frame else shop.impressions
        assert len(frame) == source["query_id"].isin(kept).sum()
        assert set(frame["item_id"]) <= set(small.items["item_id"])
    used = set(small.judgments["item_id"]) | set(small.impressions["item_id"])  # referenced first, then filled up
    assert used <= set(small.items["item_id"]) and len(small.items) == max(5, len(used))


def test_raters_grade_only_what_the_data_graded():
    tasks = [{"data": {"query": "Interior Door", "item_id": "i1", "query_id": "traffic-1", "item": "Oak"}},
             {"data": {"query": "interior door", "item_id": "i9", "query_id": "traffic-1", "item": "?"}}]
    export = loop.simulate_raters(tasks, {("interior door", "i1"): 3}, ["a", "b", "c", "d", "e"])
    assert export[0]["annotations"][0]["result"][0]["value"] == {"choices": ["d"]}
    assert export[1]["annotations"] == [] and export[1]["data"] == tasks[1]["data"]


def test_detection_summary_reads_n_off_the_windows():
    def window(kind, count, seed, code):
        return {"kind": kind, "family_requests": count, "seed": seed, "exit_code": code,
                "alerts": ["query_novelty: PSI 0.4 > 0.25"] if code == 3 else [],
                "psi": {"query_novelty": 0.1 * count, "cosine": 0.05}}

    windows = ([window("undrifted", 0, s, 3 if s == 0 else 0) for s in range(4)]
               + [window("released", 10, 0, 3), window("released", 10, 1, 0),
                  window("released", 20, 0, 3), window("released", 20, 1, 3),
                  window("released", 40, 0, 3), window("released", 40, 1, 3)])
    summary = loop.summarize_detection(windows)
    assert summary["false_alarms"] == 1 and summary["false_alarm_rate"] == 0.25
    assert 0.25 < summary["false_alarm_upper95"] < 1
    assert summary["detected_at"] == 20 and summary["first_alert_at"] == 10
    assert [r["alerts"] for r in summary["by_count"]] == [1, 1, 2, 2]

"""The Label Studio round trip's parts that the real one (tests/labels/test_label_studio.py, `make test-slow`: a
running Label Studio 1.23.2, three annotators, its JSON and snapshot exports through `relevance import-labels`)
does not reach, in seconds: the project files' variants (image URLs, pre-annotations), the mean aggregate and a
pair rated twice by one annotator, a merge into judgments that already hold a pair or the round, exports the server
never writes (another format, a hand-edited file, a project made elsewhere), and merges refused.

The exports below have the shape Label Studio 1.23.2 wrote in that test: ``completed_by`` a user id (the snapshot
export expands it to {id, email, …}), a skipped task an annotation with ``was_cancelled`` and an empty result.
"""

from __future__ import annotations

import itertools
import json
import xml.etree.ElementTree as ET

import pandas as pd
import pytest

from relevance.data.schema import DataContractError, Dataset, DatasetInfo
from relevance.labels.annotation import (
    label_config,
    merge_judgments,
    read_export,
    write_project,
)

GRADES = ["irrelevant", "partial", "exact"]
ANNOTATION_IDS = itertools.count(1)


@pytest.fixture()
def dataset_dir(tmp_path):
    items = pd.DataFrame({"item_id": ["a", "b", "c", "d"], "title": ["red sofa", "blue sofa", "lamp", "drill"],
                          "image_url": ["https://img.example/a.jpg", None, None, None]})
    queries = pd.DataFrame({"query_id": ["q1", "q2", "q3", "q4"], "query": ["sofa", "lamp", "drill", "Sofa"]})
    judgments = pd.DataFrame({"query_id": ["q1", "q2", "q3"], "item_id": ["a", "c", "d"], "grade": [2, 2, 1],
                              "split": ["train", "valid", "test"]})
    Dataset(DatasetInfo("tiny", 3, GRADES), items, queries, judgments).validated().save(tmp_path / "data")
    return tmp_path / "data"


def _annotation(who, grade, cancelled=False):
    result = [] if cancelled else [{"from_name": "grade", "to_name": "item", "type": "choices",
                                    "value": {"choices": [grade]}}]
    return {"id": next(ANNOTATION_IDS), "completed_by": who, "result": result, "was_cancelled": cancelled,
            "ground_truth": False, "lead_time": 3.2, "task": 1, "project": 7}


def _task(task_id, query_id, item_id, *annotations):
    return {"id": task_id, "inner_id": task_id, "project": 7, "annotations": list(annotations), "drafts": [],
            "predictions": [], "data": {"query": "…", "item": "…", "query_id": query_id, "item_id": item_id},
            "meta": {}, "total_annotations": len(annotations), "cancelled_annotations": 0}


def test_project_files_are_a_label_studio_project(tmp_path, dataset_dir):
    """The real round trip shows Label Studio accepts the files of a catalog without images and without
    pre-annotations; here: the image variant, the choices best grade first, and pre-annotations only when asked."""
    dataset = Dataset.load(dataset_dir)
    pairs = pd.DataFrame({"query_id": ["q4", "q4"], "item_id": ["a", "b"], "p_0": [0.1, 0.7], "p_1": [0.2, 0.2],
                          "p_2": [0.7, 0.1]})
    text = dataset.items.set_index("item_id")["title"]
    out = write_project(tmp_path / "ls", pairs, dataset, text)
    root = ET.fromstring((out / "label_config.xml").read_text())
    choices = root.find("Choices")
    assert choices.get("name") == "grade" and choices.get("toName") == "item" and choices.get("choice") == "single-radio"
    assert [c.get("value") for c in choices.findall("Choice")] == GRADES[::-1]  # best grade on top
    assert root.find("Image") is not None  # the catalog has image URLs
    tasks = json.loads((out / "tasks.json").read_text())
    assert tasks[0]["data"] == {"query": "Sofa", "item": "red sofa", "query_id": "q4", "item_id": "a",
                                "image": "https://img.example/a.jpg"}
    assert "predictions" not in tasks[0]  # no pre-annotation unless asked: it anchors the raters
    pre = json.loads((write_project(tmp_path / "pre", pairs, dataset, text, pre_annotate=True,
                                    model_version="teacher-1") / "tasks.json").read_text())
    assert pre[1]["predictions"][0]["result"][0]["value"] == {"choices": ["irrelevant"]}
    assert "<Image" not in label_config(GRADES)


def test_the_mean_aggregate_and_a_pair_rated_twice(tmp_path):
    """What the real round trip leaves out: --aggregate mean, and one annotator grading the same pair in two tasks
    (tasks.json imported twice), where their later grade counts once."""
    export = tmp_path / "export.json"
    export.write_text(json.dumps([
        _task(1, "q4", "a", _annotation(1, "exact"), _annotation(2, "partial")),
        _task(2, "q4", "b", _annotation(1, "partial"), _annotation(2, "irrelevant"), _annotation(3, "exact")),
        _task(3, "q4", "b", _annotation(1, "exact")),  # the same pair again: annotator 1 changed their mind
    ]))
    mean = read_export(export, GRADES, "mean")
    grades = mean.judgments.set_index(["query_id", "item_id"])[["grade", "annotators"]]
    # a: mean 1.5, rounded half to even → 2; b: (2 + 0 + 2) / 3 → 1, from three ratings, not four.
    assert grades.to_dict("index") == {("q4", "a"): {"grade": 2, "annotators": 2},
                                       ("q4", "b"): {"grade": 1, "annotators": 3}}
    assert mean.skipped["repeated ratings by one annotator"] == 1
    assert read_export(export, GRADES, "majority").judgments.set_index("item_id")["grade"].to_dict() == {"a": 1,
                                                                                                         "b": 2}


def test_a_merge_leaves_judged_pairs_alone_and_takes_a_round_once(dataset_dir):
    """What the real round trip leaves out (its pairs come from the pool, never judged): a pair already judged
    keeps its grade and round, and the same round is not imported twice."""
    imported = pd.DataFrame({"query_id": ["q4", "q1", "q1"], "item_id": ["a", "b", "a"], "grade": [2, 0, 1]})
    outcome = merge_judgments(dataset_dir, imported, round_tag=1)
    assert outcome == {"added": 2, "already_judged": 1, "round": 1, "judgments": 5}
    merged = Dataset.load(dataset_dir).judgments.set_index(["query_id", "item_id"])
    assert merged.loc[("q4", "a"), "split"] == "train" and merged.loc[("q4", "a"), "round"] == 1
    assert merged.loc[("q1", "a"), "grade"] == 2 and merged.loc[("q1", "a"), "round"] == 0
    with pytest.raises(DataContractError, match="round 1 was imported already"):
        merge_judgments(dataset_dir, imported, round_tag=1)


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a readable JSON export"),
    (json.dumps({"tasks": []}), "a list of tasks; got a dict"),
    (json.dumps([{"id": 1, "data": {"query": "x"}, "annotations": []}]), "lacks query_id / item_id"),
    (json.dumps([_task(1, "q4", "a", _annotation(1, "superb"))]), r"grade \['superb'\] is not one of the rubric"),
    (json.dumps([_task(1, "q4", "a")]), "no completed annotation"),
    (json.dumps([{**_task(1, "q4", "a"), "annotations": None}]), "no 'annotations' list"),
    (json.dumps([_task(1, "q4", "a", {**_annotation(1, "exact"), "completed_by": None})]), "no completed_by"),
])
def test_bad_exports_are_clear_errors(tmp_path, content, message):
    """Exports Label Studio does not write for a `relevance select` project (JSON-MIN or CSV, a hand-edited file,
    a project made some other way): one error naming the task and what is wrong."""
    export = tmp_path / "export.json"
    export.write_text(content)
    with pytest.raises(DataContractError, match=message):
        read_export(export, GRADES)


@pytest.mark.parametrize("pairs, message", [
    ({"query_id": ["q2"], "item_id": ["a"]}, "valid/test queries"),  # q2 is a valid query
    ({"query_id": ["q4", "q9"], "item_id": ["a", "a"]}, "1 unknown query id"),
    ({"query_id": ["q4"], "item_id": ["ghost"]}, "1 unknown item id"),
])
def test_a_refused_merge_writes_nothing(dataset_dir, pairs, message):
    """Grades for evaluation queries or for ids the dataset lacks (selected from another dataset) change nothing."""
    before = (dataset_dir / "judgments.parquet").read_bytes()
    imported = pd.DataFrame({**pairs, "grade": [1] * len(pairs["query_id"])})
    with pytest.raises(DataContractError, match=message):
        merge_judgments(dataset_dir, imported, round_tag=1)
    assert (dataset_dir / "judgments.parquet").read_bytes() == before

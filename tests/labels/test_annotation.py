"""The Label Studio round trip: a project written for selected pairs, Label Studio's JSON export read back
(several annotators aggregated, agreement reported), merged into the judgments; bad exports change nothing.

The exports below follow Label Studio's documented JSON export format (labelstud.io/guide/task_format: a list of
tasks, each with ``data``, ``annotations`` [{id, completed_by, result: [{id, from_name, to_name, type, value,
origin}], was_cancelled, ground_truth, lead_time, …}] and ``predictions``); label-studio itself is not installed.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pandas as pd
import pytest

from relevance.data.schema import DataContractError, Dataset, DatasetInfo
from relevance.labels.annotation import label_config, merge_judgments, read_export, write_project

GRADES = ["irrelevant", "partial", "exact"]


@pytest.fixture()
def dataset_dir(tmp_path):
    items = pd.DataFrame({"item_id": ["a", "b", "c", "d"], "title": ["red sofa", "blue sofa", "lamp", "drill"],
                          "image_url": ["https://img.example/a.jpg", None, None, None]})
    queries = pd.DataFrame({"query_id": ["q1", "q2", "q3", "q4"], "query": ["sofa", "lamp", "drill", "Sofa"]})
    judgments = pd.DataFrame({"query_id": ["q1", "q2", "q3"], "item_id": ["a", "c", "d"], "grade": [2, 2, 1],
                              "split": ["train", "valid", "test"]})
    Dataset(DatasetInfo("tiny", 3, GRADES), items, queries, judgments).validated().save(tmp_path / "data")
    return tmp_path / "data"


def _annotation(who, grade, cancelled=False, n=[0]):
    n[0] += 1
    return {"id": n[0], "completed_by": who, "was_cancelled": cancelled, "ground_truth": False,
            "created_at": "2026-11-30T10:00:00.000000Z", "updated_at": "2026-11-30T10:00:00.000000Z",
            "lead_time": 3.2, "result_count": 0, "task": 1,
            "result": [{"id": f"r{n[0]}", "from_name": "grade", "to_name": "item", "type": "choices",
                        "origin": "manual", "value": {"choices": [grade]}}]}


def _task(task_id, query_id, item_id, *annotations):
    return {"id": task_id, "project": 7, "data": {"query": "…", "item": "…", "query_id": query_id,
                                                   "item_id": item_id},
            "annotations": list(annotations), "predictions": [], "drafts": [], "meta": {},
            "created_at": "2026-11-30T09:00:00.000000Z", "updated_at": "2026-11-30T10:00:00.000000Z",
            "inner_id": task_id, "total_annotations": len(annotations), "cancelled_annotations": 0,
            "total_predictions": 0, "comment_count": 0, "unresolved_comment_count": 0, "last_comment_updated_at": None,
            "updated_by": [], "file_upload": "tasks.json", "comment_authors": []}


def test_project_files_are_a_label_studio_project(tmp_path, dataset_dir):
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


def test_an_export_round_trips_into_the_judgments(tmp_path, dataset_dir):
    export = tmp_path / "export.json"
    export.write_text(json.dumps([
        _task(1, "q4", "a", _annotation(1, "exact"), _annotation(2, "exact"), _annotation(3, "partial")),
        _task(2, "q4", "b", _annotation(1, "partial"), _annotation({"id": 2, "email": "b@x"}, "irrelevant"),
              _annotation(3, "exact", cancelled=True)),
        _task(3, "q1", "b", _annotation(1, "irrelevant")),
        _task(4, "q1", "a", _annotation(2, "partial")),  # already judged (train): left as it was
        _task(5, "q1", "c"),  # nobody graded it yet
    ]))
    imported = read_export(export, GRADES, "majority")
    grades = imported.judgments.set_index(["query_id", "item_id"])["grade"].to_dict()
    # Majority 2 of 3; a 1-vs-0 tie goes to the grade nearest the median (0.5 → the lower one).
    assert grades == {("q4", "a"): 2, ("q4", "b"): 0, ("q1", "b"): 0, ("q1", "a"): 1}
    assert imported.skipped["cancelled annotations"] == 1 and imported.skipped["tasks without annotations"] == 1
    assert imported.exact_agreement == pytest.approx(2 / 8)  # (a: 2 of 6 ordered pairs agree; b: 0 of 2)
    assert imported.krippendorff_alpha is not None and -1 <= imported.krippendorff_alpha <= 1
    assert read_export(export, GRADES, "mean").judgments.set_index(["query_id", "item_id"])["grade"][("q4", "b")] == 0

    outcome = merge_judgments(dataset_dir, imported.judgments, round_tag=1)
    assert outcome == {"added": 3, "already_judged": 1, "round": 1, "judgments": 6}
    merged = Dataset.load(dataset_dir).judgments.set_index(["query_id", "item_id"])
    assert merged.loc[("q4", "a"), "split"] == "train" and merged.loc[("q4", "a"), "round"] == 1
    assert merged.loc[("q1", "a"), "grade"] == 2 and merged.loc[("q1", "a"), "round"] == 0
    with pytest.raises(DataContractError, match="round 1 was imported already"):
        merge_judgments(dataset_dir, imported.judgments, round_tag=1)


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
    before = (dataset_dir / "judgments.parquet").read_bytes()
    imported = pd.DataFrame({**pairs, "grade": [1] * len(pairs["query_id"])})
    with pytest.raises(DataContractError, match=message):
        merge_judgments(dataset_dir, imported, round_tag=1)
    assert (dataset_dir / "judgments.parquet").read_bytes() == before

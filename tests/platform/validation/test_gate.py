"""The Great Expectations gate end to end, through its public names (relevance.platform.validation, whose entry
points live in relevance.platform.validation.gate): a valid dataset passes with Data Docs; each kind of corruption
fails with a line naming the expectation and the column; drift against a reference is caught.

One synthetic dataset is prepared per module; each corruption works on its own copy."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from relevance.config import ValidationConfig, build_config
from relevance.data import prepare
from relevance.data.schema import DataContractError, DatasetInfo, prob_columns
from relevance.platform.validation import (
    DataValidationError,
    ValidationReport,
    validate_dataset,
    validate_label_expectations,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    config = build_config("quick", {"data": {"synthetic_items": 200, "synthetic_judged_queries": 40,
                                             "synthetic_impressions": 500}})
    return prepare(config.data, tmp_path_factory.mktemp("validation") / "ds")


@pytest.fixture
def copy(dataset, tmp_path):
    """A writable copy of the dataset: copy() -> (directory, read(table), write(table, df))."""

    def make(name: str = "bad") -> tuple[Path, callable, callable]:
        target = tmp_path / name
        shutil.copytree(dataset, target)
        return (target, lambda table: pd.read_parquet(target / f"{table}.parquet"),
                lambda table, df: df.to_parquet(target / f"{table}.parquet", index=False))

    return make


def _failure(report: ValidationReport, expectation: str, column: str) -> str:
    """The one failure line for ``expectation`` on ``column`` (fails the test with the summary otherwise)."""
    lines = [f for f in report.failures if expectation in f and repr(column) in f]
    assert lines, f"expected a failure of {expectation} on {column!r}, got:\n{report.summary()}"
    return lines[0]


def test_valid_dataset_passes_and_writes_data_docs(dataset, tmp_path):
    report = validate_dataset(dataset, ValidationConfig(), docs_dir=tmp_path / "docs")
    assert report.success, report.summary()
    assert report.failures == []
    assert report.data_docs == tmp_path / "docs" / "index.html" and report.data_docs.is_file()
    assert {"items", "queries", "judgments", "impressions", "grade_drift"} <= set(report.checked)
    assert all(n > 0 for n in report.checked.values())
    report.raise_for_failures()  # no-op on success
    assert json.loads(json.dumps(report.to_dict()))["success"] is True
    assert "passed" in report.summary()


def test_null_item_id_fails_naming_expectation_and_column(copy, tmp_path):
    directory, read, write = copy()
    judgments = read("judgments")
    judgments.loc[3, "item_id"] = None
    write("judgments", judgments)
    report = validate_dataset(directory, ValidationConfig(), docs_dir=tmp_path / "docs")
    assert not report.success
    line = _failure(report, "expect_column_values_to_not_be_null", "item_id")
    assert line.startswith("judgments:") and f"1 of {len(judgments)} values unexpected" in line
    # Data Docs are written on failure too: that is the artifact the pipeline keeps.
    assert report.data_docs.is_file()
    with pytest.raises(DataValidationError) as raised:
        report.raise_for_failures()
    assert isinstance(raised.value, DataContractError) and raised.value.report is report
    assert "expect_column_values_to_not_be_null on column 'item_id'" in str(raised.value)


def test_grade_out_of_range_fails(copy):
    directory, read, write = copy()
    assert DatasetInfo.load(directory).num_grades == 5
    judgments = read("judgments")
    judgments.loc[[0, 7], "grade"] = 9
    write("judgments", judgments)
    report = validate_dataset(directory, ValidationConfig())
    line = _failure(report, "expect_column_values_to_be_between", "grade")
    assert "2 of" in line and "e.g. 9" in line and "max_value=4" in line
    assert report.data_docs is None


def test_float_grades_fail_the_integer_type_check(copy):
    directory, read, write = copy()
    judgments = read("judgments")
    judgments["grade"] = judgments["grade"].astype("float64") + 0.5 * (judgments.index == 0)
    write("judgments", judgments)
    report = validate_dataset(directory, ValidationConfig())
    line = _failure(report, "expect_column_values_to_be_in_type_list", "grade")
    assert "float64" in line


def test_duplicated_pair_fails(copy):
    directory, read, write = copy()
    judgments = read("judgments")
    write("judgments", pd.concat([judgments, judgments.iloc[[10]]], ignore_index=True))
    report = validate_dataset(directory, ValidationConfig())
    line = next((f for f in report.failures if "expect_compound_columns_to_be_unique" in f), None)
    assert line is not None, report.summary()
    assert line.startswith("judgments:") and "['query_id', 'item_id']" in line
    assert judgments.iloc[10]["item_id"] in line


def test_unknown_split_and_unknown_item_are_reported_together(copy):
    directory, read, write = copy()
    judgments = read("judgments")
    judgments.loc[0, "split"] = "holdout"
    judgments.loc[1, "item_id"] = "i-does-not-exist"
    write("judgments", judgments)
    report = validate_dataset(directory, ValidationConfig())
    # Both problems in one run: the gate reports everything, unlike the contract checks.
    assert "holdout" in _failure(report, "expect_column_values_to_be_in_set", "split")
    assert "i-does-not-exist" in _failure(report, "expect_column_values_to_be_null", "item_id_not_in_items")


def test_missing_table_is_a_failure(copy):
    directory, _, _ = copy()
    (directory / "queries.parquet").unlink()
    report = validate_dataset(directory, ValidationConfig())
    assert not report.success
    assert any(f.startswith("queries: table queries.parquet is missing") for f in report.failures)


def _labels(num_grades: int = 5, rows: int = 50) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(rows, num_grades))
    probs = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype("float32")
    labels = pd.DataFrame(probs, columns=prob_columns(num_grades))
    labels.insert(0, "item_id", [f"i{n}" for n in range(rows)])
    labels.insert(0, "query_id", [f"q{n % 7}" for n in range(rows)])
    labels["teacher_version"] = "teacher-v1"
    return labels


def test_teacher_labels_pass_and_bad_row_sum_fails(tmp_path):
    config = ValidationConfig()
    good = validate_label_expectations(_labels(), 5, config)
    assert good.success, good.summary()
    assert good.checked == {"teacher_labels": good.checked["teacher_labels"]} and good.checked["teacher_labels"] > 5

    bad = _labels()
    bad.loc[4, "p_0"] += 0.3  # still within [0, 1], but the row now sums to 1.3
    report = validate_label_expectations(bad, 5, config, docs_dir=tmp_path / "docs")
    assert not report.success and report.data_docs.is_file()
    line = _failure(report, "expect_column_values_to_be_between", "p_sum")
    assert line.startswith("teacher_labels:") and "1 of 50" in line and "1.3" in line


def test_teacher_labels_with_wrong_k_fail_the_schema(tmp_path):
    report = validate_label_expectations(_labels(num_grades=4), 5, ValidationConfig())
    line = next(f for f in report.failures if "expect_table_columns_to_match_set" in f)
    assert "missing ['p_4']" in line


def test_grade_drift_against_a_very_different_reference_fails(dataset, copy):
    reference, read, write = copy("reference")
    judgments = read("judgments")
    judgments["grade"] = 0  # every pair irrelevant: total-variation distance = 1 - P(grade 0) >> 0.2
    write("judgments", judgments)
    report = validate_dataset(dataset, ValidationConfig(reference=str(reference)))
    assert not report.success
    line = _failure(report, "expect_column_sum_to_be_between", "tv_contribution")
    assert line.startswith("grade_drift:") and "max_value=0.2" in line


def test_dataset_is_within_bounds_of_itself_as_reference(dataset, tmp_path):
    report = validate_dataset(dataset, ValidationConfig(reference=str(dataset)), docs_dir=tmp_path / "docs")
    assert report.success, report.summary()
    # The length-drift expectations only exist with a reference.
    assert report.checked["items"] > validate_dataset(dataset, ValidationConfig()).checked["items"]


def test_query_length_drift_fails(dataset, copy):
    reference, read, write = copy("reference")
    queries = read("queries")
    queries["query"] = queries["query"] + " extra words appended to every reference query"
    write("queries", queries)
    report = validate_dataset(dataset, ValidationConfig(reference=str(reference)))
    assert "observed" in _failure(report, "expect_column_mean_to_be_between", "query_words")


def test_importing_the_module_does_not_import_great_expectations():
    code = "import sys, relevance.platform.validation; print('great_expectations' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_labelling_of_any_size_is_checked_shard_by_shard_and_on_a_sample():
    """Every shard passes the data contract in full as it is read; the GX suite sees an equal share of
    label_sample_rows from each shard, so the suite's cost does not grow with the pool."""
    from relevance.platform.validation import validate_label_chunks

    shards = [_labels().assign(item_id=lambda d, s=s: d["item_id"] + f"-{s}") for s in range(4)]
    loaded = []

    def loader(frame, index):
        def load():
            loaded.append(index)
            return frame
        return load

    chunks = [(f"shard-{i}", loader(frame, i)) for i, frame in enumerate(shards)]
    report = validate_label_chunks(chunks, 5, ValidationConfig(label_sample_rows=20))
    assert report.success, report.summary()
    assert loaded == [0, 1, 2, 3]  # every shard read once (and checked against the contract as it loads)
    bad = shards[2].copy()
    bad.loc[3, "p_0"] += 0.3
    chunks[2] = ("shard-2", loader(bad, 2))
    failed = validate_label_chunks(chunks, 5, ValidationConfig(label_sample_rows=200))
    assert not failed.success and any("p_sum" in line for line in failed.failures)

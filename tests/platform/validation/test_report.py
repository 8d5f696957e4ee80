"""The gate's outcome (relevance.platform.validation.report): the summary an operator reads, the JSON the pipeline
step keeps, and one failure line per failed expectation, built here from stand-ins for GX's result objects (no GX
import: the lines depend only on the fields read)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from relevance.data.schema import DataContractError
from relevance.platform.validation.report import DataValidationError, ValidationReport, describe_failure


def _result(type_: str, kwargs: dict, result: dict | None = None, exception_info: dict | None = None, notes=None):
    config = SimpleNamespace(type=type_, kwargs=kwargs, notes=notes)
    return SimpleNamespace(expectation_config=config, result=result, exception_info=exception_info)


def test_summary_and_dict_of_a_passing_report():
    report = ValidationReport(success=True, checked={"items": 4, "queries": 3})
    assert report.summary() == "Data validation passed: 7 expectation(s) in 2 suite(s) (items 4, queries 3)."
    report.raise_for_failures()  # no-op on success
    assert json.loads(json.dumps(report.to_dict())) == {
        "success": True, "failures": [], "num_failures": 0, "checked": {"items": 4, "queries": 3},
        "num_expectations": 7, "data_docs": None}


def test_a_failing_report_lists_every_failure_and_raises_a_contract_error():
    report = ValidationReport(success=False, failures=["items: a", "queries: b"], checked={"items": 2},
                              data_docs=Path("docs/index.html"))
    assert report.summary().splitlines() == [
        "Data validation FAILED: 2 failure(s) among 2 expectation(s) in 1 suite(s) (items 2):",
        "  - items: a", "  - queries: b", "Data Docs: docs/index.html"]
    with pytest.raises(DataValidationError) as raised:
        report.raise_for_failures()
    assert isinstance(raised.value, DataContractError) and raised.value.report is report
    assert str(raised.value) == report.summary()
    assert report.to_dict()["data_docs"] == "docs/index.html"


def test_unexpected_values_are_counted_and_quoted_once_each():
    line = describe_failure("judgments", _result(
        "expect_column_values_to_be_between", {"column": "grade", "min_value": 0, "max_value": np.int64(4)},
        {"element_count": 1200, "unexpected_count": np.int64(4), "partial_unexpected_list": [7, 7, 9, -1, 12]},
        notes="K=5 grades,\n  from dataset.json"))
    assert line == ("judgments: expect_column_values_to_be_between on column 'grade' failed: 4 of 1200 values "
                    "unexpected (e.g. 7, 9, -1); expected min_value=0, max_value=4 (K=5 grades, from dataset.json)")


def test_compound_columns_count_rows_and_name_the_columns():
    line = describe_failure("judgments", _result(
        "expect_compound_columns_to_be_unique", {"column_list": ["query_id", "item_id"]},
        {"element_count": 10, "unexpected_count": 2, "partial_unexpected_list": [{"item_id": "i1"}] * 2}))
    assert line == ("judgments: expect_compound_columns_to_be_unique on columns ['query_id', 'item_id'] failed: "
                    "2 of 10 rows unexpected (e.g. {'item_id': 'i1'})")


def test_a_column_set_mismatch_names_missing_and_with_exact_match_unexpected_columns():
    details = {"details": {"mismatched": {"missing": ["p_4"], "unexpected": ["p_9"]}}, "observed_value": []}
    loose = describe_failure("labels", _result("expect_table_columns_to_match_set",
                                               {"column_set": ["p_4"], "exact_match": False}, details))
    exact = describe_failure("labels", _result("expect_table_columns_to_match_set",
                                               {"column_set": ["p_4"], "exact_match": True}, details))
    assert "failed: missing ['p_4']; expected" in loose and "unexpected" not in loose
    assert "failed: missing ['p_4']; unexpected ['p_9']; expected" in exact


def test_observed_values_and_errors():
    mean = describe_failure("queries", _result("expect_column_mean_to_be_between",
                                               {"column": "query_words", "min_value": 2.0, "max_value": 3.0},
                                               {"observed_value": np.float64(4.1234567)},
                                               notes={"format": "markdown", "content": ["length", "drift"]}))
    assert mean == ("queries: expect_column_mean_to_be_between on column 'query_words' failed: observed 4.12346; "
                    "expected min_value=2, max_value=3 (length drift)")
    broken = describe_failure("items", _result("expect_column_values_to_be_unique", {"column": "item_id"},
                                               exception_info={"raised_exception": True,
                                                               "exception_message": "no such column"}))
    assert broken == "items: expect_column_values_to_be_unique on column 'item_id' could not run: no such column"
    nothing = describe_failure("items", _result("expect_table_row_count_to_be_between", {"min_value": 1}, {}))
    assert nothing == "items: expect_table_row_count_to_be_between failed: no observed value; expected min_value=1"

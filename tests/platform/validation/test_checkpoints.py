"""Running suites through GX (relevance.platform.validation.checkpoints): every suite is evaluated and counted,
failures come back in the suite's order whatever order GX resolves them in, and Data Docs are written only when
asked for."""

from __future__ import annotations

import os

import pandas as pd

from relevance.platform.validation.checkpoints import import_gx, run_checks


def _checks():
    E = import_gx().expectations
    frame = pd.DataFrame({"id": ["a", "b", "b", None], "n": [1, 2, 3, 40]})
    return [("good", frame.iloc[:2], [E.ExpectColumnValuesToBeUnique(column="id")]),
            ("bad", frame, [E.ExpectColumnValuesToBeBetween(column="n", min_value=0, max_value=10),
                            E.ExpectTableRowCountToBeBetween(min_value=1),
                            E.ExpectColumnValuesToNotBeNull(column="id"),
                            E.ExpectColumnValuesToBeUnique(column="id")])]


def test_gx_is_imported_with_analytics_off():
    assert import_gx().__name__ == "great_expectations"
    assert os.environ["GX_ANALYTICS_ENABLED"] in ("False", "false", "0")


def test_every_suite_is_counted_and_failures_keep_the_suite_order(tmp_path):
    report = run_checks(_checks(), None)
    assert not report.success and report.data_docs is None
    assert report.checked == {"good": 1, "bad": 4}
    assert [line.split(" on column")[0] for line in report.failures] == [
        "bad: expect_column_values_to_be_between", "bad: expect_column_values_to_not_be_null",
        "bad: expect_column_values_to_be_unique"]
    assert "1 of 4 values unexpected (e.g. 40)" in report.failures[0]


def test_data_docs_are_written_when_asked_for(tmp_path):
    passing = run_checks(_checks()[:1], tmp_path / "docs")
    assert passing.success and passing.failures == []
    assert passing.data_docs == tmp_path / "docs" / "index.html" and passing.data_docs.is_file()

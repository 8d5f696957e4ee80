"""The expectation suites (relevance.platform.validation.suites): which expectations each table gets, the derived
columns they are checked on (added to a copy, never to the caller's table), and the grade-drift table whose
column sums to the total-variation distance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from relevance.config import ValidationConfig
from relevance.platform.validation.suites import (
    PROBABILITY_SUM,
    TEXT_WORDS,
    TV_CONTRIBUTION,
    grade_distribution,
    grade_drift_check,
    items_check,
    labels_check,
)


def test_grade_distribution_sums_to_the_total_variation_distance():
    observed = pd.Series([0, 0, 1, 1, 2, 2, 2, 2])
    reference = pd.Series([0, 0, 0, 0, 1, 1, 3, None])
    table = grade_distribution(observed, reference)
    assert table["grade"].tolist() == [0.0, 1.0, 2.0, 3.0]
    p = np.array([2, 2, 4, 0]) / 8
    q = np.array([4, 2, 0, 1]) / 7  # the null grade is dropped, not counted
    assert np.allclose(table["observed_proportion"], p) and np.allclose(table["reference_proportion"], q)
    assert table[TV_CONTRIBUTION].sum() == pytest.approx(0.5 * np.abs(p - q).sum())
    same = grade_distribution(observed, observed)
    assert same[TV_CONTRIBUTION].sum() == 0.0


def test_grade_drift_without_a_reference_compares_held_out_splits_with_train():
    judgments = pd.DataFrame({"grade": [0, 1, 2, 0, 2, 2], "split": ["train"] * 3 + ["valid", "test", "test"]})
    name, df, expectations = grade_drift_check(judgments, None, ValidationConfig(max_grade_drift=0.3))
    assert name == "grade_drift" and len(expectations) == 1
    assert df[TV_CONTRIBUTION].sum() == pytest.approx(1 / 3)  # held out (1/3, 0, 2/3) vs train (1/3, 1/3, 1/3)
    assert "valid+test judgments vs train judgments" in str(expectations[0].notes)
    # Nothing to compare: no split column, or no held-out rows. The judgments suite reports those.
    assert grade_drift_check(judgments.drop(columns="split"), None, ValidationConfig()) is None
    assert grade_drift_check(judgments.assign(split="train"), None, ValidationConfig()) is None


def test_items_get_a_length_drift_expectation_only_against_a_reference():
    items = pd.DataFrame({"item_id": ["a", "b"], "locale": ["us", "us"], "title": ["red shoe", "blue hat x"]})
    config = ValidationConfig(max_length_drift=0.5)
    _, plain, without = items_check(items, None, config)
    _, df, with_reference = items_check(items, {"items": items.assign(title=["one", "two"])}, config)
    assert len(with_reference) == len(without) + 1 and TEXT_WORDS not in plain.columns
    assert df[TEXT_WORDS].tolist() == [2, 3] and TEXT_WORDS not in items.columns  # a copy, not the caller's table
    drift = with_reference[-1]
    assert (drift.column, drift.min_value, drift.max_value) == (TEXT_WORDS, 0.5, 1.5)


def test_labels_are_checked_on_a_row_sum_column_and_the_exact_set_of_probability_columns():
    labels = pd.DataFrame({"query_id": ["q", "q"], "item_id": ["a", "b"], "p_0": [0.25, 0.5], "p_1": [0.75, 0.25],
                           "teacher_version": "v1", "extra": 1})
    name, df, expectations = labels_check(labels, 2, tolerance=1e-3)
    assert name == "teacher_labels" and df[PROBABILITY_SUM].tolist() == [1.0, 0.75]
    assert PROBABILITY_SUM not in labels.columns
    schema = expectations[0]
    assert schema.exact_match and set(schema.column_set) == {"query_id", "item_id", "p_0", "p_1", "teacher_version",
                                                             "extra", PROBABILITY_SUM}
    row_sum = next(e for e in expectations if getattr(e, "column", None) == PROBABILITY_SUM)
    assert (row_sum.min_value, row_sum.max_value) == pytest.approx((0.999, 1.001))

"""The expectation suites, one per table: schema, ids, values, referential integrity and drift against a reference.

Each *_check returns (suite name, the DataFrame to validate, expectations); the DataFrame is a copy of the table
with derived columns added where GX has no expectation that fits (word counts for length drift, the row sum of
the teacher's probabilities, the ids missing from another table, the per-grade total-variation contributions).
Expectations on a column are only added when the column exists: a missing column is reported once, by the schema
expectation, instead of once per expectation that could not run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from relevance.data.schema import SPLITS, TEXT_FIELDS, prob_columns
from relevance.platform.validation.checkpoints import import_gx

if TYPE_CHECKING:
    from relevance.config import ValidationConfig

# Pandas dtype names that count as "integer typed" for the grade column (nullable Int* included: a null grade
# is reported by the not-null expectation, not twice).
INTEGER_DTYPES = [f"{prefix}int{bits}" for prefix in ("", "u") for bits in (8, 16, 32, 64)] + \
                 [f"{prefix}Int{bits}" for prefix in ("", "U") for bits in (8, 16, 32, 64)]
# Derived columns added to a copy of a table before it is validated (never written back).
TEXT_WORDS = "text_words"
QUERY_WORDS = "query_words"
PROBABILITY_SUM = "p_sum"
TV_CONTRIBUTION = "tv_contribution"


def _item_words(items: pd.DataFrame) -> pd.Series:
    """Words (whitespace tokens, as in relevance.models.text's default budget cut) over all text fields of an item."""
    columns = [c for c in TEXT_FIELDS if c in items.columns]
    if not columns:
        return pd.Series(0, index=items.index, dtype="int64")
    counts = [items[c].fillna("").astype(str).str.split().str.len() for c in columns]
    return sum(counts).astype("int64")


def _query_words(queries: pd.DataFrame) -> pd.Series:
    return queries["query"].fillna("").astype(str).str.split().str.len().astype("int64")


def _length_bounds(reference_mean: float, max_drift: float) -> dict[str, float]:
    # "Relative change of the mean at most max_drift": |mean - ref| <= max_drift * ref.
    return {"min_value": float(reference_mean * (1 - max_drift)), "max_value": float(reference_mean * (1 + max_drift))}


# ------------------------------------------------------------------------------------------------- the suites


def _length_drift(df: pd.DataFrame, column: str, words: pd.Series, reference_words: pd.Series,
                  config: "ValidationConfig", what: str):
    """Mean length in words (a helper column added to ``df``) within max_length_drift of the reference's."""
    df[column] = words
    reference_mean = float(reference_words.mean())
    return import_gx().expectations.ExpectColumnMeanToBeBetween(
        column=column, **_length_bounds(reference_mean, config.max_length_drift),
        notes=f"length drift: mean words {what} may change by at most {config.max_length_drift:.0%} of the "
              f"reference's {reference_mean:.2f}")


def items_check(items: pd.DataFrame, reference: dict | None, config: "ValidationConfig"):
    gx = import_gx()
    E = gx.expectations
    df = items.copy()
    expectations: list = [
        E.ExpectTableColumnsToMatchSet(column_set=["item_id"], exact_match=False),
        E.ExpectTableRowCountToBeBetween(min_value=1),
    ]
    # locale is optional, as in queries (Dataset.load fills in the default), but must not be null when present.
    if not any(c in df.columns for c in TEXT_FIELDS):
        # No GX expectation says "at least one of these columns"; asking for the first one names the problem.
        expectations.append(E.ExpectColumnToExist(
            column=TEXT_FIELDS[0], notes=f"items need at least one text field of {list(TEXT_FIELDS)}"))
    expectations += _not_null(df, ["item_id", "locale"])
    if "item_id" in df.columns:
        expectations.append(E.ExpectColumnValuesToBeUnique(column="item_id"))
    if reference is not None:
        expectations.append(_length_drift(df, TEXT_WORDS, _item_words(df), _item_words(reference["items"]), config,
                                          "of item text (all text fields)"))
    return "items", df, expectations


def queries_check(queries: pd.DataFrame, reference: dict | None, config: "ValidationConfig"):
    gx = import_gx()
    E = gx.expectations
    df = queries.copy()
    expectations: list = [
        E.ExpectTableColumnsToMatchSet(column_set=["query_id", "query"], exact_match=False),
        E.ExpectTableRowCountToBeBetween(min_value=1),
    ]
    # locale is optional in queries (Dataset.load fills in the default), but must not be null when present.
    expectations += _not_null(df, ["query_id", "query", "locale"])
    if "query_id" in df.columns:
        expectations.append(E.ExpectColumnValuesToBeUnique(column="query_id"))
    if "query" in df.columns:
        expectations.append(E.ExpectColumnValuesToNotMatchRegex(
            column="query", regex=r"^\s*$", notes="a query must not be empty or blank"))
        if reference is not None and "query" in reference["queries"].columns:
            expectations.append(_length_drift(df, QUERY_WORDS, _query_words(df), _query_words(reference["queries"]),
                                              config, "per query"))
    return "queries", df, expectations


def judgments_check(judgments: pd.DataFrame, num_grades: int, items: pd.DataFrame | None,
                     queries: pd.DataFrame | None):
    gx = import_gx()
    E = gx.expectations
    df = judgments.copy()
    expectations: list = [
        E.ExpectTableColumnsToMatchSet(column_set=["query_id", "item_id", "grade", "split"], exact_match=False),
        E.ExpectTableRowCountToBeBetween(min_value=1),
    ]
    expectations += _not_null(df, ["query_id", "item_id", "grade", "split"])
    if "grade" in df.columns:
        expectations += [
            E.ExpectColumnValuesToBeBetween(column="grade", min_value=0, max_value=num_grades - 1,
                                            notes=f"K={num_grades} grades, from dataset.json"),
            E.ExpectColumnValuesToBeInTypeList(column="grade", type_list=INTEGER_DTYPES),
        ]
    if "split" in df.columns:
        expectations += [
            E.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
            # Every step needs all three splits (Dataset.split raises on an empty one).
            E.ExpectColumnDistinctValuesToContainSet(column="split", value_set=list(SPLITS)),
        ]
    expectations += _pair_checks(df, "judgments", items, queries)
    return "judgments", df, expectations


def impressions_check(impressions: pd.DataFrame, items: pd.DataFrame | None, queries: pd.DataFrame | None):
    gx = import_gx()
    E = gx.expectations
    df = impressions.copy()
    expectations: list = [E.ExpectTableColumnsToMatchSet(column_set=["query_id", "item_id"], exact_match=False)]
    expectations += _not_null(df, ["query_id", "item_id"])
    expectations += _pair_checks(df, "impressions", items, queries)
    return "impressions", df, expectations


def _pair_checks(df: pd.DataFrame, table: str, items: pd.DataFrame | None, queries: pd.DataFrame | None) -> list:
    """(query_id, item_id) unique, and both ids known, for judgments and impressions."""
    E = import_gx().expectations
    expectations = []
    if {"query_id", "item_id"} <= set(df.columns):
        expectations.append(E.ExpectCompoundColumnsToBeUnique(column_list=["query_id", "item_id"]))
    # Referential integrity. A value set of every known id would be stored in the suite and rendered in Data
    # Docs (millions of ids for a real catalogue), so instead a derived column holds the id where it is unknown
    # and null where it is known; expecting it to be null quotes the unknown ids as the unexpected values.
    for key, other, other_name in (("item_id", items, "items"), ("query_id", queries, "queries")):
        if key in df.columns and other is not None and key in other.columns:
            column = f"{key}_not_in_{other_name}"
            df[column] = df[key].where(~df[key].isin(other[key]))
            expectations.append(E.ExpectColumnValuesToBeNull(
                column=column, notes=f"every {table} {key} must appear in {other_name}; this column holds the "
                                     f"{key}s that do not"))
    return expectations


def grade_distribution(observed: pd.Series, reference: pd.Series) -> pd.DataFrame:
    """One row per grade: both proportions and half their absolute difference.

    The total-variation distance TV(P, Q) = 1/2 * sum_g |P(g) - Q(g)| is the largest difference in probability
    the two distributions give to any set of grades (0: identical, 1: disjoint). The ``tv_contribution`` column
    sums to exactly TV, so "TV <= max_grade_drift" is one GX ``ExpectColumnSumToBeBetween`` and the per-grade
    rows say which grades moved.
    """
    observed = pd.to_numeric(observed, errors="coerce").dropna()
    reference = pd.to_numeric(reference, errors="coerce").dropna()
    grades = sorted(set(observed.unique()) | set(reference.unique()))
    p = observed.value_counts(normalize=True).reindex(grades, fill_value=0.0)
    q = reference.value_counts(normalize=True).reindex(grades, fill_value=0.0)
    return pd.DataFrame({
        "grade": np.asarray(grades, dtype="float64"),
        "observed_proportion": p.to_numpy(dtype="float64"),
        "reference_proportion": q.to_numpy(dtype="float64"),
        TV_CONTRIBUTION: (p - q).abs().to_numpy(dtype="float64") / 2,
    })


def grade_drift_check(judgments: pd.DataFrame, reference: dict | None, config: "ValidationConfig"):
    """The grade-drift suite, or None when one side has no grades to compare (missing grade or split column,
    or no held-out rows: the judgments suite reports those, and a drift of an empty distribution would only
    repeat them as noise)."""
    E = import_gx().expectations
    if "grade" not in judgments.columns:
        return None
    if reference is not None:
        observed, against = judgments["grade"], reference["judgments"].get("grade", pd.Series(dtype="float64"))
        what = "all judgments vs the reference dataset's judgments"
    else:
        if "split" not in judgments.columns:
            return None
        # Without a reference the held-out splits must look like the split the model learns from.
        held_out = judgments["split"] != "train"
        observed, against = judgments.loc[held_out, "grade"], judgments.loc[~held_out, "grade"]
        what = "valid+test judgments vs train judgments"
    if pd.to_numeric(observed, errors="coerce").notna().sum() == 0 or \
            pd.to_numeric(against, errors="coerce").notna().sum() == 0:
        return None
    df = grade_distribution(observed, against)
    expectations = [E.ExpectColumnSumToBeBetween(
        column=TV_CONTRIBUTION, min_value=0.0, max_value=float(config.max_grade_drift),
        notes=f"grade drift ({what}): the sum of this column is the total-variation distance between the two "
              f"grade distributions, allowed up to max_grade_drift={config.max_grade_drift}")]
    return "grade_drift", df, expectations


def labels_check(labels: pd.DataFrame, num_grades: int, tolerance: float):
    E = import_gx().expectations
    df = labels.copy()
    probabilities = prob_columns(num_grades)
    required = ["query_id", "item_id", *probabilities, "teacher_version"]
    # exact_match over required + every non-p_ column present: a missing column fails it, and so does an extra
    # p_k column (labels from a teacher with a different K), which exact_match=False would let through.
    allowed = required + [c for c in df.columns if c not in required and not str(c).startswith("p_")]
    allowed.append(PROBABILITY_SUM)  # the derived row-sum column added below
    expectations: list = [
        E.ExpectTableColumnsToMatchSet(column_set=allowed, exact_match=True,
                                       notes=f"K={num_grades}: columns {probabilities} and no other p_ columns"),
    ]
    expectations += _not_null(df, ["query_id", "item_id", "teacher_version", *probabilities])
    present = [c for c in probabilities if c in df.columns]
    for column in present:
        expectations.append(E.ExpectColumnValuesToBeBetween(column=column, min_value=0.0, max_value=1.0))
    if present:
        # ExpectMulticolumnSumToEqual compares the float sum with == (no tolerance), so float32 softmax rows
        # would fail it; a derived row-sum column checked with a tolerance band is the usable equivalent.
        df[PROBABILITY_SUM] = df[present].astype("float64").sum(axis=1, skipna=False)
        expectations.append(E.ExpectColumnValuesToBeBetween(
            column=PROBABILITY_SUM, min_value=1.0 - tolerance, max_value=1.0 + tolerance,
            notes=f"each row's p_0..p_{num_grades - 1} must sum to 1 within probability_tolerance={tolerance}"))
    if {"query_id", "item_id"} <= set(df.columns):
        expectations.append(E.ExpectCompoundColumnsToBeUnique(column_list=["query_id", "item_id"]))
    return "teacher_labels", df, expectations


def _not_null(df: pd.DataFrame, columns: list[str]) -> list:
    E = import_gx().expectations
    return [E.ExpectColumnValuesToNotBeNull(column=c) for c in columns if c in df.columns]

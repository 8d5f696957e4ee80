"""The Great Expectations data-quality gate that runs before training.

Why a second set of checks next to ``relevance.data.schema``: the contract checks there raise on the *first*
problem, which is right for a step that is about to consume the tables, but wrong for the pipeline's gate,
where an operator wants to see *every* problem of a bad delivery at once, with evidence. Here each table gets
one GX ExpectationSuite, every expectation is evaluated, and the results go

* into a :class:`ValidationReport` (one line per failed expectation, naming the expectation and the column,
  what was expected and what was got), which raises :class:`DataValidationError` to stop the pipeline, and
* into GX Data Docs (HTML) under ``docs_dir`` when one is given, kept as the pipeline step's artifact, also
  (especially) on failure.

Drift is checked with ordinary GX expectations on numbers computed from a reference: the mean item-text and
query lengths with ``ExpectColumnMeanToBeBetween`` (bounds from the reference's means), and the grade
distribution with ``ExpectColumnSumToBeBetween`` over a small per-grade table whose column sums to the
total-variation distance (see :func:`_grade_distribution`), so that every drift failure also shows in Data Docs.

``great_expectations`` takes seconds to import, so it is imported inside the functions that need it: the core
library must import fast, and only the validation step pays for GX. Nothing here imports an orchestration or
serving framework.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from relevance.data.schema import SPLITS, TEXT_FIELDS, DataContractError, DatasetInfo, prob_columns

if TYPE_CHECKING:
    from relevance.config import ValidationConfig

__all__ = ["DataValidationError", "ValidationReport", "validate_dataset", "validate_label_expectations"]

# The one Data Docs site this module writes (its base directory is the caller's docs_dir).
DOCS_SITE = "relevance_gate"
# Pandas dtype names that count as "integer typed" for the grade column (nullable Int* included: a null grade
# is reported by the not-null expectation, not twice).
INTEGER_DTYPES = [f"{prefix}int{bits}" for prefix in ("", "u") for bits in (8, 16, 32, 64)] + \
                 [f"{prefix}Int{bits}" for prefix in ("", "U") for bits in (8, 16, 32, 64)]
# Derived columns added to a copy of a table before it is validated (never written back).
TEXT_WORDS = "text_words"
QUERY_WORDS = "query_words"
PROBABILITY_SUM = "p_sum"
TV_CONTRIBUTION = "tv_contribution"
# How many unexpected values a failure line quotes (Data Docs shows up to 20).
EXAMPLES = 3


class DataValidationError(DataContractError):
    """The data-quality gate failed. ``.report`` holds the full :class:`ValidationReport`."""

    def __init__(self, report: "ValidationReport") -> None:
        super().__init__(report.summary())
        self.report = report


@dataclass
class ValidationReport:
    """The outcome of one gate run: what failed (one line per failed expectation), how much was checked."""

    success: bool
    failures: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)  # suite name -> number of expectations evaluated
    data_docs: Path | None = None  # the Data Docs index.html, when docs_dir was given

    def summary(self) -> str:
        total = sum(self.checked.values())
        suites = ", ".join(f"{name} {n}" for name, n in self.checked.items()) or "none"
        if self.success:
            lines = [f"Data validation passed: {total} expectation(s) in {len(self.checked)} suite(s) ({suites})."]
        else:
            lines = [f"Data validation FAILED: {len(self.failures)} failure(s) among {total} expectation(s) in "
                     f"{len(self.checked)} suite(s) ({suites}):"]
            lines += [f"  - {line}" for line in self.failures]
        if self.data_docs is not None:
            lines.append(f"Data Docs: {self.data_docs}")
        return "\n".join(lines)

    def raise_for_failures(self) -> None:
        if not self.success:
            raise DataValidationError(self)

    def to_dict(self) -> dict:
        return {
            "success": bool(self.success),
            "failures": list(self.failures),
            "num_failures": len(self.failures),
            "checked": {name: int(n) for name, n in self.checked.items()},
            "num_expectations": int(sum(self.checked.values())),
            "data_docs": str(self.data_docs) if self.data_docs is not None else None,
        }


# ----------------------------------------------------------------------------------------------- public API


def validate_dataset(dataset_dir: str | Path, config: "ValidationConfig",
                     docs_dir: str | Path | None = None) -> ValidationReport:
    """Run every suite over a prepared dataset directory; never raises for bad data (see ``raise_for_failures``).

    The tables are read with ``pd.read_parquet`` directly, not ``Dataset.load``: the latter stops at the first
    contract violation, and the gate must see (and report) all of them.
    """
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise DataContractError(f"{dataset_dir}: expected a prepared dataset directory, got no such directory")
    num_grades = DatasetInfo.load(dataset_dir).num_grades
    tables, missing = _read_tables(dataset_dir)
    reference = _load_reference(config.reference) if config.reference else None

    checks: list[tuple[str, pd.DataFrame, list]] = []
    items, queries = tables.get("items"), tables.get("queries")
    if items is not None:
        checks.append(_items_check(items, reference, config))
    if queries is not None:
        checks.append(_queries_check(queries, reference, config))
    if tables.get("judgments") is not None:
        checks.append(_judgments_check(tables["judgments"], num_grades, items, queries))
        drift = _grade_drift_check(tables["judgments"], reference, config)
        if drift is not None:
            checks.append(drift)
    if tables.get("impressions") is not None:
        checks.append(_impressions_check(tables["impressions"], items, queries))
    report = _run(checks, docs_dir)
    # A missing table is a failure of the delivery itself; there is nothing for GX to look at.
    for name in missing:
        report.failures.insert(0, f"{name}: table {name}.parquet is missing from {dataset_dir}; expected a "
                                  f"prepared dataset with items, queries and judgments")
        report.success = False
    return report


def validate_label_expectations(labels: pd.DataFrame, num_grades: int, config: "ValidationConfig",
                                docs_dir: str | Path | None = None) -> ValidationReport:
    """Run the teacher-labels suite: schema, ids, each p_k in [0, 1], rows summing to 1, unique pairs."""
    return _run([_labels_check(labels, num_grades, config.probability_tolerance)], docs_dir)


def validate_label_chunks(chunks, num_grades: int, config: "ValidationConfig",
                          docs_dir: str | Path | None = None) -> ValidationReport:
    """The teacher-labels suite on a labelling of any size: every shard is read once, one at a time, and checked
    in full against the data contract (relevance.labels.labelling.label_chunks' loaders); the Great Expectations suite
    runs on an equal share of ``config.label_sample_rows`` rows from each shard. Pairs are unique across shards by
    construction (the pool is de-duplicated and the shards' coverage of it is checked from their metadata)."""
    import math

    per_chunk = max(1, math.ceil(config.label_sample_rows / max(len(chunks), 1)))
    sample = pd.concat([load().sample(frac=1.0, random_state=index).head(per_chunk)
                        for index, (_, load) in enumerate(chunks)], ignore_index=True)
    return validate_label_expectations(sample, num_grades, config, docs_dir)


# ----------------------------------------------------------------------------------------- reading the data


def _read_tables(directory: Path) -> tuple[dict[str, pd.DataFrame | None], list[str]]:
    tables: dict[str, pd.DataFrame | None] = {}
    missing = []
    for name in ("items", "queries", "judgments", "impressions"):
        path = directory / f"{name}.parquet"
        if path.exists():
            tables[name] = pd.read_parquet(path)
        else:
            tables[name] = None
            if name != "impressions":  # the unlabelled pool is optional
                missing.append(name)
    return tables, missing


def _load_reference(reference: str | Path) -> dict[str, pd.DataFrame]:
    """The reference dataset's tables (a misconfigured reference is a config error, so it raises)."""
    directory = Path(reference)
    tables = {}
    for name in ("items", "queries", "judgments"):
        path = directory / f"{name}.parquet"
        if not path.exists():
            raise DataContractError(f"validation.reference {directory}: expected a prepared dataset directory "
                                    f"with {name}.parquet, got none")
        tables[name] = pd.read_parquet(path)
    return tables


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
# Each *_check returns (suite name, the DataFrame to validate, expectations). Expectations on a column are only
# added when the column exists: a missing column is reported once, by the schema expectation, instead of once
# per expectation that could not run.


def _length_drift(df: pd.DataFrame, column: str, words: pd.Series, reference_words: pd.Series,
                  config: "ValidationConfig", what: str):
    """Mean length in words (a helper column added to ``df``) within max_length_drift of the reference's."""
    df[column] = words
    reference_mean = float(reference_words.mean())
    return _gx().expectations.ExpectColumnMeanToBeBetween(
        column=column, **_length_bounds(reference_mean, config.max_length_drift),
        notes=f"length drift: mean words {what} may change by at most {config.max_length_drift:.0%} of the "
              f"reference's {reference_mean:.2f}")


def _items_check(items: pd.DataFrame, reference: dict | None, config: "ValidationConfig"):
    gx = _gx()
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


def _queries_check(queries: pd.DataFrame, reference: dict | None, config: "ValidationConfig"):
    gx = _gx()
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


def _judgments_check(judgments: pd.DataFrame, num_grades: int, items: pd.DataFrame | None,
                     queries: pd.DataFrame | None):
    gx = _gx()
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


def _impressions_check(impressions: pd.DataFrame, items: pd.DataFrame | None, queries: pd.DataFrame | None):
    gx = _gx()
    E = gx.expectations
    df = impressions.copy()
    expectations: list = [E.ExpectTableColumnsToMatchSet(column_set=["query_id", "item_id"], exact_match=False)]
    expectations += _not_null(df, ["query_id", "item_id"])
    expectations += _pair_checks(df, "impressions", items, queries)
    return "impressions", df, expectations


def _pair_checks(df: pd.DataFrame, table: str, items: pd.DataFrame | None, queries: pd.DataFrame | None) -> list:
    """(query_id, item_id) unique, and both ids known, for judgments and impressions."""
    E = _gx().expectations
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


def _grade_distribution(observed: pd.Series, reference: pd.Series) -> pd.DataFrame:
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


def _grade_drift_check(judgments: pd.DataFrame, reference: dict | None, config: "ValidationConfig"):
    """The grade-drift suite, or None when one side has no grades to compare (missing grade or split column,
    or no held-out rows: the judgments suite reports those, and a drift of an empty distribution would only
    repeat them as noise)."""
    E = _gx().expectations
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
    df = _grade_distribution(observed, against)
    expectations = [E.ExpectColumnSumToBeBetween(
        column=TV_CONTRIBUTION, min_value=0.0, max_value=float(config.max_grade_drift),
        notes=f"grade drift ({what}): the sum of this column is the total-variation distance between the two "
              f"grade distributions, allowed up to max_grade_drift={config.max_grade_drift}")]
    return "grade_drift", df, expectations


def _labels_check(labels: pd.DataFrame, num_grades: int, tolerance: float):
    E = _gx().expectations
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
    E = _gx().expectations
    return [E.ExpectColumnValuesToNotBeNull(column=c) for c in columns if c in df.columns]


# ------------------------------------------------------------------------------------------- running GX


def _gx():
    """great_expectations, imported on first use (it takes seconds; the core library must import fast)."""
    # Before the import: GX reads it at import time, and a pipeline pod must not phone home.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx

    return gx


def _context(docs_dir: Path | None):
    """An ephemeral (in-memory) context whose only Data Docs site, if any, is a local one at docs_dir."""
    gx = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # The ephemeral context comes with a default site in a temp directory; building it too would be wasted time.
    for name in list(context.list_data_docs_sites()):
        context.delete_data_docs_site(name)
    if docs_dir is not None:
        context.add_data_docs_site(site_name=DOCS_SITE, site_config={
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })
    # tqdm bars per metric batch would flood the pipeline logs.
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return context


def _run(checks: list[tuple[str, pd.DataFrame, list]], docs_dir: str | Path | None) -> ValidationReport:
    """One suite + validation definition + checkpoint per table; Data Docs updated by the checkpoints."""
    gx = _gx()
    docs_path = Path(docs_dir) if docs_dir is not None else None
    if docs_path is not None:
        docs_path.mkdir(parents=True, exist_ok=True)
    context = _context(docs_path)
    source = context.data_sources.add_pandas("relevance")
    actions = [gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE])] if docs_path else []

    report = ValidationReport(success=True, data_docs=docs_path / "index.html" if docs_path else None)
    # One run id for all tables, so Data Docs groups this gate's validations under one run name and time.
    from great_expectations.core.run_identifier import RunIdentifier

    run_id = RunIdentifier(run_name="relevance_gate", run_time=datetime.now(timezone.utc))
    for name, df, expectations in checks:
        suite = context.suites.add(gx.ExpectationSuite(name=name))
        for expectation in expectations:
            suite.add_expectation(expectation)
        batch = source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe(name)
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        # A checkpoint per table because a dataframe batch is passed at run time and a checkpoint takes one set
        # of batch parameters for all its validation definitions.
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=f"{name}_gate", validation_definitions=[definition], actions=actions,
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": 20}))
        result = checkpoint.run(batch_parameters={"dataframe": df}, run_id=run_id)
        report.checked[name] = len(expectations)
        for run_result in result.run_results.values():
            # GX returns results in metric-resolution order; report them in the suite's order instead.
            order = {id(e): i for i, e in enumerate(suite.expectations)}
            failed = [r for r in run_result.results if not r.success]
            failed.sort(key=lambda r: order.get(id(_match(suite, r)), len(order)))
            for expectation_result in failed:
                report.failures.append(_describe(name, expectation_result))
        report.success = report.success and bool(result.success)
    return report


def _match(suite, result):
    """The suite's expectation a result belongs to (by its configuration's id)."""
    config_id = getattr(result.expectation_config, "id", None)
    return next((e for e in suite.expectations if e.id is not None and e.id == config_id), None)


# ------------------------------------------------------------------------------------------ failure lines

_EXPECTED_KEYS = ("min_value", "max_value", "value_set", "column_set", "exact_match", "type_list", "regex",
                  "sum_total")


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value) if not isinstance(value, float) else f"{value:.6g}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _plain(value: Any) -> Any:
    """numpy scalars as Python ones, so lines read 0.43 and not np.float64(0.43)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _describe(suite: str, result) -> str:
    """'judgments: expect_column_values_to_be_between on column 'grade' failed: 3 of 1200 values unexpected
    (e.g. 7, 9, -1); expected min_value=0, max_value=4'."""
    config = result.expectation_config
    kwargs = dict(config.kwargs)
    where = ""
    if "column" in kwargs:
        where = f" on column {kwargs['column']!r}"
    elif "column_list" in kwargs:
        where = f" on columns {list(kwargs['column_list'])}"
    head = f"{suite}: {config.type}{where}"
    exception = result.exception_info or {}
    messages = [v.get("exception_message") for v in exception.values() if isinstance(v, dict)] \
        if "raised_exception" not in exception else [exception.get("exception_message")]
    messages = [m for m in messages if m]
    if messages:
        return f"{head} could not run: {messages[0]}"

    details = _plain(dict(result.result or {}))
    if "unexpected_count" in details and details.get("element_count") is not None:
        # Duplicated keys come back once per row; quote each distinct value once.
        distinct = list(dict.fromkeys(_short(v, 60) for v in details.get("partial_unexpected_list") or []))
        examples = ", ".join(distinct[:EXAMPLES])
        unit = "rows" if "column_list" in kwargs else "values"
        got = (f"{details['unexpected_count']} of {details['element_count']} {unit} unexpected"
               + (f" (e.g. {examples})" if examples else ""))
    elif config.type == "expect_table_columns_to_match_set":
        mismatched = (details.get("details") or {}).get("mismatched") or {}
        # Without exact_match, extra columns are allowed, so only the missing ones are news.
        kinds = ("missing", "unexpected") if kwargs.get("exact_match") else ("missing",)
        parts = [f"{kind} {sorted(map(str, mismatched[kind]))}" for kind in kinds if mismatched.get(kind)]
        got = "; ".join(parts) if parts else f"observed columns {_short(details.get('observed_value'), 200)}"
    elif "observed_value" in details:
        got = f"observed {_short(details['observed_value'])}"
    else:
        got = "no observed value"
    expected = ", ".join(f"{k}={_short(_plain(kwargs[k]))}" for k in _EXPECTED_KEYS
                         if k in kwargs and kwargs[k] is not None)
    line = f"{head} failed: {got}" + (f"; expected {expected}" if expected else "")
    notes = getattr(config, "notes", None)
    if notes:
        line += f" ({_notes_text(notes)})"
    return line


def _notes_text(notes: Any) -> str:
    if isinstance(notes, dict):  # GX renders notes as {"format": ..., "content": [...]} in some versions
        notes = notes.get("content", "")
    if isinstance(notes, (list, tuple)):
        notes = " ".join(map(str, notes))
    return re.sub(r"\s+", " ", str(notes)).strip()

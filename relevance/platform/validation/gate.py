"""The gate's entry points: a prepared dataset's tables (items, queries, judgments, impressions, grade drift) or a
teacher labelling, read in full and run through every suite that applies. Bad data never raises here: the caller
gets the whole :class:`ValidationReport` and decides (``raise_for_failures``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from relevance.data.schema import DataContractError, DatasetInfo
from relevance.platform.validation.checkpoints import run_checks
from relevance.platform.validation.report import ValidationReport
from relevance.platform.validation.suites import (
    grade_drift_check,
    impressions_check,
    items_check,
    judgments_check,
    labels_check,
    queries_check,
)

if TYPE_CHECKING:
    from relevance.config import ValidationConfig


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
        checks.append(items_check(items, reference, config))
    if queries is not None:
        checks.append(queries_check(queries, reference, config))
    if tables.get("judgments") is not None:
        checks.append(judgments_check(tables["judgments"], num_grades, items, queries))
        drift = grade_drift_check(tables["judgments"], reference, config)
        if drift is not None:
            checks.append(drift)
    if tables.get("impressions") is not None:
        checks.append(impressions_check(tables["impressions"], items, queries))
    report = run_checks(checks, docs_dir)
    # A missing table is a failure of the delivery itself; there is nothing for GX to look at.
    for name in missing:
        report.failures.insert(0, f"{name}: table {name}.parquet is missing from {dataset_dir}; expected a "
                                  f"prepared dataset with items, queries and judgments")
        report.success = False
    return report


def validate_label_expectations(labels: pd.DataFrame, num_grades: int, config: "ValidationConfig",
                                docs_dir: str | Path | None = None) -> ValidationReport:
    """Run the teacher-labels suite: schema, ids, each p_k in [0, 1], rows summing to 1, unique pairs."""
    return run_checks([labels_check(labels, num_grades, config.probability_tolerance)], docs_dir)


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

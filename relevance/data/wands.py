"""Wayfair ANnotation DataSet (WANDS).

Chen et al. 2022, "WANDS: Dataset for Product Search Relevance Assessment" (ECIR 2022). 480 queries,
~43k products and ~233k (query, product) labels Exact / Partial / Irrelevant, which become grades
Irrelevant 0 < Partial 1 < Exact 2 (K=3).

Reads the official tab-separated ``query.csv``, ``product.csv`` and ``label.csv`` from one directory. WANDS
has no official split, so the split is a hash of the query text like every other source here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from relevance.data.generic import map_labels, read_table, require_columns, require_file
from relevance.data.schema import DEFAULT_LOCALE, Dataset, DataContractError, DatasetInfo
from relevance.data.splits import assign_splits

log = logging.getLogger(__name__)

LABEL_GRADES = {"Irrelevant": 0, "Partial": 1, "Exact": 2}
GRADE_NAMES = ["irrelevant", "partial", "exact"]
QUERY_COLUMNS = ["query_id", "query"]
PRODUCT_COLUMNS = ["product_id", "product_name", "product_description"]
LABEL_COLUMNS = ["query_id", "product_id", "label"]
NUMERIC_COLUMNS = ["rating_count", "average_rating", "review_count"]
# Extra text kept as plain string columns: useful features, but not among the contract's TEXT_FIELDS.
EXTRA_TEXT_COLUMNS = {"product_class": "product_class", "category hierarchy": "category_hierarchy",
                      "category_hierarchy": "category_hierarchy",
                      "product_features": "product_features"}


def info() -> DatasetInfo:
    return DatasetInfo(
        name="wands",
        num_grades=len(LABEL_GRADES),
        grade_names=list(GRADE_NAMES),
        description="Wayfair ANnotation DataSet (WANDS), Chen et al. 2022.",
    )


def _read_tsv(path: Path, columns: list[str]) -> pd.DataFrame:
    require_file(path, "WANDS tab-separated table")
    df = read_table(path, sep="\t")
    require_columns(df, path, columns)
    return df


def load(path: str | Path, valid_fraction: float = 0.1, test_fraction: float = 0.2, salt: str = "") -> Dataset:
    """Load WANDS from its directory; splits by a hash of the query text."""
    directory = Path(path)
    if not directory.is_dir():
        raise DataContractError(f"{directory}: not a directory; expected the WANDS folder with query.csv, "
                                f"product.csv and label.csv")
    query_path, product_path, label_path = (directory / f for f in ("query.csv", "product.csv", "label.csv"))
    raw_queries = _read_tsv(query_path, QUERY_COLUMNS)
    products = _read_tsv(product_path, PRODUCT_COLUMNS)
    labels = _read_tsv(label_path, LABEL_COLUMNS)

    queries = pd.DataFrame({
        "query_id": raw_queries["query_id"].astype(str),
        "query": raw_queries["query"].fillna("").astype(str),
        "locale": DEFAULT_LOCALE,
    })
    if "query_class" in raw_queries.columns:
        queries["query_class"] = raw_queries["query_class"].fillna("").astype(str)

    items = pd.DataFrame({
        "item_id": products["product_id"].astype(str),
        "locale": DEFAULT_LOCALE,
        "title": products["product_name"].fillna("").astype(str),
        "description": products["product_description"].fillna("").astype(str),
    })
    for source, column in EXTRA_TEXT_COLUMNS.items():
        if source in products.columns:
            items[column] = products[source].fillna("").astype(str)
    for column in NUMERIC_COLUMNS:
        if column in products.columns:
            # Unrated products have empty counts: no ratings, so 0 is the honest value, not a missing one.
            items[column] = pd.to_numeric(products[column], errors="coerce").fillna(0.0).astype(float)

    judgments = pd.DataFrame({
        "query_id": labels["query_id"].astype(str),
        "item_id": labels["product_id"].astype(str),
        "grade": map_labels(labels["label"].astype(str).str.strip(), LABEL_GRADES, label_path, "label"),
    })
    repeated = judgments.duplicated(subset=["query_id", "item_id"])
    if repeated.any():
        log.warning("%s: dropping %d repeated (query_id, product_id) label(s)", label_path, int(repeated.sum()))
        judgments = judgments[~repeated].reset_index(drop=True)
    text = judgments["query_id"].map(queries.drop_duplicates("query_id").set_index("query_id")["query"])
    if text.isna().any():
        raise DataContractError(f"{label_path}: {int(text.isna().sum())} label(s) reference query_id(s) not in "
                                f"{query_path}, e.g. {judgments.loc[text.isna(), 'query_id'].head(3).tolist()}")
    judgments["split"] = assign_splits(text, valid_fraction, test_fraction, salt)
    return Dataset(info(), items, queries, judgments).validated()

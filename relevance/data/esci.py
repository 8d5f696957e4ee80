"""Amazon Shopping Queries (ESCI) dataset.

Reddy et al. 2022, "Shopping Queries Dataset: A Large-Scale ESCI Benchmark for Improving Product Search"
(arXiv:2206.06588). Each (query, product) pair is labelled Exact, Substitute, Complement or Irrelevant, in
three locales (us, es, jp). Grades follow relevance order, I 0 < C 1 < S 2 < E 3, and nDCG uses the official
gains [0, 0.01, 0.1, 1] rather than 2^g - 1, so that only E really counts.

Reads ``shopping_queries_dataset_examples.parquet`` and ``shopping_queries_dataset_products.parquet`` from
one directory. A product_id (ASIN) repeats across locales with different text, so the item id is
``"{product_locale}/{product_id}"``. The official test split stays the test split; valid is carved out of the
official train by a salted hash of the query, so a query never straddles train and valid.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from relevance.data.generic import map_labels, read_table, require_columns, require_file
from relevance.data.schema import Dataset, DataContractError, DatasetInfo
from relevance.data.splits import assign_splits

log = logging.getLogger(__name__)

EXAMPLES_FILE = "shopping_queries_dataset_examples.parquet"
PRODUCTS_FILE = "shopping_queries_dataset_products.parquet"
LABEL_GRADES = {"I": 0, "C": 1, "S": 2, "E": 3}
GRADE_NAMES = ["irrelevant", "complement", "substitute", "exact"]
NDCG_GAINS = [0.0, 0.01, 0.1, 1.0]
EXAMPLE_COLUMNS = ["query_id", "query", "product_id", "product_locale", "esci_label", "split"]
PRODUCT_COLUMNS = ["product_id", "product_locale", "product_title"]
# The valid split is a different draw from the query hash than any other split, hence its own salt.
VALID_SALT = "esci-valid:"


def info(small_version: bool = True) -> DatasetInfo:
    return DatasetInfo(
        name="esci" if small_version else "esci-large",
        num_grades=len(LABEL_GRADES),
        grade_names=list(GRADE_NAMES),
        ndcg_gains=list(NDCG_GAINS),
        description="Amazon Shopping Queries (ESCI), Reddy et al. 2022; "
                    + ("small (reduced) version" if small_version else "large version"),
    )


def item_ids(locale: pd.Series, product_id: pd.Series) -> pd.Series:
    """``"{locale}/{product_id}"``: an ASIN alone is not unique across locales."""
    return locale.astype(str) + "/" + product_id.astype(str)


def _text(df: pd.DataFrame, column: str) -> pd.Series:
    if column not in df.columns:
        return pd.Series("", index=df.index)
    return df[column].fillna("").astype(str)


def load(path: str | Path, small_version: bool = True, valid_fraction: float = 0.1,
         salt: str = VALID_SALT) -> Dataset:
    """Load ESCI from its directory. ``small_version`` keeps the reduced task-1 subset (small_version == 1)."""
    directory = Path(path)
    if not directory.is_dir():
        raise DataContractError(f"{directory}: not a directory; expected the ESCI folder with {EXAMPLES_FILE}")
    examples_path = require_file(directory / EXAMPLES_FILE, "ESCI examples")
    products_path = require_file(directory / PRODUCTS_FILE, "ESCI products")

    examples = read_table(examples_path)
    require_columns(examples, examples_path, EXAMPLE_COLUMNS + (["small_version"] if small_version else []))
    if small_version:
        examples = examples[pd.to_numeric(examples["small_version"], errors="coerce") == 1]
    if examples.empty:
        raise DataContractError(f"{examples_path}: no examples left (small_version={small_version})")
    unknown_splits = sorted(set(examples["split"].astype(str).unique()) - {"train", "test"})
    if unknown_splits:
        raise DataContractError(f"{examples_path}: column 'split' must be 'train' or 'test', got {unknown_splits}")

    grades = map_labels(examples["esci_label"].astype(str).str.strip(), LABEL_GRADES, examples_path, "esci_label")
    judgments = pd.DataFrame({
        "query_id": examples["query_id"].astype(str),
        "item_id": item_ids(examples["product_locale"], examples["product_id"]),
        "grade": grades,
        "split": examples["split"].astype(str),
        "query": examples["query"].astype(str),
    })
    # Valid comes out of the official train only; the official test stays untouched.
    train = judgments["split"] == "train"
    judgments.loc[train, "split"] = assign_splits(judgments.loc[train, "query"], valid_fraction, 0.0, salt)
    repeated = judgments.duplicated(subset=["query_id", "item_id"])
    if repeated.any():
        log.warning("%s: dropping %d repeated (query_id, item_id) example(s)", examples_path, int(repeated.sum()))
        judgments = judgments[~repeated]
    judgments = judgments.drop(columns="query").reset_index(drop=True)

    queries = pd.DataFrame({
        "query_id": examples["query_id"].astype(str),
        "query": examples["query"].astype(str),
        "locale": examples["product_locale"].astype(str),
    }).drop_duplicates()
    clash = queries.duplicated(subset=["query_id"], keep=False)
    if clash.any():
        raise DataContractError(f"{examples_path}: a query_id carries more than one query text/locale, e.g. "
                                f"{queries.loc[clash].head(4).to_dict('records')}")

    products = read_table(products_path)
    require_columns(products, products_path, PRODUCT_COLUMNS)
    products = products.assign(item_id=item_ids(products["product_locale"], products["product_id"]))
    # The products file covers the large version; keep only what the judgments reference.
    products = products[products["item_id"].isin(judgments["item_id"])].drop_duplicates(subset=["item_id"])
    bullets = _text(products, "product_bullet_point")
    description = _text(products, "product_description")
    items = pd.DataFrame({
        "item_id": products["item_id"],
        "locale": products["product_locale"].astype(str),
        "title": _text(products, "product_title"),
        # Bullet points carry much of the product text when the description is empty.
        "description": (description + "\n" + bullets).str.strip(),
        "brand": _text(products, "product_brand"),
        "color": _text(products, "product_color"),
    }).reset_index(drop=True)
    return Dataset(info(small_version), items, queries.reset_index(drop=True), judgments).validated()
